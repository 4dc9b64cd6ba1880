"""``refmount demo``: the whole path on this machine, end to end, with nothing to configure.

A throwaway SeaweedFS S3 server starts on loopback; a small HDF5 file with
named dimensions (as NetCDF4 writes them) is generated and uploaded; the
scanner makes its reference set and stores it in the bucket beside the data;
``refmount mount`` mounts it as a user would; ``ls -lR`` and ``md5sum`` read
the tree and xarray opens the mountpoint as a plain Zarr store; the values
are compared with h5py reading the original; finally everything is unmounted
and stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from refmount.devtools.localstore import LocalS3
from refmount.scan.hdf5 import scan_hdf5


def write_sample(path: Path) -> dict[str, np.ndarray]:
    """A small climate-like file: temperature on (time, lat, lon), compressed and chunked."""
    rng = np.random.default_rng(42)
    time = np.arange(24, dtype="int32")
    lat = np.linspace(-60, 60, 40, dtype="float32")
    lon = np.linspace(0, 357.5, 72, dtype="float32")
    temp = (15 + 10 * np.cos(np.deg2rad(lat))[None, :, None] + rng.normal(0, 1, (24, 40, 72))).astype("float32")
    with h5py.File(path, "w") as f:
        for name, values in (("time", time), ("lat", lat), ("lon", lon)):
            f[name] = values
            f[name].make_scale(name)
        f["time"].attrs["units"] = "hours since 2020-01-01"
        f["lat"].attrs["units"] = "degrees_north"
        f["lon"].attrs["units"] = "degrees_east"
        t2m = f.create_dataset("t2m", data=temp, chunks=(6, 20, 36), compression="gzip", shuffle=True, fillvalue=-9999.0)
        t2m.attrs["units"] = "degC"
        t2m.attrs["long_name"] = "2 metre temperature"
        for axis, name in enumerate(("time", "lat", "lon")):
            t2m.dims[axis].attach_scale(f[name])
        f.attrs["title"] = "refmount demo dataset"
    return {"t2m": temp, "lat": lat, "lon": lon, "time": time}


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}):\n{output}")
    return output


def run_demo(workdir: str | None = None) -> int:
    """Run the demo in ``workdir`` (kept) or a temporary directory (removed); 0 when all values match."""
    base = Path(workdir or tempfile.mkdtemp(prefix="refmount-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    mountpoint = base / "mnt"
    mountpoint.mkdir(exist_ok=True)
    refmount = [sys.executable, "-m", "refmount"]
    _step("starting a local S3 object store (SeaweedFS) on 127.0.0.1")
    with LocalS3(base / "s3") as store:
        print(f"endpoint {store.endpoint_url}")
        env = {**os.environ, **store.env()}
        _step("writing a sample HDF5/NetCDF4-style file to s3://demo/data/sample.h5")
        sample = base / "sample.h5"
        expected = write_sample(sample)
        store.create_bucket("demo")
        store.upload(sample, "s3://demo/data/sample.h5")

        _step("scanning it into a reference set, stored as s3://demo/refs/sample.json")
        result = scan_hdf5("s3://demo/data/sample.h5", storage_options=store.storage_options())
        store.put("s3://demo/refs/sample.json", json.dumps(result.refs).encode())
        print(f"{len(result.refs['refs'])} keys")

        _step("mounting it")
        _run([*refmount, "mount", "s3://demo/refs/sample.json", str(mountpoint),
              "-o", f"endpoint_url={store.endpoint_url}"], env=env)
        try:
            _step("listing and reading with POSIX tools")
            print(_run(["ls", "-lR", str(mountpoint)]))
            print(_run(["md5sum", str(mountpoint / "t2m" / "0.0.0"), str(mountpoint / ".zattrs")]))
            _step("opening the mountpoint with xarray, as a plain local Zarr store")
            ok = _compare_with_xarray(mountpoint, expected)
        finally:
            _step("unmounting")
            _run([*refmount, "umount", str(mountpoint)])
    if workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    print("\nrefmount demo: " + ("all values equal the original file" if ok else "VALUES DIFFER"))
    return 0 if ok else 1


def _compare_with_xarray(mountpoint: Path, expected: dict[str, np.ndarray]) -> bool:
    """Open the mountpoint with xarray (zarr alone when xarray is missing) and compare with ``expected``."""
    # Imported here on purpose: xarray is optional (zarr is the fallback) and takes a few tenths of a second to
    # import, which every ``refmount`` command would pay since the CLI imports this module.
    try:
        import xarray
    except ImportError:
        import zarr

        group = zarr.open_group(str(mountpoint), mode="r")
        print(group.tree())
        arrays = dict(group.arrays())
        return all(np.array_equal(np.asarray(arrays[name]), values) for name, values in expected.items())
    dataset = xarray.open_zarr(str(mountpoint), consolidated=False, decode_times=False)
    print(dataset)
    t2m = dataset["t2m"]
    print(f"t2m mean over the mount: {float(t2m.mean()):.4f} (original {float(expected['t2m'].mean()):.4f})")
    return all(np.array_equal(dataset[name].values, values) for name, values in expected.items())
