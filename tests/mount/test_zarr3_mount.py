"""Zarr v3 readers read a mounted v2 reference set under ``-o zarr_format=3``: zarr-python 3 and tensorstore.

The HDF5 file has one variable per codec (zlib, shuffle+zlib, blosc and
zstd from hdf5plugin, uncompressed), a 0-d scalar and a 1-d coordinate;
``refmount scan`` makes the reference set. zarr-python 3 opens the mount in
v3-only mode (``zarr_format=3``) in the raw and the decoded view; tensorstore
(driver ``zarr3``, file kvstore) reads every variable whose codecs are v3
standard in the raw view (zlib has no v3 standard form: it is
``numcodecs.zlib``, which only zarr-python knows) and every variable in the
decoded view, where the only codec is ``bytes``. Values are compared with
h5py's. A set VirtualiZarr writes (its 0-d chunk spelled ``crs/``) is
mounted too and read as v3.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import tensorstore as ts
import xarray as xr
import zarr

from tests.support.mounting import Mount, mounted

pytestmark = pytest.mark.fuse

NY, NX = 23, 31
CODECS = {
    "v_zlib": dict(compression="gzip", compression_opts=4),
    "v_shuffle_zlib": dict(compression="gzip", shuffle=True),
    "v_blosc": dict(**hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "v_zstd": dict(**hdf5plugin.Zstd(clevel=3)),
    "v_raw": dict(),
}
#: Variables whose raw codecs have no v3 standard form (tensorstore reads them only decoded).
NOT_V3_STANDARD = {"v_zlib", "v_shuffle_zlib"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The HDF5 file and the reference set ``refmount scan`` makes of it."""
    base = tmp_path_factory.mktemp("zarr3")
    path = base / "model.h5"
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.linspace(0.0, 300.0, NX))
        f["x"].make_scale("x")
        for offset, (name, codecs) in enumerate(CODECS.items()):
            data = (np.add.outer(np.arange(NY), np.arange(NX)) % 17 + offset).astype("<f4")  # compressible
            data[0, :3] = rng.normal(size=3)
            ds = f.create_dataset(name, data=data, chunks=(8, 16), fillvalue=np.float32(-1), **codecs)
            ds.dims[1].attach_scale(f["x"])
            ds.attrs["units"] = "K"
        f.create_dataset("counts", data=np.arange(NY * NX, dtype=">i2").reshape(NY, NX), chunks=(10, 10),
                         compression="gzip")
        f.create_dataset("scalar", data=np.float64(273.15))
        f.attrs["title"] = "zarr v3 view"
    refs = base / "model.json"
    subprocess.run([sys.executable, "-m", "refmount", "scan", str(path), "-o", str(refs), "-q"], check=True,
                   timeout=120)
    with h5py.File(path) as f:
        values = {name: f[name][()] for name in f}
    return refs, values


@pytest.fixture(scope="module", params=["raw", "decoded"])
def v3_mount(request, source, tmp_path_factory):
    mountpoint = tmp_path_factory.mktemp(f"zarr3-{request.param}") / "mnt"
    with mounted(source[0], mountpoint, ["-o", f"zarr_format=3,view={request.param}"]) as m:
        yield request.param, m


def _zarr3_group(mount: Mount) -> zarr.Group:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.* codecs are "not in the v3 specification"
        return zarr.open_group(mount.path, mode="r", zarr_format=3)


def _tensorstore(path: Path) -> np.ndarray:
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True).result()
    return np.asarray(store.read().result())


def test_zarr_python_3_in_v3_only_mode_reads_every_variable(source, v3_mount):
    _, values = source
    view, mount = v3_mount
    group = _zarr3_group(mount)
    assert group.attrs["title"] == "zarr v3 view"
    for name, expected in values.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = group[name][...]
        np.testing.assert_array_equal(got, expected, err_msg=f"{view}: {name}")
    meta = json.loads((mount.path / "v_zlib" / "zarr.json").read_text())
    assert meta["dimension_names"][1] == "x" and meta["attributes"]["units"] == "K"
    assert (mount.path / "v_zlib" / ".zarray").exists()  # v2 readers share the mount
    names = [codec["name"] for codec in meta["codecs"]]
    assert names == (["bytes"] if view == "decoded" else ["bytes", "numcodecs.zlib"])


def test_tensorstore_reads_the_v3_metadata(source, v3_mount):
    _, values = source
    view, mount = v3_mount
    readable = [name for name in values if view == "decoded" or name not in NOT_V3_STANDARD | {"counts"}]
    assert {"v_blosc", "v_zstd", "v_raw", "scalar", "x"} <= set(readable)
    for name in readable:
        np.testing.assert_array_equal(_tensorstore(mount.path / name), values[name], err_msg=f"{view}: {name}")
    if view == "raw":
        blosc = json.loads((mount.path / "v_blosc" / "zarr.json").read_text())["codecs"]
        assert [codec["name"] for codec in blosc] == ["bytes", "blosc"]


def test_a_virtualizarr_set_with_a_scalar_mounts_and_reads_as_v3(tmp_path):
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    path = tmp_path / "crs.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("crs", data=np.int32(4326))
        f.create_dataset("x", data=np.arange(4.0))
        f["x"].make_scale("x")  # VirtualiZarr gives it the attribute _FillValue: NaN, bare NaN in .zattrs
        f.create_dataset("t", data=np.arange(12.0).reshape(3, 4), chunks=(1, 4), compression="gzip")
        f["t"].dims[1].attach_scale(f["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vds = open_virtual_dataset(f"file://{path}", parser=HDFParser(),
                                   registry=ObjectStoreRegistry({"file://": LocalStore()}))
        doc = vds.vz.to_kerchunk(format="dict")
    assert "crs/" in doc["refs"]
    refs = tmp_path / "crs.json"
    refs.write_text(json.dumps(doc))
    with mounted(refs, tmp_path / "mnt", ["-o", "zarr_format=3"]) as mount:
        assert (mount.path / "crs" / "0").stat().st_size == 4
        group = _zarr3_group(mount)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert group["crs"][()] == 4326
            np.testing.assert_array_equal(group["t"][...], np.arange(12.0).reshape(3, 4))
        assert _tensorstore(mount.path / "crs")[()] == 4326
        np.testing.assert_array_equal(_tensorstore(mount.path / "x"), np.arange(4.0))  # strict JSON: no bare NaN
        fill = json.loads((mount.path / "x" / "zarr.json").read_text())["attributes"]["_FillValue"]
        assert fill == "AAAAAAAA+H8="  # NaN as xarray keeps a float _FillValue in v3: base64 of <f8
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(mount.path, zarr_format=3, consolidated=False)
            np.testing.assert_array_equal(ds["t"].values, np.arange(12.0).reshape(3, 4))
            assert ds["t"].dims[1] == "x" and int(ds["crs"]) == 4326
