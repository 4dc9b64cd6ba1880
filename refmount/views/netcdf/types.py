"""netCDF classic external types, and which numpy dtypes map to them.

The classic formats know six types (CDF-1/2: byte, char, short, int, float,
double); CDF-5 adds ubyte, ushort, uint, int64 and uint64. Everything is
big-endian on disk. A variable's type decides whether its file must be
CDF-5; :func:`nc_type_of` says which type (or why there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NC_BYTE, NC_CHAR, NC_SHORT, NC_INT, NC_FLOAT, NC_DOUBLE = 1, 2, 3, 4, 5, 6
NC_UBYTE, NC_USHORT, NC_UINT, NC_INT64, NC_UINT64 = 7, 8, 9, 10, 11

#: nc_type -> big-endian numpy dtype of its external representation.
EXTERNAL: dict[int, np.dtype[Any]] = {
    NC_BYTE: np.dtype("i1"), NC_CHAR: np.dtype("S1"), NC_SHORT: np.dtype(">i2"), NC_INT: np.dtype(">i4"),
    NC_FLOAT: np.dtype(">f4"), NC_DOUBLE: np.dtype(">f8"), NC_UBYTE: np.dtype("u1"),
    NC_USHORT: np.dtype(">u2"), NC_UINT: np.dtype(">u4"), NC_INT64: np.dtype(">i8"), NC_UINT64: np.dtype(">u8"),
}

#: Types only CDF-5 (64-bit data) can hold.
CDF5_ONLY = frozenset({NC_UBYTE, NC_USHORT, NC_UINT, NC_INT64, NC_UINT64})

#: netCDF's default fill values (netcdf.h): a ``_FillValue`` equal to these says nothing new.
DEFAULT_FILL: dict[int, Any] = {
    NC_BYTE: -127, NC_CHAR: b"\0", NC_SHORT: -32767, NC_INT: -2147483647,
    NC_FLOAT: float(np.float32(9.9692099683868690e36)), NC_DOUBLE: 9.9692099683868690e36,
    NC_UBYTE: 255, NC_USHORT: 65535, NC_UINT: 4294967295, NC_INT64: -9223372036854775806,
    NC_UINT64: 18446744073709551614,
}

_BY_KIND_SIZE: dict[tuple[str, int], int] = {
    ("i", 1): NC_BYTE, ("i", 2): NC_SHORT, ("i", 4): NC_INT, ("i", 8): NC_INT64,
    ("u", 1): NC_UBYTE, ("u", 2): NC_USHORT, ("u", 4): NC_UINT, ("u", 8): NC_UINT64,
    ("f", 4): NC_FLOAT, ("f", 8): NC_DOUBLE, ("b", 1): NC_BYTE,
}


@dataclass(frozen=True)
class TypeChoice:
    """How an array's elements are stored in the file: an nc_type and, for strings, the bytes per string."""

    nc_type: int
    string_length: int = 0  # > 0: each element becomes a row of this many chars (an extra dimension)


def nc_type_of(dtype: np.dtype[Any]) -> TypeChoice | str:
    """The classic type of a numpy dtype, or the reason it has none."""
    if dtype.fields is not None:
        return "compound type"
    if dtype.kind == "S":
        return TypeChoice(NC_CHAR, 0 if dtype.itemsize == 1 else dtype.itemsize)
    if dtype.kind == "U":
        return TypeChoice(NC_CHAR, 4 * (dtype.itemsize // 4))  # UTF-8 of N characters fits in 4N bytes
    if dtype.kind == "c":
        return "complex numbers"
    if dtype.kind == "f" and dtype.itemsize == 2:
        return "half-precision floats"
    if dtype.kind in "mM":
        return "datetime type"
    if dtype.kind == "V":
        return "opaque type"
    choice = _BY_KIND_SIZE.get((dtype.kind, dtype.itemsize))
    if choice is None:
        return f"dtype {dtype.str} has no netCDF type"
    return TypeChoice(choice)


def external_dtype(nc_type: int) -> np.dtype[Any]:
    return EXTERNAL[nc_type]
