"""One value of a kerchunk reference set into a :class:`Reference`, and URL templates.

Shared by the explicit ``refs`` (:mod:`.parse`) and the generated ones
(:mod:`.gen`), so both refuse the same values with the same words.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from refmount.errors import InvalidReferences
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.relative import resolve_relative
from refmount.refs.targets import control_character_problem

__all__ = [
    "IDENTIFIER",
    "MAX_OFFSET",
    "check_range",
    "describe_value",
    "parse_templates",
    "resolve_url",
    "type_name",
    "value_reference",
]

#: Offsets and range ends must be below this: the largest ``off_t`` + 1.
MAX_OFFSET = 2**63

_BASE64_PREFIX = "base64:"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# ``{{ name }}`` (spec) or ``{name}`` (kerchunk compact form).
_URL_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def value_reference(
    key: str,
    value: Any,
    default_url: str | None,
    templates: Mapping[str, str],
    url_cache: dict[Any, str],
    base: str | None = None,
) -> Reference:
    """Turn one value of the set into a Reference, refusing anything else."""
    kind = type(value)
    if kind is list or kind is tuple:
        return _reference(key, value, default_url, templates, url_cache, base)
    if kind is str:
        if value.startswith(_BASE64_PREFIX):
            return Inline(_base64(key, value[len(_BASE64_PREFIX) :]))
        try:
            return Inline(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidReferences("inline text is not valid Unicode (lone surrogate)", key=key) from None
    if kind is dict:
        return Inline(_json_text(key, value))
    if kind is bytes or kind is bytearray:
        # Only from Python callers (fsspec accepts bytes values in dicts).
        data = bytes(value)
        if data.startswith(b"base64:"):
            return Inline(_base64(key, data[7:]))
        return Inline(data)
    raise InvalidReferences(
        f"value must be inline text, a JSON object, or a reference list "
        f"[url] / [url, offset, length], not {type_name(value)}",
        key=key,
    )


def _reference(
    key: str,
    value: list[Any] | tuple[Any, ...],
    default_url: str | None,
    templates: Mapping[str, str],
    url_cache: dict[Any, str],
    base: str | None,
) -> Reference:
    """``[url]`` -> Whole, ``[url, offset, length]`` -> Range."""
    count = len(value)
    if count == 3:
        raw_url, offset, length = value
    elif count == 1:
        raw_url = value[0]
    else:
        raise InvalidReferences(
            f"a reference list must be [url] or [url, offset, length], got {count} items", key=key
        )
    url = url_cache.get(raw_url) if type(raw_url) is str else None
    if url is None:
        url = resolve_url(key, raw_url, default_url, templates, base)
        if type(raw_url) is str:
            url_cache[raw_url] = url
    if count == 1:
        return Whole(url)
    check_range(key, offset, length)
    return Range(url, offset, length)


def check_range(key: str, offset: Any, length: Any) -> None:
    """Offsets and lengths are non-negative integers within what off_t can address."""
    if type(offset) is not int:
        raise InvalidReferences(f"offset must be an integer, not {describe_value(offset)}", key=key)
    if type(length) is not int:
        raise InvalidReferences(f"length must be an integer, not {describe_value(length)}", key=key)
    if offset < 0:
        raise InvalidReferences(f"offset must not be negative, got {offset}", key=key)
    if length < 0:
        raise InvalidReferences(f"length must not be negative, got {length}", key=key)
    if offset >= MAX_OFFSET or offset + length > MAX_OFFSET:
        raise InvalidReferences(
            f"range {offset}+{length} ends beyond 2**63, the largest addressable offset", key=key
        )


def resolve_url(
    key: str, raw: Any, default_url: str | None, templates: Mapping[str, str], base: str | None = None
) -> str:
    """Apply templates and the default target to one URL, then check it.

    A relative URL (``data/x.bin``) is resolved against ``base``, the set's
    own directory (:mod:`refmount.refs.relative`); without one it stays relative.
    """
    if raw is None:
        url = ""
    elif type(raw) is str:
        url = _substitute_templates(raw, templates) if templates and "{" in raw else raw
    else:
        raise InvalidReferences(f"url must be a string or null, not {describe_value(raw)}", key=key)
    if url == "":
        if default_url is None:
            raise InvalidReferences(
                "reference has no url (null or empty) and the set has no default target url", key=key
            )
        return default_url
    problem = control_character_problem(url)
    if problem is not None:
        raise InvalidReferences(problem, key=key)
    return resolve_relative(url, base) if base is not None else url


def _substitute_templates(url: str, templates: Mapping[str, str]) -> str:
    """Replace ``{{name}}`` and ``{name}`` for known template names, in one pass."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return templates.get(name, match.group(0))

    return _URL_TEMPLATE.sub(replace, url)


def _base64(key: str, payload: str | bytes) -> bytes:
    """Strictly decode inline binary; lenient decoding would hide corruption."""
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidReferences(f"invalid base64 inline data: {exc}", key=key) from None


def _json_text(key: str, value: dict[Any, Any]) -> bytes:
    """Serialise an embedded JSON object (e.g. ``.zarray``) as JSON text.

    The text is exactly what fsspec's ReferenceFileSystem serves for the same
    key (compact, non-ASCII escaped), so a file read through the mount and
    through fsspec are byte-identical. The standard library also keeps NaN
    and Infinity, which Zarr metadata may carry.
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode("ascii")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidReferences(f"JSON object value cannot be serialised: {exc}", key=key) from None


def parse_templates(raw: Any) -> dict[str, str]:
    """Templates are a name -> string mapping; names must be usable in ``{{name}}``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidReferences(f"'templates' must be a JSON object, not {type_name(raw)}")
    for name, value in raw.items():
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            raise InvalidReferences(
                f"template name {name!r} is not an identifier (letters, digits, '_'; not starting with a digit)"
            )
        if not isinstance(value, str):
            raise InvalidReferences(f"template {name!r} must be a string, not {type_name(value)}")
    return dict(raw)



def describe_value(value: Any) -> str:
    """Type and, for scalars, a shortened value: containers may be huge or deeply nested."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "(a huge integer)"
        if len(text) > 60:
            text = text[:57] + "..."
        return f"{type_name(value)} {text}"
    return type_name(value)


def type_name(value: Any) -> str:
    """JSON vocabulary for the types a decoded document can hold."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
