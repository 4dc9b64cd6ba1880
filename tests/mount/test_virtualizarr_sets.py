"""The three stores VirtualiZarr writes one file's virtual dataset to mount and read as the file: kerchunk JSON,
kerchunk Parquet (fsspec's layout) and an Icechunk repository (its recommended store).

The README says VirtualiZarr sets "work as they are"; this holds it to that for each of its writers
(the 0-d ``crs/`` key of its JSON has its own tests in test_zarr3_mount.py and test_scalar_chunk_keys.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr

from tests.support.mounting import mounted

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    root = tmp_path_factory.mktemp("virtualizarr")
    path = root / "model.nc"
    xr.Dataset({"t": (("y", "x"), np.arange(12.0).reshape(3, 4) * 1.5, {"units": "K"})},
               coords={"x": np.arange(4.0)}).to_netcdf(
        path, engine="netcdf4", encoding={"t": {"zlib": True, "chunksizes": (1, 4)}})
    sets = {"json": root / "model.json", "parquet": root / "model.parq", "icechunk": root / "repo"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VirtualiZarr's and icechunk's notes on formats and local storage
        vds = open_virtual_dataset(f"file://{path}", parser=HDFParser(),
                                   registry=ObjectStoreRegistry({"file://": LocalStore()}))
        vds.vz.to_kerchunk(str(sets["json"]), format="json")
        vds.vz.to_kerchunk(str(sets["parquet"]), format="parquet")
        config = icechunk.RepositoryConfig.default()
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(f"file://{root}/", icechunk.local_filesystem_store(str(root))))
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(sets["icechunk"])), config=config)
        session = repo.writable_session("main")
        vds.vz.to_icechunk(session.store)
        session.commit("model.nc, virtual")
    return path, sets


@pytest.mark.parametrize("kind", ["json", "parquet", "icechunk"])
def test_each_store_virtualizarr_writes_mounts_and_reads_as_the_file(written, kind, tmp_path):
    path, sets = written
    with xr.open_dataset(path, engine="netcdf4") as original:
        expected = original.load()
    with mounted(sets[kind], tmp_path / "mnt") as mount:
        zarr_format = 3 if kind == "icechunk" else 2  # a repository is Zarr v3 only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's notes on v3 codecs without a specification
            actual = xr.open_zarr(mount.path, consolidated=False, zarr_format=zarr_format).load()
        chunk = "t/c/1/0" if kind == "icechunk" else "t/1.0"
        assert (mount.path / chunk).stat().st_size > 0
    xr.testing.assert_equal(actual, expected)
