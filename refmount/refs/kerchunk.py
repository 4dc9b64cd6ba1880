"""Parse kerchunk JSON reference sets (spec versions 0 and 1) into key -> Reference.

Pure: no I/O, no logging. Everything a reference set can say is checked here,
before anything is mounted, so a malformed set fails loudly at load time with
an :class:`InvalidReferences` naming the key and the problem instead of
producing a tree that misbehaves later.

Behaviour follows the kerchunk spec and fsspec's ``ReferenceFileSystem``:

* Version 0 is a flat ``{key: value}`` mapping; version 1 is
  ``{"version": 1, "templates": {...}, "gen": [...], "refs": {...}}``, and
  other top-level keys of a version 1 document are ignored.
* A value is inline text (``"base64:"`` prefixed for binary), a JSON object
  (serialised as compact JSON text, as Zarr metadata is), or a list:
  ``[url]`` for a whole object and ``[url, offset, length]`` for a byte
  range. Every list is a reference, as in fsspec. A null or empty url means
  the set's default target.
* Templates are substituted in URLs only, spelled ``{{name}}`` (the spec)
  or ``{name}`` (kerchunk's compact form). Only known template names are
  replaced, so URLs that merely contain braces survive unchanged.
* ``gen`` entries are expanded over the cartesian product of their
  dimensions. fsspec renders them with jinja2; here a small evaluator of
  our own supports what generators need and nothing that could run code:
  names, integer literals, ``+ - * // %``, unary minus, parentheses, and
  ``'%04d' % i`` style formatting.

Decisions where the spec is silent: zero-length ranges are allowed (an empty
file is legitimate); offsets and ``offset + length`` must stay below 2**63
(what ``off_t`` can address); a key defined twice (by ``refs`` and ``gen``,
or by two generated entries) is refused instead of silently overwritten.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import gc
import itertools
import json
import keyword
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from refmount.errors import InvalidReferences
from refmount.refs.keys import key_problem, validate_key
from refmount.refs.model import Inline, Range, Reference, Whole

try:  # orjson is several times faster on million-key sets; json is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None

__all__ = [
    "MAX_GENERATED_KEYS",
    "MAX_OFFSET",
    "parse_reference_bytes",
    "parse_reference_document",
    "parse_references",
    "recorded_sources",
]

#: Offsets and range ends must be below this: the largest ``off_t`` + 1.
MAX_OFFSET = 2**63

#: Most keys all ``gen`` entries of one set may produce together. Each key
#: costs a few hundred bytes in memory, so this bounds a set to a few GB.
MAX_GENERATED_KEYS = 10_000_000

#: Longest ``{{ expression }}`` accepted in a generator pattern.
MAX_EXPRESSION_CHARS = 256

_BASE64_PREFIX = "base64:"
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# ``{{ name }}`` (spec) or ``{name}`` (kerchunk compact form).
_URL_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SINGLE_BRACE = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INTEGER_TEXT = re.compile(r"\s*[-+]?[0-9]+\s*\Z")
# One printf conversion, bounded width, for ``'%04d' % i``.
_PRINTF = re.compile(r"(?:[^%]|%%)*%[-+ 0#]*[0-9]{0,2}([diouxXs])(?:[^%]|%%)*\Z", re.DOTALL)

_GEN_FIELDS = frozenset({"key", "url", "offset", "length", "dimensions"})
_RANGE_FIELDS = frozenset({"start", "stop", "step"})


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
    data: bytes, *, default_url: str | None = None
) -> tuple[dict[str, Reference], dict[str, Any]]:
    """Like :func:`parse_reference_bytes`, also returning the scanner's recorded source facts."""
    with _gc_paused():
        obj = decode_json(data)
        return parse_references(obj, default_url=default_url), recorded_sources(obj)


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


def parse_references(obj: Any, *, default_url: str | None = None) -> dict[str, Reference]:
    """Validate and expand a decoded kerchunk JSON document (v0 or v1) into key -> Reference.

    ``default_url`` stands in for null or empty URLs (fsspec's ``target``);
    without it (or if it is empty) such references are refused.
    """
    if not isinstance(obj, dict):
        raise InvalidReferences(
            f"a reference set must be a JSON object at the top level, not {_type_name(obj)}"
        )
    if default_url is not None and not isinstance(default_url, str):
        raise InvalidReferences(f"default URL must be a string, not {_type_name(default_url)}")
    with _gc_paused():
        return _parse_document(obj, default_url or None)


def _parse_document(obj: dict[Any, Any], default_url: str | None) -> dict[str, Reference]:
    """Dispatch on the spec version; the caller has checked the top-level type."""
    if "version" not in obj:
        return _parse_refs(obj, default_url, templates={})
    version = obj["version"]
    if type(version) is not int or version != 1:
        raise InvalidReferences(
            f"unknown reference set version {_describe_value(version)}: supported are 1, "
            "or no 'version' key for version 0"
        )
    templates = _parse_templates(obj.get("templates"))
    refs = obj.get("refs")
    if refs is None:
        refs = {}
    elif not isinstance(refs, dict):
        raise InvalidReferences(f"'refs' must be a JSON object, not {_type_name(refs)}")
    out = _parse_refs(refs, default_url, templates)
    _expand_gens(obj.get("gen"), templates, default_url, out)
    return out


def decode_json(data: bytes) -> Any:
    """Decode JSON bytes, refusing malformed input with line and column.

    orjson is tried first for speed. On its failure the standard library gets
    a second chance: it accepts NaN/Infinity and integers beyond 64 bits,
    which json.dump writers produce, and reports errors in a stable format.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidReferences(f"reference data must be bytes, not {_type_name(data)}")
    data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
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
    except RecursionError:
        raise InvalidReferences("reference file is not usable JSON: nested too deeply") from None


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
    refs: Mapping[Any, Any], default_url: str | None, templates: Mapping[str, str]
) -> dict[str, Reference]:
    """Convert each explicit entry; URLs are resolved once per distinct string."""
    out: dict[str, Reference] = {}
    url_cache: dict[Any, str] = {}
    for key, value in refs.items():
        validate_key(key)
        out[key] = _value(key, value, default_url, templates, url_cache)
    return out


def _value(
    key: str,
    value: Any,
    default_url: str | None,
    templates: Mapping[str, str],
    url_cache: dict[Any, str],
) -> Reference:
    """Turn one value of the set into a Reference, refusing anything else."""
    kind = type(value)
    if kind is list or kind is tuple:
        return _reference(key, value, default_url, templates, url_cache)
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
        f"[url] / [url, offset, length], not {_type_name(value)}",
        key=key,
    )


def _reference(
    key: str,
    value: list[Any] | tuple[Any, ...],
    default_url: str | None,
    templates: Mapping[str, str],
    url_cache: dict[Any, str],
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
        url = _resolve_url(key, raw_url, default_url, templates)
        if type(raw_url) is str:
            url_cache[raw_url] = url
    if count == 1:
        return Whole(url)
    _check_range(key, offset, length)
    return Range(url, offset, length)


def _check_range(key: str, offset: Any, length: Any) -> None:
    """Offsets and lengths are non-negative integers within what off_t can address."""
    if type(offset) is not int:
        raise InvalidReferences(f"offset must be an integer, not {_describe_value(offset)}", key=key)
    if type(length) is not int:
        raise InvalidReferences(f"length must be an integer, not {_describe_value(length)}", key=key)
    if offset < 0:
        raise InvalidReferences(f"offset must not be negative, got {offset}", key=key)
    if length < 0:
        raise InvalidReferences(f"length must not be negative, got {length}", key=key)
    if offset >= MAX_OFFSET or offset + length > MAX_OFFSET:
        raise InvalidReferences(
            f"range {offset}+{length} ends beyond 2**63, the largest addressable offset", key=key
        )


def _resolve_url(key: str, raw: Any, default_url: str | None, templates: Mapping[str, str]) -> str:
    """Apply templates and the default target to one URL, then check it."""
    if raw is None:
        url = ""
    elif type(raw) is str:
        url = _substitute_templates(raw, templates) if templates and "{" in raw else raw
    else:
        raise InvalidReferences(f"url must be a string or null, not {_describe_value(raw)}", key=key)
    if url == "":
        if default_url is None:
            raise InvalidReferences(
                "reference has no url (null or empty) and the set has no default target url", key=key
            )
        return default_url
    bad = _CONTROL.search(url)
    if bad is not None:
        raise InvalidReferences(f"url contains control character U+{ord(bad.group()):04X}", key=key)
    return url


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


def _parse_templates(raw: Any) -> dict[str, str]:
    """Templates are a name -> string mapping; names must be usable in ``{{name}}``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidReferences(f"'templates' must be a JSON object, not {_type_name(raw)}")
    for name, value in raw.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise InvalidReferences(
                f"template name {name!r} is not an identifier (letters, digits, '_'; not starting with a digit)"
            )
        if not isinstance(value, str):
            raise InvalidReferences(f"template {name!r} must be a string, not {_type_name(value)}")
    return dict(raw)


# --------------------------------------------------------------------------
# gen: generated references


class _ExprError(Exception):
    """A generator expression failed for particular variable values."""


Env = Mapping[str, "int | str"]
Evaluator = Callable[[Env], "int | str"]


def _expand_gens(
    raw: Any, templates: Mapping[str, str], default_url: str | None, out: dict[str, Reference]
) -> None:
    """Expand every ``gen`` entry into ``out``, refusing keys defined twice."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise InvalidReferences(f"'gen' must be a JSON array, not {_type_name(raw)}")
    budget = MAX_GENERATED_KEYS
    for index, entry in enumerate(raw):
        budget -= _expand_gen(f"gen[{index}]", entry, templates, default_url, out, budget)


def _expand_gen(
    where: str,
    entry: Any,
    templates: Mapping[str, str],
    default_url: str | None,
    out: dict[str, Reference],
    budget: int,
) -> int:
    """Expand one generator entry; returns how many keys it produced."""
    if not isinstance(entry, dict):
        raise InvalidReferences(f"{where} must be a JSON object, not {_type_name(entry)}")
    unknown = sorted(str(k) for k in entry.keys() - _GEN_FIELDS)
    if unknown:
        raise InvalidReferences(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    for field in ("key", "url", "dimensions"):
        if field not in entry:
            raise InvalidReferences(f"{where} lacks the required field {field!r}")
    if ("offset" in entry) != ("length" in entry):
        raise InvalidReferences(f"{where} must give both 'offset' and 'length', or neither")

    dimensions = _parse_dimensions(where, entry["dimensions"], templates)
    count = math.prod(len(values) for _, values in dimensions)
    if count > budget:
        raise InvalidReferences(
            f"{where} would generate {count} keys, more than the limit of "
            f"{MAX_GENERATED_KEYS} generated keys per reference set"
        )
    names = set(templates) | {name for name, _ in dimensions}
    key_of = _compile_pattern(where, "key", entry["key"], names, {})
    url_of = _compile_pattern(where, "url", entry["url"], names, templates)
    ranged = "offset" in entry
    if ranged:
        offset_of = _compile_integer(where, "offset", entry["offset"], names)
        length_of = _compile_integer(where, "length", entry["length"], names)

    dim_names = [name for name, _ in dimensions]
    base = dict(templates)
    url_cache: dict[str, str] = {}
    for values in itertools.product(*(values for _, values in dimensions)):
        env = base.copy()
        env.update(zip(dim_names, values, strict=False))
        try:
            key = key_of(env)
            raw_url = url_of(env)
            if ranged:
                offset, length = offset_of(env), length_of(env)
        except _ExprError as exc:
            raise InvalidReferences(f"{where}: {exc} (with {_describe(env, dim_names)})") from None
        problem = key_problem(key)
        if problem is not None:
            raise InvalidReferences(f"{problem} (generated by {where} with {_describe(env, dim_names)})", key=key)
        if key in out:
            raise InvalidReferences(
                f"key generated by {where} with {_describe(env, dim_names)} is already defined "
                "(in 'refs' or by another generated entry)",
                key=key,
            )
        url = url_cache.get(raw_url)
        if url is None:
            url = _resolve_url(key, raw_url, default_url, {})
            url_cache[raw_url] = url
        if ranged:
            _check_range(key, offset, length)
            out[key] = Range(url, offset, length)
        else:
            out[key] = Whole(url)
    return count


def _describe(env: Env, names: list[str]) -> str:
    """Name the dimension values that produced a failing entry."""
    return ", ".join(f"{name}={env[name]!r}" for name in names) or "no dimensions"


def _parse_dimensions(
    where: str, raw: Any, templates: Mapping[str, str]
) -> list[tuple[str, range | list[int | str]]]:
    """Dimensions map a variable name to a list of values or to ``{start, stop, step}``."""
    if not isinstance(raw, dict):
        raise InvalidReferences(f"{where} 'dimensions' must be a JSON object, not {_type_name(raw)}")
    dimensions: list[tuple[str, range | list[int | str]]] = []
    for name, spec in raw.items():
        what = f"{where} dimension {name!r}"
        if not isinstance(name, str) or not _IDENTIFIER.match(name) or _is_keyword(name):
            raise InvalidReferences(f"{what}: the name is not a usable variable name")
        if name in templates:
            raise InvalidReferences(f"{what}: the name is also a template name")
        if isinstance(spec, list):
            for item in spec:
                if type(item) is int:
                    _check_dimension_int(what, item)
                elif type(item) is not str:
                    raise InvalidReferences(
                        f"{what}: values must be integers or strings, not {_type_name(item)}"
                    )
            dimensions.append((name, spec))
        elif isinstance(spec, dict):
            unknown = sorted(str(k) for k in spec.keys() - _RANGE_FIELDS)
            if unknown:
                raise InvalidReferences(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}")
            if "stop" not in spec:
                raise InvalidReferences(f"{what} lacks the required field 'stop'")
            start, stop, step = spec.get("start", 0), spec["stop"], spec.get("step", 1)
            for field, number in (("start", start), ("stop", stop), ("step", step)):
                if type(number) is not int:
                    raise InvalidReferences(f"{what}: {field} must be an integer, not {_type_name(number)}")
                _check_dimension_int(f"{what} {field}", number)
            if step == 0:
                raise InvalidReferences(f"{what}: step must not be 0")
            dimensions.append((name, range(start, stop, step)))
        else:
            raise InvalidReferences(
                f"{what} must be a list of values or {{start, stop, step}}, not {_type_name(spec)}"
            )
    return dimensions


def _check_dimension_int(what: str, number: int) -> None:
    """Bounding inputs bounds everything arithmetic can produce from them."""
    if not -MAX_OFFSET <= number < MAX_OFFSET:
        raise InvalidReferences(f"{what}: {number} is outside the 64-bit integer range")


def _is_keyword(name: str) -> bool:
    return keyword.iskeyword(name) or name in ("True", "False", "None")


def _compile_pattern(
    where: str, field: str, pattern: Any, names: set[str], templates: Mapping[str, str]
) -> Callable[[Env], str]:
    """Compile a ``{{ expression }}`` pattern into a function of the variables.

    ``templates`` given here are also substituted in the ``{name}`` spelling
    (URLs only); keys take the jinja spelling alone, as in fsspec.
    """
    if not isinstance(pattern, str):
        raise InvalidReferences(f"{where} {field!r} must be a string, not {_type_name(pattern)}")
    parts: list[str | Evaluator] = []
    position = 0
    for match in _EXPRESSION.finditer(pattern):
        parts.append(pattern[position : match.start()])
        parts.append(_compile_expression(where, field, match.group(1), names))
        position = match.end()
    parts.append(pattern[position:])
    if templates:
        parts = [
            _SINGLE_BRACE.sub(lambda m: templates.get(m.group(1), m.group(0)), part)
            if isinstance(part, str)
            else part
            for part in parts
        ]
    parts = [part for part in parts if part != ""]
    if not parts:
        return lambda env: ""
    if len(parts) == 1:
        only = parts[0]
        if isinstance(only, str):
            return lambda env: only
        return lambda env: _render(only(env))

    def render(env: Env) -> str:
        return "".join(part if isinstance(part, str) else _render(part(env)) for part in parts)

    return render


def _render(value: int | str) -> str:
    if type(value) is str:
        return value
    try:
        return str(value)
    except ValueError as exc:  # int too large to render
        raise _ExprError(str(exc)) from None


def _compile_integer(where: str, field: str, raw: Any, names: set[str]) -> Callable[[Env], int]:
    """``offset``/``length``: a JSON integer or a pattern rendering to one (as jinja + int())."""
    if type(raw) is int:
        return lambda env: raw
    if not isinstance(raw, str):
        raise InvalidReferences(f"{where} {field!r} must be an integer or a string pattern, not {_type_name(raw)}")
    stripped = raw.strip()
    whole = _EXPRESSION.fullmatch(stripped)
    if whole is not None and "{{" not in whole.group(1):
        evaluate = _compile_expression(where, field, whole.group(1), names)

        def direct(env: Env) -> int:
            value = evaluate(env)
            if type(value) is int:
                return value
            return _to_int(field, value)

        return direct
    render = _compile_pattern(where, field, raw, names, {})
    return lambda env: _to_int(field, render(env))


def _to_int(field: str, text: str) -> int:
    if not _INTEGER_TEXT.match(text):
        raise _ExprError(f"{field} renders to {text!r}, which is not an integer")
    return int(text)


# --------------------------------------------------------------------------
# The expression evaluator: compiled once per pattern into closures, never eval.


_INT_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_OP_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}
_SUPPORTED = "names, integers, strings, + - * // %, unary -, and parentheses"


def _compile_expression(where: str, field: str, source: str, names: set[str]) -> Evaluator:
    """Compile the inside of ``{{ ... }}`` or refuse it with the reason."""
    text = source.strip()
    what = f"{where} {field!r} expression {{{{{text}}}}}"
    if len(text) > MAX_EXPRESSION_CHARS:
        raise InvalidReferences(f"{what[:80]}...: longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise InvalidReferences(f"{what} is not a supported expression ({_SUPPORTED})") from None
    try:
        return _compile_node(tree.body, names)
    except _ExprError as exc:
        raise InvalidReferences(f"{what}: {exc}") from None
    except RecursionError:
        raise InvalidReferences(f"{what}: nested too deeply") from None


def _compile_node(node: ast.expr, names: set[str]) -> Evaluator:
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is int or type(value) is str:
            return lambda env: value
        raise _ExprError(f"constant {value!r} is not supported; only integers and strings are")
    if isinstance(node, ast.Name):
        name = node.id
        if name not in names:
            raise _ExprError(f"unknown variable {name!r}")
        return lambda env: env[name]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _compile_node(node.operand, names)
        negate = isinstance(node.op, ast.USub)

        def unary(env: Env) -> int:
            value = operand(env)
            if type(value) is not int:
                raise _ExprError(f"unary minus/plus needs an integer, not {value!r}")
            return -value if negate else value

        return unary
    if isinstance(node, ast.BinOp) and type(node.op) in _INT_OPS:
        return _compile_binop(node, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        raise _ExprError("'/' (true division) is not supported; use '//'")
    raise _ExprError(f"{type(node).__name__} is not supported; only {_SUPPORTED} are")


def _compile_binop(node: ast.BinOp, names: set[str]) -> Evaluator:
    left = _compile_node(node.left, names)
    right = _compile_node(node.right, names)
    op = _INT_OPS[type(node.op)]
    symbol = _OP_SYMBOLS[type(node.op)]
    is_mod = symbol == "%"
    if is_mod and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
        _printf_conversion(node.left.value)  # refuse a bad format when compiling

    def binop(env: Env) -> int | str:
        a, b = left(env), right(env)
        if type(a) is int and type(b) is int:
            try:
                return op(a, b)
            except ZeroDivisionError:
                raise _ExprError(f"division by zero in {a} {symbol} {b}") from None
        if is_mod and type(a) is str:
            return _printf(a, b)
        raise _ExprError(f"{symbol} needs integers, got {a!r} and {b!r}")

    return binop


def _printf_conversion(fmt: str) -> str:
    match = _PRINTF.match(fmt)
    if match is None:
        raise _ExprError(
            f"format {fmt!r} is not supported; use one conversion such as '%04d' (width at most 99)"
        )
    return match.group(1)


def _printf(fmt: str, value: int | str) -> str:
    """``'%04d' % i``: one bounded conversion, so formatting cannot blow up memory."""
    conversion = _printf_conversion(fmt)
    if conversion != "s" and type(value) is not int:
        raise _ExprError(f"format {fmt!r} needs an integer, not {value!r}")
    try:
        return fmt % (value,)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _ExprError(f"format {fmt!r} failed for {value!r}: {exc}") from None


def _describe_value(value: Any) -> str:
    """Type and, for scalars, a shortened value: containers may be huge or deeply nested."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "(a huge integer)"
        if len(text) > 60:
            text = text[:57] + "..."
        return f"{_type_name(value)} {text}"
    return _type_name(value)


def _type_name(value: Any) -> str:
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
