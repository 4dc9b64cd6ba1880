"""Decoding a whole array from a scanned reference set, the way a Zarr v2 reader would.

Concatenation needs the values of a few small arrays of each file: the
coordinate along the concatenation dimension (to order the files and to be
written inline), the arrays without that dimension (to check that every file
has the same ones), and arrays whose chunks do not line up across files (to
be written inline). Reading them from the references just made, rather than
reopening the file with h5py, costs only the ranged reads of those chunks
and checks the references themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numcodecs
import numpy as np

#: Reads ``length`` bytes at ``offset`` of the source a reference points to.
RangeReader = Callable[[int, int], bytes]


class UndecodableArray(ValueError):
    """An array's references cannot be decoded here (reason in the message)."""


def array_meta(refs: Mapping[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``.zarray`` and ``.zattrs`` documents of the array at ``path``."""
    meta = json.loads(refs[f"{path}/.zarray"])
    attrs_text = refs.get(f"{path}/.zattrs")
    return meta, (json.loads(attrs_text) if attrs_text else {})


def numpy_dtype(zarr_dtype: Any) -> np.dtype:
    """A Zarr v2 JSON dtype (string or structured field list) as a numpy dtype."""
    def descr(d: Any) -> Any:
        if isinstance(d, str):
            return d
        return [(f[0], descr(f[1]), tuple(f[2])) if len(f) == 3 else (f[0], descr(f[1])) for f in d]
    dtype: np.dtype = np.dtype(descr(zarr_dtype))
    return dtype


def fill_array(meta: Mapping[str, Any], dtype: np.dtype) -> np.ndarray:
    """An array of the declared shape holding the fill value (zeros when there is none)."""
    shape = tuple(meta["shape"])
    fill = meta.get("fill_value")
    if dtype.kind == "O":
        out = np.empty(shape, dtype=object)
        out[...] = fill if fill is not None else ""
        return out
    if fill is None or dtype.names is not None:
        return np.zeros(shape, dtype=dtype)
    if isinstance(fill, str) and dtype.kind in "fc":
        fill = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(fill, fill)
    if isinstance(fill, str):  # base64 of the raw value, for dtypes JSON cannot carry
        return np.full(shape, np.frombuffer(base64.standard_b64decode(fill), dtype=dtype)[0], dtype=dtype)
    return np.full(shape, fill, dtype=dtype)


def chunk_bytes(value: Any, read: RangeReader) -> bytes:
    """The stored bytes of one chunk reference: inline (base64 or text) or a byte range of the source."""
    if isinstance(value, str):
        return base64.standard_b64decode(value[7:]) if value.startswith("base64:") else value.encode()
    if isinstance(value, list) and len(value) == 3:
        return read(int(value[1]), int(value[2]))
    raise UndecodableArray(f"unsupported chunk reference {value!r:.80}")


def decode_chunk(data: bytes, meta: Mapping[str, Any], dtype: np.dtype) -> np.ndarray:
    """Undo the compressor and then the filters (last first), giving one full chunk."""
    decoded: Any = data
    if meta.get("compressor"):
        decoded = numcodecs.get_codec(meta["compressor"]).decode(decoded)
    for config in reversed(meta.get("filters") or []):
        decoded = numcodecs.get_codec(config).decode(decoded)
    chunks = tuple(meta["chunks"])
    order = meta.get("order", "C")
    if isinstance(decoded, np.ndarray) and decoded.dtype.kind == "O":
        return decoded.reshape(chunks, order=order)
    return np.frombuffer(bytes(decoded), dtype=dtype).reshape(chunks, order=order)


def read_array(refs: Mapping[str, Any], path: str, read: RangeReader) -> np.ndarray:
    """Every value of the array at ``path``; unwritten chunks read as the fill value."""
    meta, _ = array_meta(refs, path)
    dtype = numpy_dtype(meta["dtype"])
    out = fill_array(meta, dtype)
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
    separator = meta.get("dimension_separator") or "."
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    for index in np.ndindex(*grid):
        key = f"{path}/" + (separator.join(str(i) for i in index) if index else "0")
        if key not in refs:
            continue
        try:
            chunk = decode_chunk(chunk_bytes(refs[key], read), meta, dtype)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UndecodableArray(f"{key}: {exc}") from exc
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True))
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def values_digest(values: np.ndarray) -> str:
    """A digest of an array's dtype, shape and values, to compare arrays of different files cheaply."""
    h = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    if values.dtype.kind == "O":
        for item in values.ravel():
            h.update(repr(item).encode() + b"\x00")
    else:
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def array_nbytes(meta: Mapping[str, Any]) -> int:
    """Decoded size of an array, from its metadata (object dtypes count 8 bytes a value)."""
    return int(math.prod(meta["shape"])) * numpy_dtype(meta["dtype"]).itemsize
