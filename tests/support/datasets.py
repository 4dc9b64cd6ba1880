"""Small real HDF5 datasets and their reference sets, shared by the mount tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refmount.scan.gcpause import cyclic_gc_paused


def write_hdf5(path: Path) -> dict[str, np.ndarray]:
    """A file exercising the read path: compressed chunks, edge chunks, contiguous data, a group."""
    rng = np.random.default_rng(7)
    arrays = {
        "temp": rng.normal(280, 5, (20, 33, 47)).astype("<f4"),
        "count": np.arange(5000, dtype=">i8").reshape(50, 100),
        "lat": np.linspace(-90, 90, 33).astype("f8"),
        "grp/flag": (rng.random((64, 64)) > 0.5),
        "time": np.arange(20, dtype="i4"),
        "lon": np.linspace(0, 360, 47, endpoint=False),
        "y": np.arange(50, dtype="i2"),
        "x": np.arange(100, dtype="i2"),
    }
    with h5py.File(path, "w") as f:
        f.create_dataset("temp", data=arrays["temp"], chunks=(5, 16, 16), compression="gzip", shuffle=True)
        f.create_dataset("count", data=arrays["count"])  # contiguous
        f.create_dataset("lat", data=arrays["lat"], chunks=(11,))
        f.create_dataset("grp/flag", data=arrays["grp/flag"], chunks=(32, 32), compression="gzip")
        for name in ("time", "lon", "y", "x"):
            f.create_dataset(name, data=arrays[name])
        for name in ("time", "lat", "lon", "y", "x"):
            f[name].make_scale(name)
        for axis, name in enumerate(("time", "lat", "lon")):
            f["temp"].dims[axis].attach_scale(f[name])
        for axis, name in enumerate(("y", "x")):
            f["count"].dims[axis].attach_scale(f[name])
        f["temp"].attrs["units"] = "K"
        f["temp"].attrs["long_name"] = "température"  # non-ASCII metadata
        f.attrs["title"] = "mount test"
    return arrays


def kerchunk_translate(source: Any, url: str | None = None, inline_threshold: int = 100) -> dict:
    """kerchunk's SingleHdf5ToZarr references of ``source`` (a path or an open file).

    kerchunk calls zarr, which waits on its own event-loop thread, from inside
    h5py's ``visititems`` (h5py's global lock held); a cyclic collection on
    that thread freeing an h5py object would wait for the lock for good. The
    collector is paused for the call, as refmount's own remote scans do.
    """
    from kerchunk.hdf import SingleHdf5ToZarr

    with cyclic_gc_paused():
        return SingleHdf5ToZarr(source, url, inline_threshold=inline_threshold).translate()


def kerchunk_references(path: Path, url: str) -> dict:
    """References made by kerchunk (the reference implementation), pointing at ``url``."""
    with open(path, "rb") as handle:
        refs = kerchunk_translate(handle, url, inline_threshold=0)
    return json.loads(json.dumps(refs))


def reference_lengths(refs: dict) -> dict[str, int]:
    """Expected file size of every key, computed independently of refmount."""
    import base64

    sizes = {}
    for key, value in refs["refs"].items():
        if isinstance(value, list):
            sizes[key] = value[2]
        elif isinstance(value, str) and value.startswith("base64:"):
            sizes[key] = len(base64.b64decode(value[7:]))
        elif isinstance(value, str):
            sizes[key] = len(value.encode())
        else:
            sizes[key] = len(json.dumps(value, separators=(",", ":")).encode())  # as fsspec serves it
    return sizes
