"""NetCDF4 files: xarray and netCDF-C conventions survive the scan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr

from refmount.scan import scan_hdf5
from tests.support.h5matrix import make_netcdf
from tests.support.scan_fixtures import open_refs


@pytest.fixture(scope="module")
def nc_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_netcdf(tmp_path_factory.mktemp("nc"))


@pytest.fixture(scope="module")
def nc_refs(nc_path: Path) -> dict:
    result = scan_hdf5(str(nc_path))
    assert not result.report.problems
    return result.refs


def open_zarr(refs: dict, group: str | None = None) -> xr.Dataset:
    fs = fsspec.filesystem("reference", fo=refs)
    return xr.open_zarr(fs.get_mapper(group or ""), consolidated=False, zarr_format=2)


@pytest.mark.parametrize("group", [None, "forecast"])
def test_xarray_sees_same_dims_and_values(nc_path: Path, nc_refs: dict, group: str | None) -> None:
    expected = xr.open_dataset(nc_path, engine="netcdf4", group=group)
    actual = open_zarr(nc_refs, group)
    assert set(actual.data_vars) == set(expected.data_vars)
    for name, var in expected.variables.items():
        assert actual[name].dims == var.dims, name
        np.testing.assert_array_equal(actual[name].values, var.values, err_msg=name)
        assert {k: v for k, v in actual[name].attrs.items()} .keys() >= {k for k in var.attrs if k != "_FillValue"}


def test_dimension_without_variable_is_not_an_array(nc_refs: dict) -> None:
    refs = nc_refs["refs"]
    assert "nv/.zarray" not in refs
    assert json.loads(refs["lat_bnds/.zattrs"])["_ARRAY_DIMENSIONS"] == ["lat", "nv"]
    assert json.loads(refs["forecast/precip/.zattrs"])["_ARRAY_DIMENSIONS"] == ["step", "lat"]


def test_netcdf_internals_are_dropped_and_fill_value_is_used(nc_refs: dict) -> None:
    refs = nc_refs["refs"]
    root = json.loads(refs[".zattrs"])
    assert root == {"title": "refmount netcdf test"}
    temp_meta = json.loads(refs["temp/.zarray"])
    assert temp_meta["fill_value"] == -999.0
    assert temp_meta["filters"] == [{"id": "shuffle", "elementsize": 4}] and temp_meta["compressor"]["id"] == "zlib"
    temp_attrs = json.loads(refs["temp/.zattrs"])
    assert "_FillValue" not in temp_attrs and "_Netcdf4Dimid" not in temp_attrs
    assert temp_attrs["scale_note"] == [1.0, 2.0]
    assert json.loads(refs["forecast/precip/.zarray"])["fill_value"] == "NaN"
    assert open_refs(nc_refs)["station"][...].tolist() == [f"st\u00e4tion-{i}" for i in range(5)]


def test_masked_value_and_unwritten_rows_read_as_missing(nc_refs: dict) -> None:
    ds = open_zarr(nc_refs)
    assert np.isnan(ds["temp"].values[1, 2, 3])
    precip = open_zarr(nc_refs, "forecast")["precip"].values
    assert np.isnan(precip[2:]).all() and not np.isnan(precip[:2]).any()


def test_ncdump_reads_named_dimensions(nc_refs: dict, tmp_path: Path) -> None:
    """netCDF-C's Zarr reader sees the same dimensions through a materialised store.

    netCDF-C 4.9.0 (Debian 12) crashes on vlen-utf8 arrays, rejects chunks larger
    than the shape (``time``: unlimited dimension, chunk 512 > 3) and wants each
    dimension declared in the group using it, so those arrays are left out here.
    """
    fs = fsspec.filesystem("reference", fo=nc_refs)
    store = tmp_path / "store.zarr"
    for key in fs.find(""):
        if key.startswith(("forecast", "station", "time/")):
            continue  # netCDF-C pure-zarr mode wants dims defined in the group that uses them
        target = store / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat(key))
    out = subprocess.run(["ncdump", "-h", f"file://{store}#mode=zarr,file"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    header = out.stdout
    for dim in ("time = 3", "lat = 5", "lon = 8", "nv = 2"):
        assert dim in header, header
    assert "float temp(time, lat, lon)" in header
