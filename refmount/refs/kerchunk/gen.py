"""``gen`` entries of a version 1 set: expanded over their dimensions, with a small safe evaluator.

fsspec renders generator patterns with jinja2; here a compiler of our own
turns each ``{{ expression }}`` into closures once per pattern, supporting
what generators need and nothing that could run code (never ``eval``).
"""

from __future__ import annotations

import ast
import itertools
import keyword
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from refmount.errors import InvalidReferences
from refmount.refs.kerchunk.values import IDENTIFIER, MAX_OFFSET, check_range, resolve_url, type_name
from refmount.refs.keys import key_problem
from refmount.refs.model import Range, Reference, Whole

__all__ = ["MAX_EXPRESSION_CHARS", "MAX_GENERATED_KEYS", "expand_gens"]

#: Most keys all ``gen`` entries of one set may produce together. A few
#: hundred bytes of input can ask for any number of keys, and each costs some
#: 400 bytes at the peak of building the set (a million took the daemon to
#: 470 MB; this limit to some 270 MB and a few seconds, measured by
#: tests/mount/test_resource_bounds_mount.py), so a tiny hostile set cannot
#: cost gigabytes. A larger set can be written out with explicit ``refs`` or in the
#: Parquet layout, whose cost is then visible in its own size.
MAX_GENERATED_KEYS = 500_000

#: Longest ``{{ expression }}`` accepted in a generator pattern.
MAX_EXPRESSION_CHARS = 256

_SINGLE_BRACE = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INTEGER_TEXT = re.compile(r"\s*[-+]?[0-9]+\s*\Z")
# One printf conversion, bounded width, for ``'%04d' % i``.
_PRINTF = re.compile(r"(?:[^%]|%%)*%[-+ 0#]*[0-9]{0,2}([diouxXs])(?:[^%]|%%)*\Z", re.DOTALL)

_GEN_FIELDS = frozenset({"key", "url", "offset", "length", "dimensions"})
_RANGE_FIELDS = frozenset({"start", "stop", "step"})


class _ExprError(Exception):
    """A generator expression failed for particular variable values."""


Env = Mapping[str, "int | str"]
Evaluator = Callable[[Env], "int | str"]


def expand_gens(
    raw: Any, templates: Mapping[str, str], default_url: str | None, out: dict[str, Reference],
    base: str | None = None,
) -> None:
    """Expand every ``gen`` entry into ``out``, refusing keys defined twice."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise InvalidReferences(f"'gen' must be a JSON array, not {type_name(raw)}")
    budget = MAX_GENERATED_KEYS
    for index, entry in enumerate(raw):
        budget -= _expand_gen(f"gen[{index}]", entry, templates, default_url, out, budget, base)


def _expand_gen(
    where: str,
    entry: Any,
    templates: Mapping[str, str],
    default_url: str | None,
    out: dict[str, Reference],
    budget: int,
    set_dir: str | None,
) -> int:
    """Expand one generator entry; returns how many keys it produced."""
    if not isinstance(entry, dict):
        raise InvalidReferences(f"{where} must be a JSON object, not {type_name(entry)}")
    unknown = sorted(str(k) for k in entry.keys() - _GEN_FIELDS)
    if unknown:
        raise InvalidReferences(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    for field in ("key", "url", "dimensions"):
        if field not in entry:
            raise InvalidReferences(f"{where} lacks the required field {field!r}")
    if ("offset" in entry) != ("length" in entry):
        raise InvalidReferences(f"{where} must give both 'offset' and 'length', or neither")

    dimensions = _parse_dimensions(where, entry["dimensions"], templates)
    count = math.prod(_dimension_length(values) for _, values in dimensions)
    if count > budget:
        raise InvalidReferences(
            f"{where} would generate {count} keys, more than the limit of "
            f"{MAX_GENERATED_KEYS} generated keys per reference set"
        )
    if count == 0:
        return 0  # never materialise the other dimensions, which may be of any length
    names = set(templates) | {name for name, _ in dimensions}
    key_of = _compile_pattern(where, "key", entry["key"], names, {})
    url_of = _compile_pattern(where, "url", entry["url"], names, templates)
    ranged = "offset" in entry
    if ranged:
        offset_of = _compile_integer(where, "offset", entry["offset"], names)
        length_of = _compile_integer(where, "length", entry["length"], names)

    dim_names = [name for name, _ in dimensions]
    base: dict[str, int | str] = dict(templates)
    url_cache: dict[str, str] = {}
    env = base  # one mapping, its dimension values replaced per key: nothing keeps it between keys
    for values in itertools.product(*(values for _, values in dimensions)):
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
            url = resolve_url(key, raw_url, default_url, {}, set_dir)
            url_cache[raw_url] = url
        if ranged:
            check_range(key, offset, length)
            out[key] = Range(url, offset, length)
        else:
            out[key] = Whole(url)
    return count


def _dimension_length(values: range | list[int | str]) -> int:
    """How many values a dimension has; ``len`` of a range beyond 2**63 values would overflow."""
    if isinstance(values, range):
        start, stop, step = values.start, values.stop, values.step
        span = stop - start if step > 0 else start - stop
        return max(0, -(-span // abs(step)))
    return len(values)


def _describe(env: Env, names: list[str]) -> str:
    """Name the dimension values that produced a failing entry."""
    return ", ".join(f"{name}={env[name]!r}" for name in names) or "no dimensions"


def _parse_dimensions(
    where: str, raw: Any, templates: Mapping[str, str]
) -> list[tuple[str, range | list[int | str]]]:
    """Dimensions map a variable name to a list of values or to ``{start, stop, step}``."""
    if not isinstance(raw, dict):
        raise InvalidReferences(f"{where} 'dimensions' must be a JSON object, not {type_name(raw)}")
    dimensions: list[tuple[str, range | list[int | str]]] = []
    for name, spec in raw.items():
        what = f"{where} dimension {name!r}"
        if not isinstance(name, str) or not IDENTIFIER.match(name) or _is_keyword(name):
            raise InvalidReferences(f"{what}: the name is not a usable variable name")
        if name in templates:
            raise InvalidReferences(f"{what}: the name is also a template name")
        if isinstance(spec, list):
            for item in spec:
                if type(item) is int:
                    _check_dimension_int(what, item)
                elif type(item) is not str:
                    raise InvalidReferences(
                        f"{what}: values must be integers or strings, not {type_name(item)}"
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
                    raise InvalidReferences(f"{what}: {field} must be an integer, not {type_name(number)}")
                _check_dimension_int(f"{what} {field}", number)
            if step == 0:
                raise InvalidReferences(f"{what}: step must not be 0")
            dimensions.append((name, range(start, stop, step)))
        else:
            raise InvalidReferences(
                f"{what} must be a list of values or {{start, stop, step}}, not {type_name(spec)}"
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
        raise InvalidReferences(f"{where} {field!r} must be a string, not {type_name(pattern)}")
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

    pieces = tuple((lambda env, text=part: text) if isinstance(part, str) else _rendering(part) for part in parts)

    def render(env: Env) -> str:
        return "".join([piece(env) for piece in pieces])

    return render


def _rendering(evaluate: Evaluator) -> Callable[[Env], str]:
    def rendered(env: Env) -> str:
        value = evaluate(env)
        return value if type(value) is str else _render(value)

    return rendered


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
        raise InvalidReferences(f"{where} {field!r} must be an integer or a string pattern, not {type_name(raw)}")
    stripped = raw.strip()
    whole = _EXPRESSION.fullmatch(stripped)
    if whole is not None and "{{" not in whole.group(1):
        evaluate = _compile_expression(where, field, whole.group(1), names)

        def direct(env: Env) -> int:
            value = evaluate(env)
            if isinstance(value, int):  # never a bool: constants are checked to be exactly int
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

