"""Helpers for the scan tests: reading references back and comparing arrays.

Remote scans use the shared HTTP server, :mod:`tests.support.http_range_server`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import zarr


def open_refs(refs: dict[str, Any], remote_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open a reference set the way a reader would: zarr over fsspec's ReferenceFileSystem."""
    if remote_options is not None:  # an asynchronous target: let zarr build the store from a URL
        protocol = refs.get("templates", {}).get("u", "").split("://")[0]
        options = {"fo": refs, "remote_protocol": protocol, "remote_options": {**remote_options, "asynchronous": True},
                   "asynchronous": True}
        return zarr.open_group("reference://", storage_options=options, mode="r", zarr_format=2)
    fs = fsspec.filesystem("reference", fo=refs)
    return zarr.open_group(fs.get_mapper(""), mode="r", zarr_format=2)


def decode_manually(refs: dict[str, Any], name: str) -> np.ndarray:
    """Decode an array from its references with numcodecs alone, per the Zarr v2 spec.

    For dtypes the spec allows but zarr-python 3 does not read (nested
    structured dtypes, subarray fields).
    """
    import json

    import numcodecs

    fs = fsspec.filesystem("reference", fo=refs)
    meta = json.loads(fs.cat(f"{name}/.zarray"))
    dtype = np.dtype(_descr(meta["dtype"]))
    shape, chunks = meta["shape"], meta["chunks"]
    out = np.zeros(shape, dtype=dtype)
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks, strict=False)]
    for index in np.ndindex(*[len(g) for g in grid]):
        key = f"{name}/" + (".".join(map(str, index)) if index else "0")
        try:
            data = fs.cat(key)
        except FileNotFoundError:
            continue
        if meta["compressor"]:
            data = numcodecs.get_codec(meta["compressor"]).decode(data)
        for cfg in reversed(meta["filters"] or []):
            data = numcodecs.get_codec(cfg).decode(data)
        chunk = np.frombuffer(bytes(data), dtype=dtype).reshape(chunks)
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=False))
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def _descr(dtype: Any) -> Any:
    """Zarr v2 JSON dtype to a numpy dtype description."""
    if isinstance(dtype, str):
        return dtype
    return [(f[0], _descr(f[1]), tuple(f[2])) if len(f) == 3 else (f[0], _descr(f[1])) for f in dtype]


def h5_datasets(path: Path) -> dict[str, h5py.Dataset]:
    """Every dataset reachable by hard links, by HDF5 path (without the leading '/')."""
    out: dict[str, Any] = {}
    f = h5py.File(path, "r")
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def h5_values(ds: h5py.Dataset) -> np.ndarray:
    """What h5py reads, with strings decoded the way the Zarr object codecs return them."""
    info = h5py.check_string_dtype(ds.dtype)
    if info is not None and info.length is None:
        values = ds.asstr()[()] if info.encoding == "utf-8" else ds[()]
        return np.asarray(values, dtype=object)
    return np.asarray(ds[()])


def assert_same_array(actual: Any, expected: np.ndarray, label: str) -> None:
    """Values equal (NaN equal to NaN); structured arrays compared field by field bytes."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind == "O" or actual.dtype.kind in "OT":
        assert [_text(v) for v in actual.ravel()] == [_text(v) for v in expected.ravel()], label
    elif expected.dtype.names is not None:
        for name in expected.dtype.names:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{label}.{name}")
    else:
        assert actual.dtype == expected.dtype, f"{label}: dtype {actual.dtype} != {expected.dtype}"
        np.testing.assert_array_equal(actual, expected, err_msg=label)


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else str(v)
