"""Parse a kerchunk JSON document (v0 or v1) into key -> Reference, checking everything up front.

Decoding (orjson first, the standard library for what it refuses), version
dispatch, the explicit ``refs`` and the scanner's recorded source facts;
values are converted by :mod:`.values` and ``gen`` entries by :mod:`.gen`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from refmount.errors import InvalidReferences
from refmount.refs.kerchunk.gen import expand_gens
from refmount.refs.kerchunk.values import describe_value, parse_templates, type_name, value_reference
from refmount.refs.keys import SCALAR_CHUNK, scalar_chunk_array, validate_key
from refmount.refs.model import Inline, Reference

__all__ = [
    "decode_json",
    "parse_reference_bytes",
    "parse_reference_document",
    "parse_references",
    "recorded_sources",
]


#: How deeply JSON may nest before the standard library's decoder gives up (orjson's own limit is 1024).
_NESTING_LIMIT = sys.getrecursionlimit()

# --------------------------------------------------------------------------
# Entry points


def parse_reference_bytes(data: bytes, *, default_url: str | None = None) -> dict[str, Reference]:
    """Decode a kerchunk JSON document and parse it with :func:`parse_references`.

    A syntax error is reported with its line and column so the operator can
    find it in a file that may be hundreds of megabytes long.
    """
    with _gc_paused():
        return parse_references(decode_json(data), default_url=default_url)


def parse_reference_document(
    data: bytes, *, default_url: str | None = None, base_url: str | None = None
) -> tuple[dict[str, Reference], dict[str, Any]]:
    """Like :func:`parse_reference_bytes`, also returning the scanner's recorded source facts.

    ``base_url`` is the set's own directory, against which relative URLs resolve.
    """
    with _gc_paused():
        obj = decode_json(data)
        return parse_references(obj, default_url=default_url, base_url=base_url), recorded_sources(obj)


def recorded_sources(obj: Any) -> dict[str, Any]:
    """``{url: {"size", "etag", "mtime"}}`` that ``refmount scan`` records in a v1 set, or {}.

    Advisory only (used to detect objects that changed since the scan), so a
    missing or malformed ``refmount`` key is ignored rather than refused.
    """
    if not isinstance(obj, dict) or obj.get("version") != 1:
        return {}
    extra = obj.get("refmount")
    sources = extra.get("sources") if isinstance(extra, dict) else None
    if not isinstance(sources, dict):
        return {}
    return {url: facts for url, facts in sources.items() if isinstance(url, str) and isinstance(facts, dict)}


def parse_references(
    obj: Any, *, default_url: str | None = None, base_url: str | None = None
) -> dict[str, Reference]:
    """Validate and expand a decoded kerchunk JSON document (v0 or v1) into key -> Reference.

    ``default_url`` stands in for null or empty URLs (fsspec's ``target``);
    without it (or if it is empty) such references are refused. Relative
    URLs resolve against ``base_url`` (see :mod:`refmount.refs.relative`).
    """
    if not isinstance(obj, dict):
        raise InvalidReferences(
            f"a reference set must be a JSON object at the top level, not {type_name(obj)}"
        )
    if default_url is not None and not isinstance(default_url, str):
        raise InvalidReferences(f"default URL must be a string, not {type_name(default_url)}")
    with _gc_paused():
        return _parse_document(obj, default_url or None, base_url)


def _parse_document(obj: dict[Any, Any], default_url: str | None, base: str | None) -> dict[str, Reference]:
    """Dispatch on the spec version; the caller has checked the top-level type."""
    if "version" not in obj:
        return _parse_refs(obj, default_url, {}, base)
    version = obj["version"]
    if type(version) is not int or version != 1:
        raise InvalidReferences(
            f"unknown reference set version {describe_value(version)}: supported are 1, "
            "or no 'version' key for version 0"
        )
    templates = parse_templates(obj.get("templates"))
    refs = obj.get("refs")
    if refs is None:
        refs = {}
    elif not isinstance(refs, dict):
        raise InvalidReferences(f"'refs' must be a JSON object, not {type_name(refs)}")
    out = _parse_refs(refs, default_url, templates, base)
    expand_gens(obj.get("gen"), templates, default_url, out, base)
    return out


def decode_json(data: bytes) -> Any:
    """Decode JSON bytes, refusing malformed input with line and column.

    orjson is tried first for speed. On its failure the standard library gets
    a second chance: it accepts NaN/Infinity and integers beyond 64 bits,
    which json.dump writers produce, and reports errors in a stable format.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidReferences(f"reference data must be bytes, not {type_name(data)}")
    if isinstance(data, memoryview):
        data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return orjson.loads(data)  # several times faster than json on million-key sets
    except orjson.JSONDecodeError:
        pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidReferences(
            f"reference file is not valid UTF-8 at line {line} column {column} (byte {exc.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidReferences(
            f"reference file is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # the only other ValueError: an integer literal too long to convert
        raise InvalidReferences(
            f"reference file is not usable JSON: an integer literal is longer than {sys.get_int_max_str_digits()} "
            f"digits, the limit of integer conversion ({exc})"
        ) from None
    except RecursionError:
        raise InvalidReferences(
            f"reference file is not usable JSON: nested more deeply than {_NESTING_LIMIT} levels"
        ) from None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of objects.

    Allocation-triggered collections rescan every container created so far,
    which makes building a million-key set several times slower; nothing
    built here forms cycles, so pausing is safe. The previous state is
    restored even on error.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------
# refs: explicit key -> value


def _parse_refs(
    refs: Mapping[Any, Any], default_url: str | None, templates: Mapping[str, str], base: str | None
) -> dict[str, Reference]:
    """Convert each explicit entry; URLs are resolved once per distinct string."""
    out: dict[str, Reference] = {}
    url_cache: dict[Any, str] = {}
    scalar_chunks: dict[str, tuple[str, Any]] = {}
    for key, value in refs.items():
        array = scalar_chunk_array(key) if isinstance(key, str) else None
        if array is not None:
            scalar_chunks[array] = (key, value)  # decided once every .zarray is known
            continue
        validate_key(key)
        out[key] = value_reference(key, value, default_url, templates, url_cache, base)
    for array, (key, value) in scalar_chunks.items():
        if not _is_zero_dimensional(out.get(f"{array}/.zarray")):
            validate_key(key)  # refused as any other empty path segment
        chunk = f"{array}/{SCALAR_CHUNK}"
        if chunk in out:
            raise InvalidReferences(f"the chunk of 0-d array {array} is given twice, as {key!r} and {chunk!r}", key=key)
        out[chunk] = value_reference(chunk, value, default_url, templates, url_cache, base)
    return out


def _is_zero_dimensional(zarray: Reference | None) -> bool:
    """Whether ``zarray`` is the inline ``.zarray`` of a 0-d array (``"shape": []``)."""
    if not isinstance(zarray, Inline):
        return False
    try:
        meta = json.loads(zarray.data)
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("shape") == []

