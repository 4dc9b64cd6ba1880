"""HDF5 attributes to Zarr ``.zattrs`` JSON.

Pure conversion: numpy scalars and arrays, bytes and strings become plain
JSON; non-finite floats become the strings Zarr v2 uses ("NaN", "Infinity",
"-Infinity") so that the output is strict JSON. Attributes that only exist
to implement HDF5 dimension scales or netCDF-4 bookkeeping are dropped:
Zarr readers express the same facts with ``_ARRAY_DIMENSIONS``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import h5py
import numpy as np

from refmount.scan.dtypes import encode_float

#: Attributes that describe HDF5/netCDF-4 internals, not data.
INTERNAL_ATTRS: frozenset[str] = frozenset(
    {
        "DIMENSION_LIST",
        "REFERENCE_LIST",
        "CLASS",
        "NAME",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
        "_NCProperties",
        "_ARRAY_DIMENSIONS",
    }
)


class UnrepresentableAttribute(ValueError):
    """An attribute value with no JSON form (reason in the message)."""


def decode_bytes(raw: bytes) -> str:
    """Bytes attribute to text: UTF-8 when valid, else Latin-1 (lossless byte->char)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def to_json(value: Any) -> Any:
    """Convert one attribute value (as h5py returns it) to JSON-compatible data.

    Arrays with a single element become scalars, as netCDF presents them;
    longer arrays become (nested) lists.
    """
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (h5py.Reference, h5py.RegionReference)):
        raise UnrepresentableAttribute("object or region reference")
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O" and any(
            isinstance(v, (h5py.Reference, h5py.RegionReference)) for v in value.flat
        ):
            raise UnrepresentableAttribute("array of object or region references")
        if value.size == 1 and value.dtype.names is None:
            return to_json(value.reshape(()).item() if value.dtype.kind != "O" else value.flat[0])
        if value.dtype.names is not None and value.ndim == 0:
            return to_json(value[()])
        return [to_json(v) for v in (value.tolist() if value.dtype.kind in "biufc" else value)]
    if isinstance(value, np.void):
        if value.dtype.names is not None:
            return {name: to_json(value[name]) for name in value.dtype.names}
        return "base64:" + base64.standard_b64encode(value.tobytes()).decode("ascii")
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, bytes):
        return decode_bytes(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, complex):
        return [encode_float(value.real), encode_float(value.imag)]
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    raise UnrepresentableAttribute(f"value of type {type(value).__name__}")


def convert_attrs(
    attrs: h5py.AttributeManager, drop: Iterable[str] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Convert all attributes of one object.

    Returns the JSON dict and a list of ``(attribute name, reason)`` for
    attributes that were left out because they cannot be represented, so the
    caller can report them instead of failing the whole object.
    """
    dropped = INTERNAL_ATTRS | frozenset(drop)
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name in attrs.keys():
        if name in dropped:
            continue
        try:
            out[name] = to_json(attrs[name])
        except UnrepresentableAttribute as exc:
            problems.append((name, str(exc)))
        except (OSError, TypeError, ValueError) as exc:  # h5py cannot read the type
            problems.append((name, f"unreadable: {exc}"))
    return out, problems
