"""Mapping HDF5 datatypes (as h5py presents them) to Zarr v2 dtypes and fill values.

Pure functions only: they decide how bytes that already sit in an HDF5 file
must be *described* so that a Zarr v2 reader decodes them to the same
values h5py would return. Nothing here reads a file.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

#: JSON-compatible value as it appears in .zarray / .zattrs.
JSON = Any


class UnrepresentableDtype(ValueError):
    """The HDF5 datatype has no Zarr v2 description (reason in the message)."""


@dataclass(frozen=True, slots=True)
class DtypeKind:
    """How a dataset's values can be carried.

    ``fixed``: the stored bytes are the numpy layout of ``dtype``, so chunks
    can be referenced in place. ``vlen-utf8`` / ``vlen-bytes``: variable
    length strings live in the global heap, so their values must be read and
    inlined with the matching numcodecs object codec.
    """

    kind: str  # "fixed" | "vlen-utf8" | "vlen-bytes"
    dtype: np.dtype


def classify_dtype(dt: np.dtype) -> DtypeKind:
    """Say how values of ``dt`` can be represented, or raise UnrepresentableDtype."""
    if h5py.check_ref_dtype(dt) is not None:
        kind = "region" if h5py.check_ref_dtype(dt) is h5py.RegionReference else "object"
        raise UnrepresentableDtype(f"{kind} references have no Zarr equivalent")
    info = h5py.check_string_dtype(dt)
    if info is not None and info.length is None:
        return DtypeKind("vlen-utf8" if info.encoding == "utf-8" else "vlen-bytes", dt)
    if h5py.check_vlen_dtype(dt) is not None:
        raise UnrepresentableDtype("variable-length sequences have no Zarr v2 fixed-size equivalent")
    if dt.kind == "O":
        raise UnrepresentableDtype(f"object datatype {dt!r} has no Zarr equivalent")
    if dt.subdtype is not None:
        raise UnrepresentableDtype(f"HDF5 array datatype {dt.str}{dt.shape} as a dataset element")
    if dt.names is not None:
        _check_fields(dt)
    return DtypeKind("fixed", dt)


def _check_fields(dt: np.dtype) -> None:
    """Reject compound types that hold heap objects (vlen, references) in a field."""
    fields: Mapping[str, Any] = dt.fields or {}
    for name in dt.names or ():
        field = fields[name][0]
        base = field.subdtype[0] if field.subdtype else field
        if base.kind == "O":
            raise UnrepresentableDtype(f"compound field {name!r} holds variable-length or reference data")
        if base.names is not None:
            _check_fields(base)


def zarr_dtype(dt: np.dtype) -> JSON:
    """Zarr v2 ``dtype`` for a fixed-size numpy dtype.

    Structured dtypes become lists of ``[name, type]`` (``[name, type, shape]``
    for array fields, nested lists for nested compounds). Byte order is kept
    as stored, which is why this never normalises to native order.
    """
    if dt.names is None:
        return dt.str
    if not _is_packed(dt):
        raise UnrepresentableDtype("compound type with padding between fields")
    out: list[JSON] = []
    fields: Mapping[str, Any] = dt.fields or {}
    for name in dt.names:
        field = fields[name][0]
        if field.subdtype is not None:
            base, shape = field.subdtype
            out.append([name, zarr_dtype(base), list(shape)])
        else:
            out.append([name, zarr_dtype(field)])
    return out


def _is_packed(dt: np.dtype) -> bool:
    """True when fields are laid out back to back, as Zarr's list form implies."""
    offset = 0
    fields: Mapping[str, Any] = dt.fields or {}
    for name in dt.names or ():
        field, field_offset = fields[name][:2]
        if field_offset != offset:
            return False
        offset += field.itemsize
    return offset == dt.itemsize


def encode_float(value: float) -> JSON:
    """Float as Zarr v2 writes it: numbers, or the strings NaN / Infinity / -Infinity."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def encode_fill_value(value: Any, dt: np.dtype) -> JSON:
    """Zarr v2 ``fill_value`` for ``value`` of dtype ``dt``.

    Follows the encodings zarr-python reads back exactly: base64 for bytes,
    structured and opaque values; [re, im] for complex; the special float
    strings for non-finite numbers. ``None`` stays ``null``.
    """
    if value is None:
        return None
    arr = np.asarray(value)
    if dt.names is not None or dt.kind == "V":
        raw = np.array(value, dtype=dt).tobytes() if arr.dtype != dt else arr.tobytes()
        return base64.standard_b64encode(raw).decode("ascii")
    if dt.kind == "S":
        raw = arr.astype(dt).tobytes()
        return base64.standard_b64encode(raw).decode("ascii")
    if dt.kind == "U":
        return str(arr.astype(dt).item())
    if dt.kind == "b":
        return bool(arr.item())
    if dt.kind in "iu":
        return int(arr.item())
    if dt.kind == "f":
        return encode_float(arr.item())
    if dt.kind == "c":
        c = complex(arr.item())
        return [encode_float(c.real), encode_float(c.imag)]
    if dt.kind in "mM":
        return int(arr.view("i8").item())
    raise UnrepresentableDtype(f"no fill value encoding for dtype {dt!r}")


