"""The netCDF classic header (CDF-1, CDF-2, CDF-5) and the byte layout of a file's data.

Pure: a file is described by :class:`Dimension`, :class:`Attribute` and
:class:`Variable` values, and :func:`layout` turns them into the header
bytes, each variable's ``begin`` offset and the exact file size. The rules
follow the netCDF classic format specification: a big-endian header of
``magic numrecs dim_list gatt_list var_list``; every name and attribute
value padded with zero bytes to a multiple of four; ``NON_NEG`` counts of
32 bits in CDF-1/2 and 64 bits in CDF-5; ``begin`` offsets of 32 bits in
CDF-1 and 64 bits in CDF-2/5. Every variable here is fixed-size (the view
presents no record dimension), so the data part is the variables one after
the other, each in C order and padded to four bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from refmount.views.netcdf.types import NC_CHAR, external_dtype

NC_DIMENSION = 0x0A
NC_VARIABLE = 0x0B
NC_ATTRIBUTE = 0x0C
VERSIONS = (1, 2, 5)

#: Largest offset a CDF-1 ``begin`` holds.
CDF1_MAX_OFFSET = (1 << 31) - 1
#: Largest ``vsize`` CDF-1/2 can state (a larger variable needs CDF-5).
CDF2_MAX_VSIZE = (1 << 32) - 4


def pad4(n: int) -> int:
    """``n`` rounded up to a multiple of four."""
    return (n + 3) & ~3


@dataclass(frozen=True)
class Dimension:
    name: str
    length: int


@dataclass(frozen=True)
class Attribute:
    """A typed attribute: its values already in external (big-endian) form."""

    name: str
    nc_type: int
    count: int
    payload: bytes

    @classmethod
    def text(cls, name: str, value: str) -> Attribute:
        data = value.encode("utf-8")
        return cls(name, NC_CHAR, len(data), data)

    @classmethod
    def numbers(cls, name: str, nc_type: int, values: Sequence[object]) -> Attribute:
        array = np.asarray(values).astype(external_dtype(nc_type))
        return cls(name, nc_type, int(array.size), array.tobytes())


@dataclass(frozen=True)
class Variable:
    name: str
    dim_ids: tuple[int, ...]
    shape: tuple[int, ...]
    nc_type: int
    attributes: tuple[Attribute, ...] = ()

    @property
    def itemsize(self) -> int:
        return external_dtype(self.nc_type).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the variable's data (without the padding to four)."""
        return self.itemsize * math.prod(self.shape)

    @property
    def vsize(self) -> int:
        return pad4(self.nbytes)


@dataclass(frozen=True)
class Layout:
    """Where everything of one file lies: header bytes, each variable's ``begin``, total size."""

    version: int
    header: bytes
    variables: tuple[Variable, ...]
    begins: tuple[int, ...]
    size: int = field(default=0)


class _Writer:
    def __init__(self, version: int) -> None:
        self.version = version
        self.parts: list[bytes] = []

    def tag(self, value: int) -> None:
        self.parts.append(struct.pack(">i", value))

    def non_neg(self, value: int) -> None:
        self.parts.append(struct.pack(">Q", value) if self.version == 5 else struct.pack(">I", value))

    def offset(self, value: int) -> None:
        self.parts.append(struct.pack(">I", value) if self.version == 1 else struct.pack(">Q", value))

    def padded(self, data: bytes) -> None:
        self.parts.append(data + b"\0" * (pad4(len(data)) - len(data)))

    def name(self, text: str) -> None:
        data = text.encode("utf-8")
        self.non_neg(len(data))
        self.padded(data)

    def attributes(self, attrs: Sequence[Attribute]) -> None:
        if not attrs:
            self.tag(0)
            self.non_neg(0)
            return
        self.tag(NC_ATTRIBUTE)
        self.non_neg(len(attrs))
        for attr in attrs:
            self.name(attr.name)
            self.tag(attr.nc_type)
            self.non_neg(attr.count)
            self.padded(attr.payload)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def encode_header(
    version: int, dims: Sequence[Dimension], attrs: Sequence[Attribute], variables: Sequence[Variable],
    begins: Sequence[int],
) -> bytes:
    """The header bytes for the given contents and ``begin`` offsets."""
    if version not in VERSIONS:
        raise ValueError(f"netCDF classic version {version} is not 1, 2 or 5")
    out = _Writer(version)
    out.parts.append(b"CDF" + bytes([version]))
    out.non_neg(0)  # numrecs: no record variables
    if dims:
        out.tag(NC_DIMENSION)
        out.non_neg(len(dims))
        for dim in dims:
            out.name(dim.name)
            out.non_neg(dim.length)
    else:
        out.tag(0)
        out.non_neg(0)
    out.attributes(attrs)
    if variables:
        out.tag(NC_VARIABLE)
        out.non_neg(len(variables))
        for var, begin in zip(variables, begins, strict=True):
            out.name(var.name)
            out.non_neg(len(var.dim_ids))
            for dim_id in var.dim_ids:
                out.non_neg(dim_id)
            out.attributes(var.attributes)
            out.tag(var.nc_type)
            out.non_neg(var.vsize if version == 5 else min(var.vsize, (1 << 32) - 1))
            out.offset(begin)
    else:
        out.tag(0)
        out.non_neg(0)
    return out.bytes()


def layout(
    version: int, dims: Sequence[Dimension], attrs: Sequence[Attribute], variables: Sequence[Variable]
) -> Layout:
    """Header and data layout of a file: variables follow the header in order, each padded to four bytes.

    The header's size does not depend on the ``begin`` values (their width is
    fixed by the version), so it is encoded once with zeros to learn where the
    data starts, then again with the real offsets.
    """
    for var in variables:
        if len(var.dim_ids) != len(var.shape):
            raise ValueError(f"variable {var.name}: {len(var.dim_ids)} dimensions for shape {list(var.shape)}")
        for dim_id, length in zip(var.dim_ids, var.shape, strict=True):
            if dims[dim_id].length != length:
                raise ValueError(f"variable {var.name}: dimension {dims[dim_id].name} is not {length} long")
        if version != 5 and var.vsize > CDF2_MAX_VSIZE:
            raise ValueError(f"variable {var.name}: {var.nbytes} bytes need CDF-5")
    header_size = len(encode_header(version, dims, attrs, variables, [0] * len(variables)))
    begins: list[int] = []
    position = header_size
    for var in variables:
        begins.append(position)
        position += var.vsize
    if version == 1 and begins and begins[-1] > CDF1_MAX_OFFSET:
        raise ValueError("the data does not fit the 2 GiB offsets of CDF-1")
    header = encode_header(version, dims, attrs, variables, begins)
    assert len(header) == header_size
    return Layout(version, header, tuple(variables), tuple(begins), position)
