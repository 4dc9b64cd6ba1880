"""One group's Zarr metadata as the contents of a netCDF classic file, and what is left out and why.

Pure. :func:`plan_group` takes the group's attributes and each array's
``.zarray``/``.zattrs`` and decides:

* the format: CDF-2 (64-bit offset) unless a variable needs CDF-5 (unsigned
  or 64-bit integers, or more than 4 GiB), or what ``netcdf_format`` forces;
* dimensions: named by ``_ARRAY_DIMENSIONS``; an array without them gets
  phony dimensions named as netCDF-C's Zarr reader names them
  (``_zdim_<length>``); strings get a string-length dimension
  (``string<N>``); every dimension is fixed (a record dimension cannot be
  told from Zarr metadata);
* variables: coordinate variables first, then the rest by name; fixed and
  variable-length strings become char arrays (text ones with
  ``_Encoding = "utf-8"``, which netCDF4-python and xarray read back as
  strings);
* attributes: JSON has no types, so attributes CF ties to the variable's
  type (``_FillValue``, ``missing_value``, ``valid_*``) take the variable's
  type, integers are ``int`` (``double`` when they do not fit), and floats
  are ``float`` when they round-trip through 32 bits with a shorter
  spelling, else ``double``; a ``.zarray`` fill value that differs from
  netCDF's default fill becomes ``_FillValue``;
* what cannot be held (compound, complex, object arrays other than strings,
  conflicting dimensions, invalid names, a zero-length dimension, ...) is
  left out; the reasons are returned and listed in the global attribute
  :data:`LEFT_OUT_ATTRIBUTE`.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refmount.views.netcdf.header import CDF2_MAX_VSIZE, Attribute, Dimension, Layout, Variable, layout
from refmount.views.netcdf.types import (
    CDF5_ONLY,
    DEFAULT_FILL,
    NC_BYTE,
    NC_CHAR,
    NC_DOUBLE,
    NC_FLOAT,
    NC_INT,
    NC_INT64,
    external_dtype,
    nc_type_of,
)
from refmount.views.zarr_meta import codec_configs, fill_scalar, numpy_dtype

FORMATS = ("auto", "cdf1", "cdf2", "cdf5")
LEFT_OUT_ATTRIBUTE = "refmount_left_out"
STRING_CODECS = frozenset({"vlen-utf8", "vlen-bytes", "json2", "json", "msgpack2"})
TYPED_LIKE_THE_VARIABLE = frozenset({"_FillValue", "missing_value", "valid_min", "valid_max", "valid_range"})
SKIPPED_ATTRIBUTES = frozenset({"_ARRAY_DIMENSIONS", "_NCZARR_ATTR", "_NCZARR_ARRAY", "_NCZARR_GROUP",
                                "_NCZARR_SUPERBLOCK", "_NCProperties", "DIMENSION_LIST", "REFERENCE_LIST",
                                "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates", "_nc3_strict"})
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class ArrayMeta:
    """One array of a group: its name in the group, ``.zarray`` and ``.zattrs``.

    ``string_length`` is for object (variable-length string) arrays: the
    longest string in bytes, read from the data by the caller, or the reason
    it is not known.
    """

    name: str
    zarray: Mapping[str, Any]
    zattrs: Mapping[str, Any] = field(default_factory=dict)
    string_length: int | str | None = None


@dataclass(frozen=True)
class Source:
    """How the data of one variable is made from its array's elements.

    ``item`` is the external dtype of one Zarr element (a row of chars for a
    string array); ``fill`` one such item, for elements of unwritten chunks.
    """

    array: str
    item: np.dtype[Any]
    kind: str  # "number" | "bytes" | "unicode" | "vlen"
    fill: bytes


@dataclass(frozen=True)
class FilePlan:
    layout: Layout
    sources: tuple[Source, ...]
    left_out: tuple[tuple[str, str], ...]

    @property
    def format_name(self) -> str:
        return {1: "CDF-1 (classic)", 2: "CDF-2 (64-bit offset)", 5: "CDF-5 (64-bit data)"}[self.layout.version]


def valid_name(name: str) -> bool:
    """A name netCDF-C accepts: NFC UTF-8, no '/', no control characters, no trailing space."""
    if not name or "/" in name or name != unicodedata.normalize("NFC", name) or name.endswith(" "):
        return False
    first = name[0]
    if ord(first) < 128 and not (first.isalnum() or first == "_"):
        return False
    return all(ord(ch) >= 32 and ord(ch) != 127 for ch in name)


@dataclass
class _Candidate:
    meta: ArrayMeta
    dtype: np.dtype[Any]
    nc_type: int
    dims: list[str]
    shape: list[int]
    source: Source


def plan_group(
    group_attrs: Mapping[str, Any], arrays: Sequence[ArrayMeta], netcdf_format: str = "auto",
    *, unreadable: Sequence[tuple[str, str]] = (),
) -> FilePlan:
    """The file one group becomes (see the module docstring for the rules).

    ``unreadable`` lists what the caller could not even read (name, reason);
    it is reported with the rest.
    """
    if netcdf_format not in FORMATS:
        raise ValueError(f"netcdf_format {netcdf_format!r} is not one of {', '.join(FORMATS)}")
    left_out = list(unreadable)
    candidates: list[_Candidate] = []
    for meta in arrays:
        found = _candidate(meta)
        if isinstance(found, str):
            left_out.append((meta.name, found))
        else:
            candidates.append(found)
    candidates = _consistent_dimensions(candidates, left_out)
    version = _version(netcdf_format, candidates, left_out)
    dim_ids: dict[str, int] = {}
    dims: list[Dimension] = []
    for cand in candidates:
        for name, length in zip(cand.dims, cand.shape, strict=True):
            if name not in dim_ids:
                dim_ids[name] = len(dims)
                dims.append(Dimension(name, length))
    variables: list[Variable] = []
    for cand in candidates:
        attrs = _variable_attributes(cand, version, left_out)
        variables.append(Variable(cand.meta.name, tuple(dim_ids[d] for d in cand.dims), tuple(cand.shape),
                                  cand.nc_type, tuple(attrs)))
    global_attrs = _attributes("", group_attrs, None, version, left_out)
    if left_out:
        listing = "; ".join(f"{name}: {reason}" for name, reason in left_out)
        global_attrs.append(Attribute.text(LEFT_OUT_ATTRIBUTE, listing))
    return FilePlan(layout(version, dims, global_attrs, variables), tuple(c.source for c in candidates),
                    tuple(left_out))


def _candidate(meta: ArrayMeta) -> _Candidate | str:
    """An array as a variable, or why it cannot be one."""
    if not valid_name(meta.name):
        return "not a valid netCDF name"
    try:
        dtype = numpy_dtype(meta.zarray["dtype"])
        shape = [int(n) for n in meta.zarray["shape"]]
    except (KeyError, TypeError, ValueError) as exc:
        return f"unreadable .zarray ({exc})"
    dims = meta.zattrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(dims, list) or len(dims) != len(shape) or not all(isinstance(d, str) for d in dims):
        dims = [f"_zdim_{n}" for n in shape]
    bad = [d for d in dims if not valid_name(d)]
    if bad:
        return f"dimension name {bad[0]!r} is not a valid netCDF name"
    if 0 in shape:
        return f"dimension {dims[shape.index(0)]} has length 0 (classic netCDF keeps length 0 for the record dimension)"
    if dtype.kind == "O":
        ids = {str(c.get("id")) for c in codec_configs(meta.zarray)}
        if not ids & STRING_CODECS:
            return f"object data ({'+'.join(sorted(ids)) or 'no codec'}): variable-length, reference or opaque data"
        length = meta.string_length
        if not isinstance(length, int):
            return f"variable-length strings of unknown length ({length or 'not read'})"
        width = max(1, length)
        item = np.dtype(f"S{width}")
        return _Candidate(meta, dtype, NC_CHAR, [*dims, f"string{width}"], [*shape, width],
                          Source(meta.name, item, "vlen", b"\0" * width))
    choice = nc_type_of(dtype)
    if isinstance(choice, str):
        return choice
    if choice.string_length:
        width = choice.string_length
        kind = "unicode" if dtype.kind == "U" else "bytes"
        item = np.dtype(f"S{width}")
        return _Candidate(meta, dtype, NC_CHAR, [*dims, f"string{width}"], [*shape, width],
                          Source(meta.name, item, kind, b"\0" * width))
    item = external_dtype(choice.nc_type)
    return _Candidate(meta, dtype, choice.nc_type, list(dims), shape,
                      Source(meta.name, item, "number", _fill_bytes(meta.zarray.get("fill_value"), dtype, item)))


def _fill_bytes(value: Any, dtype: np.dtype[Any], item: np.dtype[Any]) -> bytes:
    """One external item of the array's fill value (zero when it has none or it does not convert)."""
    try:
        return np.array(fill_scalar(value, dtype)).astype(item).tobytes()
    except (TypeError, ValueError, OverflowError):
        return bytes(item.itemsize)


def _consistent_dimensions(candidates: list[_Candidate], left_out: list[tuple[str, str]]) -> list[_Candidate]:
    """Drop arrays that disagree on a dimension's length.

    The length is the coordinate variable's (an array named like the
    dimension, along it alone) when there is one, else the length most
    arrays give it.
    """
    seen: dict[str, Counter[int]] = {}
    coordinate: dict[str, int] = {}
    for cand in candidates:
        for d, n in zip(cand.dims, cand.shape, strict=True):
            seen.setdefault(d, Counter())[n] += 1
        if cand.dims == [cand.meta.name]:
            coordinate[cand.meta.name] = cand.shape[0]
    lengths = {d: coordinate.get(d, counts.most_common(1)[0][0]) for d, counts in seen.items()}
    kept = []
    for cand in sorted(candidates, key=_variable_order(candidates)):
        clash = next(((d, n) for d, n in zip(cand.dims, cand.shape, strict=True) if lengths[d] != n), None)
        if clash is not None:
            left_out.append((cand.meta.name, f"dimension {clash[0]} is {clash[1]} long here but {lengths[clash[0]]} "
                                             "in the other variables"))
            continue
        kept.append(cand)
    return kept


def _variable_order(candidates: list[_Candidate]) -> Any:
    """Coordinate variables (one dimension named like the variable) first, then by name."""
    def key(cand: _Candidate) -> tuple[bool, str]:
        return (cand.dims[:1] != [cand.meta.name] or len(cand.dims) != 1, cand.meta.name)

    return key


def _version(netcdf_format: str, candidates: list[_Candidate], left_out: list[tuple[str, str]]) -> int:
    def needs_cdf5(cand: _Candidate) -> str | None:
        if cand.nc_type in CDF5_ONLY:
            return f"type {cand.dtype.str} (unsigned or 64-bit integers) needs CDF-5"
        if external_dtype(cand.nc_type).itemsize * math.prod(cand.shape) > CDF2_MAX_VSIZE:
            return "more than 4 GiB needs CDF-5"
        return None

    if netcdf_format == "cdf5":
        return 5
    reasons = {id(c): needs_cdf5(c) for c in candidates}
    if netcdf_format == "auto":
        return 5 if any(reasons.values()) else 2
    for cand in list(candidates):
        reason = reasons[id(cand)]
        if reason is not None:
            left_out.append((cand.meta.name, f"{reason} (netcdf_format={netcdf_format})"))
            candidates.remove(cand)
    return 1 if netcdf_format == "cdf1" else 2


def _variable_attributes(cand: _Candidate, version: int, left_out: list[tuple[str, str]]) -> list[Attribute]:
    numeric = cand.source.kind == "number"
    attrs = _attributes(cand.meta.name, cand.meta.zattrs, cand.nc_type if numeric else None, version, left_out)
    if _is_text(cand) and "_Encoding" not in cand.meta.zattrs:
        attrs.append(Attribute.text("_Encoding", "utf-8"))  # netCDF4-python and xarray read the rows as strings
    fill = cand.meta.zarray.get("fill_value")
    if numeric and "_FillValue" not in cand.meta.zattrs and fill is not None:
        try:
            value = fill_scalar(fill, cand.dtype)
            default = DEFAULT_FILL[cand.nc_type]
            if cand.nc_type == NC_CHAR:
                value = bytes(value)[:1] or b"\0"
            if not (value == default or (isinstance(value, float | np.floating) and np.isnan(value)
                                         and np.isnan(default))):
                attrs.insert(0, Attribute.numbers("_FillValue", cand.nc_type, [value]))
        except (TypeError, ValueError, OverflowError):
            pass
    return attrs


def _is_text(cand: _Candidate) -> bool:
    """Strings that were text (not bytes) before they became rows of chars."""
    if cand.source.kind == "unicode":
        return True
    ids = {str(c.get("id")) for c in codec_configs(cand.meta.zarray)}
    return cand.source.kind == "vlen" and "vlen-bytes" not in ids


def _attributes(owner: str, raw: Mapping[str, Any], var_type: int | None, version: int,
                left_out: list[tuple[str, str]]) -> list[Attribute]:
    out: list[Attribute] = []
    for name, value in raw.items():
        if name in SKIPPED_ATTRIBUTES or name.startswith("_NCZARR"):
            continue
        where = f"{owner}:{name}" if owner else f":{name}"
        if not valid_name(name):
            left_out.append((where, "attribute name is not a valid netCDF name"))
            continue
        typed = var_type if name in TYPED_LIKE_THE_VARIABLE else None
        attr = attribute(name, value, typed, version)
        if isinstance(attr, str):
            left_out.append((where, attr))
        else:
            out.append(attr)
    return out


def attribute(name: str, value: Any, typed: int | None = None, version: int = 2) -> Attribute | str:
    """One JSON attribute value as a typed netCDF attribute, or why it cannot be one."""
    if isinstance(value, str) and (typed is None or value not in _NON_FINITE):
        return Attribute.text(name, value)
    values = value if isinstance(value, list) else [value]
    if not values:
        return "empty list"
    if typed is None and all(isinstance(v, str) for v in values):
        return "a list of strings (classic netCDF attributes hold one string)"
    numbers: list[Any] = []
    for v in values:
        if isinstance(v, str) and v in _NON_FINITE:
            numbers.append(_NON_FINITE[v])
        elif isinstance(v, bool | int | float) and v is not None:
            numbers.append(v)
        else:
            return f"value {v!r} is neither a number nor a string"
    if typed is not None:
        try:
            return Attribute.numbers(name, typed, numbers)
        except (OverflowError, ValueError):
            return f"values {numbers} do not fit the variable's type"
    if all(isinstance(v, bool | int) for v in numbers):
        if all(-(1 << 31) <= v < (1 << 31) for v in numbers):
            return Attribute.numbers(name, NC_BYTE if all(isinstance(v, bool) for v in numbers) else NC_INT, numbers)
        if version == 5 and all(-(1 << 63) <= v < (1 << 63) for v in numbers):
            return Attribute.numbers(name, NC_INT64, numbers)
        return Attribute.numbers(name, NC_DOUBLE, [float(v) for v in numbers])
    floats = [float(v) for v in numbers]
    if all(_is_float32(v) for v in floats):
        return Attribute.numbers(name, NC_FLOAT, floats)
    return Attribute.numbers(name, NC_DOUBLE, floats)


def _is_float32(value: float) -> bool:
    """A double that is exactly a float32 whose shortest spelling is shorter (3.140000104904175 is 3.14f)."""
    if not math.isfinite(value):
        return False
    single = np.float32(value)
    return float(single) == value and len(repr(float(single))) > len(str(single)) and value != int(value)
