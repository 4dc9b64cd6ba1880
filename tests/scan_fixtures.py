"""Helpers for the scan tests: reading references back, and a Range-capable HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import zarr


def open_refs(refs: dict[str, Any]) -> zarr.Group:
    """Open a reference set the way a reader would: zarr over fsspec's ReferenceFileSystem."""
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
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks)]
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
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
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


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HEAD, ETag and single-range GET support; counts bytes sent."""

    counter: dict[str, int]

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _target(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None

    def _headers(self, path: Path, status: int, start: int, end: int) -> None:
        size = path.stat().st_size
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{size:x}-{int(path.stat().st_mtime_ns):x}"')
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()

    def do_HEAD(self) -> None:
        path = self._target()
        if path is None:
            self.send_error(404)
            return
        self._headers(path, 200, 0, path.stat().st_size)

    def do_GET(self) -> None:
        path = self._target()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size, 200
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            first, _, last = spec[6:].partition("-")
            start = int(first) if first else max(0, size - int(last))
            end = min(size, int(last) + 1) if (first and last) else size
            status = 206
        self._headers(path, status, start, end)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        self.counter["requests"] += 1
        self.counter["bytes"] += len(data)
        self.wfile.write(data)


@contextmanager
def http_server(directory: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve ``directory`` on 127.0.0.1 (ephemeral port); yield base URL and byte counter."""
    counter = {"requests": 0, "bytes": 0}
    handler = type("Handler", (_RangeHandler,), {"counter": counter})

    def make(*args: Any, **kwargs: Any) -> _RangeHandler:
        return handler(*args, directory=os.fspath(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
