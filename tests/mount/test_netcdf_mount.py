"""Every netCDF tool reads the virtual netCDF classic files of ``-o view=netcdf`` as it reads the originals.

Test files: ``model.nc``, written here by netCDF4-python with what classic
netCDF lacks (int64, unsigned and enum integers, a char array, variable-length
strings, an unlimited ``time`` whose chunk (512) exceeds its length, a scalar,
a packed int16 with ``scale_factor``/``add_offset``/``_FillValue``, a
compressed variable with unwritten chunks, a subgroup, a compound variable),
and three files real producers wrote that ship with xarray and scipy (their
test data), converted to compressed NetCDF4 by ``nccopy``. Each is scanned
with ``refmount scan``'s library, and one collection mount serves them all.

Checked with the real tools: ``ncdump`` of every variable equals ``ncdump``
of the original; ``nccopy`` of the virtual file, xarray (netcdf4 engine; the
scipy engine on a file forced to CDF-2), a compiled Fortran program, ``cdo``,
``ncks -d`` and ``gdalinfo`` (GDAL 3.6 reads CDF-2, not CDF-5) agree with the
original; what is left out is listed in the file, the log and ``refmount
inspect``. The decoded (NCZarr) view no longer crashes ``ncdump`` on
scalars, char arrays and the oversized ``time`` chunk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import scipy
import xarray as xr

from refmount.scan import scan_hdf5
from tests.support.mounting import Mount, mounted

pytestmark = pytest.mark.fuse

NT, NY, NX = 6, 5, 7
PRODUCED = {  # test data shipped with xarray and scipy, written by their producers
    "bears": Path(xr.__file__).parent / "tests" / "data" / "bears.nc",
    "example1": Path(xr.__file__).parent / "tests" / "data" / "example_1.nc",
    "masked": Path(scipy.__file__).parent / "io" / "tests" / "data" / "example_3_maskedvals.nc",
}
LEFT_OUT = {"pairs"}  # compound: classic netCDF has no such type

FORTRAN = """
program checksum
  use netcdf
  implicit none
  integer :: ncid, varid, status
  real :: tas(%(nx)d, %(ny)d, %(nt)d)
  character(len=512) :: path
  call get_command_argument(1, path)
  status = nf90_open(trim(path), nf90_nowrite, ncid)
  if (status /= nf90_noerr) then
    print *, trim(nf90_strerror(status))
    stop 1
  end if
  status = nf90_inq_varid(ncid, "tas", varid)
  status = nf90_get_var(ncid, varid, tas)
  if (status /= nf90_noerr) then
    print *, trim(nf90_strerror(status))
    stop 2
  end if
  print '(ES24.16)', sum(dble(tas))
  print '(4F14.5)', tas(1, 1, 1), tas(2, 1, 1), tas(%(nx)d, %(ny)d, %(nt)d), tas(3, 2, 4)
  status = nf90_close(ncid)
end program checksum
"""


def write_model(path: Path) -> None:
    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time", None)
        f.createDimension("lat", NY)
        f.createDimension("lon", NX)
        f.createDimension("nchar", 6)
        t = f.createVariable("time", "f8", ("time",))
        t[:] = np.arange(NT) * 6.0
        t.units, t.standard_name = "hours since 2000-01-01", "time"
        for name, values, units in (("lat", np.linspace(-60, 60, NY), "degrees_north"),
                                    ("lon", np.linspace(0, 300, NX), "degrees_east")):
            v = f.createVariable(name, "f4", (name,))
            v[:] = values
            v.units = units
        tas = f.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, chunksizes=(2, 3, 4),
                               fill_value=np.float32(-999))
        data = (np.arange(NT * NY * NX, dtype="f4").reshape(NT, NY, NX) / 3).astype("f4")
        data[0, 0, 0] = -999
        tas[:] = data
        tas.units, tas.valid_range = "K", np.array([-1000, 1000], "f4")
        packed = f.createVariable("packed", "i2", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                  chunksizes=(1, NY, NX), fill_value=np.int16(-32000))
        packed.set_auto_maskandscale(False)
        packed.scale_factor, packed.add_offset = np.float32(0.01), np.float32(273.15)
        raw = (np.arange(NT * NY * NX) % 2000 - 1000).astype("i2").reshape(NT, NY, NX)
        raw[1, 2, 3] = -32000
        packed[:] = raw
        sparse = f.createVariable("sparse", "f8", ("lat", "lon"), zlib=True, chunksizes=(2, 2))
        sparse[0:2, 2:4] = 1.5  # every other chunk is never written: it reads as the default fill
        f.createVariable("big", "i8", ("lat",))[:] = np.arange(NY) * 10**12
        f.createVariable("counts", "u2", ("lat", "lon"), zlib=True)[:] = np.arange(NY * NX).reshape(NY, NX)
        f.createVariable("flag", "i1", ("lon",))[:] = np.arange(NX) - 3
        f.createVariable("name", "S1", ("lat", "nchar"))[:] = netCDF4.stringtochar(
            np.array(["alpha", "b", "gamma", "", "epsil"], "S6"))
        f.createVariable("label", str, ("lat",))[:] = np.array(["one", "two", "three", "", "fünf"], object)
        scalar = f.createVariable("scalar", "i4")
        scalar[...] = 42
        scalar.note = "a scalar"
        cloud = f.createEnumType(np.uint8, "cloud_t", {"clear": 0, "cloudy": 1})
        f.createVariable("cloud", cloud, ("lat",))[:] = np.array([0, 1, 0, 1, 0], "u1")
        pair = f.createCompoundType(np.dtype([("a", "i4"), ("b", "f8")]), "pair_t")
        f.createVariable("pairs", pair, ("lat",))[:] = np.zeros(NY, pair.dtype)
        f.title, f.version, f.pi, f.levels = "refmount netcdf view test", np.int32(3), np.float32(3.14), [1, 2, 3]
        group = f.createGroup("forecast")
        lead = group.createVariable("lead", "i2", ("lat",))
        lead[:] = np.arange(NY)
        group.kind = "forecast"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Original NetCDF4 files by set name; their reference sets are in ``refs/`` beside them."""
    base = tmp_path_factory.mktemp("netcdf-view")
    originals = {"model": base / "model.nc"}
    write_model(originals["model"])
    for name, source in PRODUCED.items():
        originals[name] = base / f"{name}.nc"
        run("nccopy", "-k", "nc4", "-d", "1", str(source), str(originals[name]))
    refs = base / "refs"
    refs.mkdir()
    for name, path in originals.items():
        (refs / f"{name}.json").write_text(json.dumps(scan_hdf5(str(path), inline_threshold=0).refs))
    return originals


@pytest.fixture(scope="module")
def netcdf_mount(corpus, tmp_path_factory) -> Mount:
    refs = corpus["model"].parent / "refs"
    with mounted(refs, tmp_path_factory.mktemp("netcdf-mnt") / "mnt", ["-o", "view=netcdf"]) as m:
        yield m


def virtual(mount: Mount, name: str, group: str = "") -> str:
    return str(mount.path / name / f"{name}{'.' + group if group else ''}.nc")


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result.stdout


def variables(path: str) -> dict[str, str]:
    """Variable name -> data type name of a file (root group)."""
    with netCDF4.Dataset(path) as f:
        return {name: "string" if var.dtype is str else str(var.datatype) for name, var in f.variables.items()}


def ncdump_data(path: str, name: str) -> str:
    """What ``ncdump -v NAME`` prints as the variable's data, whitespace removed."""
    text = run("ncdump", "-v", name, path)
    body = text.split("\ndata:\n", 1)[1]
    match = re.search(rf"\n {re.escape(name)} =(.*?);\n", body, re.S)
    assert match, f"no data for {name}:\n{text[-2000:]}"
    return re.sub(r"\s+", "", match.group(1))


def string_values(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "S":
        return [v.decode("utf-8") for v in values.ravel()]
    return [str(v) for v in values.ravel()]


def test_one_file_per_group_with_its_exact_size(corpus, netcdf_mount):
    root = netcdf_mount.path
    assert sorted(os.listdir(root)) == sorted(corpus)
    assert sorted(os.listdir(root / "model")) == ["model.forecast.nc", "model.nc"]
    for name in corpus:
        path = Path(virtual(netcdf_mount, name))
        data = path.read_bytes()
        assert len(data) == path.stat().st_size and data[:3] == b"CDF"
    assert Path(virtual(netcdf_mount, "model")).read_bytes()[3] == 5  # int64 and unsigned: CDF-5
    assert Path(virtual(netcdf_mount, "bears")).read_bytes()[3] == 2


@pytest.mark.parametrize("name", sorted(["model", *PRODUCED]))
def test_ncdump_of_every_variable_equals_the_original(corpus, netcdf_mount, name):
    original, path = str(corpus[name]), virtual(netcdf_mount, name)
    shown, kinds = variables(path), variables(original)
    assert set(kinds) - set(shown) == (LEFT_OUT if name == "model" else set())
    for var in shown:
        if kinds[var] == "string":
            continue  # a string variable prints as strings; its char rows are compared below
        if "EnumType" in kinds[var]:  # references keep an enum's codes, not its names: ncdump prints the codes
            with netCDF4.Dataset(original) as want, netCDF4.Dataset(path) as got:
                np.testing.assert_array_equal(got[var][:], want[var][:])
            continue
        assert ncdump_data(path, var) == ncdump_data(original, var), var
    if name == "model":
        with netCDF4.Dataset(path) as f:
            assert list(f["label"][:]) == ["one", "two", "three", "", "fünf"]  # _Encoding: read as strings
            assert f.refmount_left_out == "pairs: compound type"
            assert f["scalar"].shape == () and int(f["scalar"][...]) == 42
        assert "pairs left out: compound type" in netcdf_mount.log()
        header = run("ncdump", "-h", virtual(netcdf_mount, "model", "forecast"))
        assert "short lead(lat)" in header and ':kind = "forecast"' in header


def test_nccopy_of_the_virtual_file_reproduces_the_values(corpus, netcdf_mount, tmp_path):
    copy = tmp_path / "copy.nc"
    run("nccopy", virtual(netcdf_mount, "model"), str(copy))
    with netCDF4.Dataset(corpus["model"]) as original, netCDF4.Dataset(copy) as copied:
        for name, var in copied.variables.items():
            expected = original[name][...]
            got = var[...]
            if original[name].dtype is str:
                assert string_values(np.asarray(got)) == string_values(np.asarray(expected)), name
            else:
                np.testing.assert_array_equal(np.ma.filled(got, -1), np.ma.filled(expected, -1), err_msg=name)


def test_xarray_netcdf4_engine_equals_the_original(corpus, netcdf_mount):
    for name, original in corpus.items():
        with xr.open_dataset(original) as want, xr.open_dataset(virtual(netcdf_mount, name), engine="netcdf4") as got:
            for var in got.variables:
                if want[var].dtype.kind in "OU":
                    assert string_values(got[var].values) == string_values(want[var].values), (name, var)
                else:
                    np.testing.assert_array_equal(got[var].values, want[var].values, err_msg=f"{name}:{var}")


def test_fortran_program_prints_the_checksum_of_the_original(corpus, netcdf_mount, tmp_path):
    source = tmp_path / "checksum.f90"
    source.write_text(FORTRAN % {"nx": NX, "ny": NY, "nt": NT})
    program = tmp_path / "checksum"
    flags = run("nf-config", "--fflags").split() + run("nf-config", "--flibs").split()
    run("gfortran", "-o", str(program), str(source), *flags)
    expected = run(str(program), str(corpus["model"]))
    assert run(str(program), virtual(netcdf_mount, "model")) == expected
    assert "-999.00000" in expected


def test_cdo_and_ncks_read_a_slice(corpus, netcdf_mount, tmp_path):
    info = run("cdo", "-s", "sinfon", virtual(netcdf_mount, "model"))
    assert "tas" in info and f"{NT} steps" in info
    out = tmp_path / "slice.nc"
    run("ncks", "-O", "-d", "time,1,2", "-v", "tas", virtual(netcdf_mount, "model"), str(out))
    with netCDF4.Dataset(corpus["model"]) as want, netCDF4.Dataset(out) as got:
        np.testing.assert_array_equal(got["tas"][:], want["tas"][1:3])


def test_inspect_lists_what_each_view_cannot_show(corpus):
    refs = corpus["model"].parent / "refs" / "model.json"
    result = subprocess.run([sys.executable, "-m", "refmount", "inspect", str(refs)], capture_output=True, text=True,
                            timeout=60)
    out = result.stdout
    assert "model.nc                 CDF-5 (64-bit data)" in out and "model.forecast.nc" in out
    assert "left out: pairs: compound type" in out
    assert re.search(r"label .*NETCDF-C CANNOT READ \(decoded view\): variable-length data", out)


def test_cdf2_file_for_scipy_and_gdal_leaves_out_what_needs_cdf5(corpus, tmp_path):
    refs = corpus["model"].parent / "refs" / "model.json"
    with mounted(refs, tmp_path / "mnt", ["-o", "view=netcdf,netcdf_format=cdf2"]) as m:
        path = m.path / "model.nc"  # a single set: its file at the root, named after the set
        assert sorted(os.listdir(m.path)) == ["model.forecast.nc", "model.nc"]
        assert path.read_bytes()[:4] == b"CDF\x02"
        with xr.open_dataset(corpus["model"]) as want, xr.open_dataset(path, engine="scipy") as got:
            assert "big" not in got and "counts" not in got and "cloud" not in got
            assert "big: type <i8 (unsigned or 64-bit integers) needs CDF-5" in got.attrs["refmount_left_out"]
            for var in ("tas", "packed", "sparse", "time", "lat", "name"):
                np.testing.assert_array_equal(got[var].values, want[var].values, err_msg=var)
        info = run("gdalinfo", f"NETCDF:{path}:tas")
        assert f"Size is {NX}, {NY}" in info and f"Band {NT} " in info


def test_decoded_view_no_longer_crashes_ncdump(corpus, tmp_path):
    """Scalars, char arrays and a chunk longer than its dimension, as NCZarr writes them."""
    refs = json.loads((corpus["model"].parent / "refs" / "model.json").read_text())
    keep = {key: ref for key, ref in refs["refs"].items()
            if key.split("/")[0] not in ("label", "pairs", "forecast")}  # what netCDF-C still cannot read
    source = tmp_path / "nczarr.json"
    source.write_text(json.dumps({**refs, "refs": keep}))
    with mounted(source, tmp_path / "mnt", ["-o", "view=decoded"]) as m:
        url = f"file://{m.path}#mode=zarr,file"
        text = run("ncdump", url)
        assert "scalar = 42 ;" in text and '"alpha",' in text
        assert re.sub(r"\s+", "", text).count("time=0,6,12,18,24,30;") == 1
        assert json.loads((m.path / "time" / ".zarray").read_text())["chunks"] == [NT]
        assert (m.path / "time" / "0").stat().st_size == 8 * NT


def test_a_set_on_s3_reads_through_the_object_store(corpus, local_s3, tmp_path):
    """The file and its references on the S3 server: the same bytes as from local disk."""
    local_s3.create_bucket("netcdf-view")
    url = "s3://netcdf-view/model.nc"
    local_s3.upload(corpus["model"], url)
    refs = scan_hdf5(url, storage_options=local_s3.storage_options(), inline_threshold=0).refs
    local_s3.put("s3://netcdf-view/model.json", json.dumps(refs).encode())
    options = ["-o", f"view=netcdf,endpoint_url={local_s3.endpoint_url}"]
    with mounted("s3://netcdf-view/model.json", tmp_path / "mnt", options, env=local_s3.env()) as m:
        path = str(m.path / "model.nc")
        for var in ("tas", "packed", "sparse", "name", "time"):
            assert ncdump_data(path, var) == ncdump_data(str(corpus["model"]), var), var


H5PY_DATA = Path(h5py.__file__).parent / "tests" / "data_files"


def test_hdf5_files_of_other_producers(tmp_path):
    """h5py's test files (not netCDF): big- and little-endian numbers, vlen strings, complex numbers left out."""
    refs = tmp_path / "refs"
    refs.mkdir()
    names = ("vlen_string_s390x", "vlen_string_dset", "compound-dtype-complex")
    for name in names:
        (refs / f"{name}.json").write_text(json.dumps(scan_hdf5(str(H5PY_DATA / f"{name}.h5"), inline_threshold=0).refs))
    with mounted(refs, tmp_path / "mnt", ["-o", "view=netcdf"]) as m:
        for name in names:
            path = str(m.path / name / f"{name}.nc")
            run("ncdump", path)  # the whole file prints
            with h5py.File(H5PY_DATA / f"{name}.h5") as want, netCDF4.Dataset(path) as got:
                for var in got.variables:
                    expected = want[var][...]
                    if expected.dtype.kind == "O":
                        values = got[var][:]
                        if values.dtype.kind == "S":  # bytes strings: rows of chars, no _Encoding
                            values = netCDF4.chartostring(values, encoding="utf-8")
                        texts = [v.decode() if isinstance(v, bytes) else v for v in expected]
                        assert list(values) == texts, (name, var)
                    else:
                        np.testing.assert_array_equal(got[var][:], expected, err_msg=f"{name}:{var}")
                left_out = getattr(got, "refmount_left_out", "")
                assert ("c16: complex numbers" in left_out) == (name == "compound-dtype-complex")

