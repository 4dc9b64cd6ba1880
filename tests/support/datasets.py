"""Small real HDF5 datasets and their reference sets, shared by the mount tests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np


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


def kerchunk_references(path: Path, url: str) -> dict:
    """References made by kerchunk (the reference implementation), pointing at ``url``."""
    from kerchunk.hdf import SingleHdf5ToZarr

    with open(path, "rb") as handle:
        refs = SingleHdf5ToZarr(handle, url, inline_threshold=0).translate()
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
