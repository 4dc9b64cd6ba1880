"""netCDF-C (ncdump, nccopy) and GDAL read a compressed virtual NetCDF4 dataset through the decoded view.

The test file is a real NetCDF4/HDF5 file with one variable per codec
(zlib, shuffle+zlib, blosc, zstd, fletcher32+zlib, uncompressed, and a
contiguous one), edge chunks everywhere (37 x 53 over 10 x 16), fill values
written into the data, and a sparse variable whose unwritten chunks have no
reference at all. The file sits on the real S3 server (fixture ``local_s3``)
and references to it come from ``refmount scan`` (scanning it on S3) and
from kerchunk, the reference sets themselves stored on S3; one local-disk
variant keeps the tests meaningful without object storage.

Designed around the limits of netCDF-C 4.9.0 (Debian 12):

* no variable-length strings (its ncdump crashes on them in Zarr mode);
* chunks never larger than the shape (it rejects such arrays);
* every variable in the root group, with its dimensions (it wants dimensions
  declared in the group that uses them);
* in pure Zarr mode it uses ``fill_value`` for missing chunks but does not
  show it as ``_FillValue``, so ncdump prints fill values as numbers where
  the original shows ``_``: values are compared numerically, ``_`` standing
  for the variable's fill value;
* Debian's netCDF-C has no blosc/zstd HDF5 filter (and refuses hdf5plugin's),
  so for those two variables ncdump's oracle is an uncompressed twin of the
  file with the same values.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import h5netcdf
import h5py
import hdf5plugin
import netCDF4
import numpy as np
import pytest
import xarray as xr

from refmount.scan import scan_hdf5
from tests.support.datasets import kerchunk_translate
from tests.support.mounting import Mount, mounted

pytestmark = pytest.mark.fuse

NY, NX, NT = 37, 53, 4
FILL = -999.0
CODECS = {
    "v_zlib": dict(compression="gzip", compression_opts=4),
    "v_shuffle_zlib": dict(compression="gzip", shuffle=True),
    "v_blosc": dict(**hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "v_zstd": dict(**hdf5plugin.Zstd(clevel=3)),
    "v_fletcher32_zlib": dict(compression="gzip", fletcher32=True),
    "v_raw": dict(),
}
NCDUMP_LACKS_FILTER = {"v_blosc", "v_zstd"}
KERCHUNK_REFUSES = {"v_fletcher32_zlib"}  # kerchunk has no fletcher32 mapping; refmount scan does
TWO_D = [*CODECS, "v_sparse", "v_contiguous"]


def write_netcdf(path: Path, *, compressed: bool = True) -> dict[str, np.ndarray]:
    """The test file (or, uncompressed, its twin); returns every variable's values as written."""
    rng = np.random.default_rng(11)
    base = rng.normal(10, 3, (NY, NX)).astype("f4")
    base[:3, :5] = FILL  # fill values inside written chunks
    values: dict[str, np.ndarray] = {
        "y": np.linspace(-45, 45, NY), "x": np.linspace(0, 130, NX), "t": np.arange(NT, dtype="i4"),
    }
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"t": NT, "y": NY, "x": NX}
        for name in ("t", "y", "x"):
            f.create_variable(name, (name,), data=values[name]).attrs["axis"] = name.upper()
        for offset, (name, codecs) in enumerate(CODECS.items()):
            data = base + offset
            data[:3, :5] = FILL
            var = f.create_variable(name, ("y", "x"), dtype="f4", chunks=(10, 16), fillvalue=np.float32(FILL),
                                    **(codecs if compressed else {}))
            var[...] = data
            var.attrs["units"] = "K"
            var.attrs["long_name"] = f"stored with {name[2:]}"
            values[name] = data
        sparse = f.create_variable("v_sparse", ("y", "x"), dtype="f4", chunks=(10, 16), fillvalue=np.float32(FILL),
                                   **({"compression": "gzip"} if compressed else {}))
        sparse[10:20, 16:40] = 1.25  # other chunks are never written: no reference, the fill value
        values["v_sparse"] = np.full((NY, NX), FILL, "f4")
        values["v_sparse"][10:20, 16:40] = 1.25
        f.create_variable("v_contiguous", ("y", "x"), data=base.astype("f8") * 2)
        values["v_contiguous"] = base.astype("f8") * 2
        counts = (np.arange(NT * NY * NX).reshape(NT, NY, NX) % 3000).astype("i2")
        f.create_variable("i_counts", ("t", "y", "x"), data=counts, chunks=(3, 8, 8), fillvalue=np.int16(-1),
                          **({"compression": "gzip", "shuffle": True} if compressed else {}))
        values["i_counts"] = counts
        f.attrs["title"] = "decoded view test"
    return values


def make_references(maker: str, nc: Path, url: str, storage_options: dict | None = None) -> dict:
    """References to ``url`` (where ``nc`` has been put): ``refmount scan`` reads it there, kerchunk locally."""
    if maker == "scan":
        return scan_hdf5(url, storage_options=storage_options, inline_threshold=0).refs
    with open(nc, "rb") as handle:
        return json.loads(json.dumps(kerchunk_translate(handle, url, inline_threshold=0)))


@dataclass
class Dataset:
    """The test file, its uncompressed twin, its values and references to it."""

    maker: str
    nc: Path
    twin: Path
    values: dict[str, np.ndarray]
    refs_source: str
    refs: dict
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def variables(self) -> list[str]:
        return [name for name in self.values if self.maker != "kerchunk" or name not in KERCHUNK_REFUSES]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    base = tmp_path_factory.mktemp("decoded-nc")
    values = write_netcdf(base / "model.nc")
    write_netcdf(base / "twin.nc", compressed=False)
    return base / "model.nc", base / "twin.nc", values


S3_BUCKET = "decoded-view"


@pytest.fixture(scope="module", params=["scan-s3", "kerchunk-s3", "scan-local"])
def dataset(request, files, tmp_path_factory) -> Dataset:
    """References to the test file on the real S3 server (refs on S3 too), or on local disk."""
    maker, backend = request.param.split("-")
    nc, twin, values = files
    base = tmp_path_factory.mktemp(f"refs-{request.param}")
    if backend == "local":
        refs = make_references(maker, nc, str(nc))
        refs_path = base / "model.json"
        refs_path.write_text(json.dumps(refs))
        return Dataset(maker, nc, twin, values, str(refs_path), refs)
    local_s3 = request.getfixturevalue("local_s3")
    local_s3.create_bucket(S3_BUCKET)
    url = f"s3://{S3_BUCKET}/{maker}/model.nc"
    local_s3.upload(nc, url)
    refs = make_references(maker, nc, url, local_s3.storage_options())
    local_s3.put(f"s3://{S3_BUCKET}/{maker}/model.json", json.dumps(refs).encode())
    return Dataset(
        maker, nc, twin, values, f"s3://{S3_BUCKET}/{maker}/model.json", refs,
        options=["-o", f"endpoint_url={local_s3.endpoint_url}"], env=local_s3.env(),
    )


@pytest.fixture(scope="module")
def decoded_mount(dataset, tmp_path_factory) -> Mount:
    mountpoint = tmp_path_factory.mktemp("decoded") / "mnt"
    with mounted(dataset.refs_source, mountpoint, ["-o", "view=decoded,xattrs", *dataset.options], env=dataset.env) as m:
        yield m


@pytest.fixture(scope="module")
def raw_mount(dataset, tmp_path_factory) -> Mount:
    mountpoint = tmp_path_factory.mktemp("raw") / "mnt"
    with mounted(dataset.refs_source, mountpoint, dataset.options, env=dataset.env) as m:
        yield m


def zarr_url(mount: Mount) -> str:
    return f"file://{mount.path}#mode=zarr,file"


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result.stdout


def ncdump_values(target: str, name: str, fill: float | None) -> np.ndarray:
    """The values ``ncdump -v NAME`` prints, ``_`` read as the fill value."""
    text = run("ncdump", "-v", name, target)
    body = text.split("\ndata:\n", 1)[1]
    match = re.search(rf"\n {re.escape(name)} =\s*(.*?)\s*;", body, re.S)
    assert match, f"no data for {name} in ncdump output:\n{text[-2000:]}"
    tokens = [token.strip() for token in match.group(1).split(",")]
    assert "_" not in tokens or fill is not None
    return np.array([fill if token == "_" else float(token) for token in tokens])


def test_chunk_files_have_decoded_sizes_and_codec_free_metadata(dataset, decoded_mount):
    root = decoded_mount.path
    for name in dataset.variables:
        meta = json.loads((root / name / ".zarray").read_text())
        assert meta["compressor"] is None and meta["filters"] is None, name
        original = json.loads(dataset.refs["refs"][f"{name}/.zarray"])
        for key in ("shape", "chunks", "dtype", "fill_value", "order"):
            assert meta[key] == original[key], (name, key)
        assert json.loads((root / name / ".zattrs").read_text()) == json.loads(dataset.refs["refs"][f"{name}/.zattrs"])
        chunk_bytes = np.dtype(meta["dtype"]).itemsize * int(np.prod(meta["chunks"]))
        for chunk in (p for p in (root / name).iterdir() if not p.name.startswith(".")):
            assert chunk.stat().st_size == chunk_bytes, chunk
    assert os.getxattr(root / "v_zstd" / "0.0", "user.refmount.kind") == b"decoded"
    assert os.getxattr(root / "v_zstd" / "0.0", "user.refmount.codecs") == b"zstd"
    assert not (root / "v_sparse" / "0.0").exists()  # an unwritten chunk stays absent: readers use fill_value


def test_ncdump_prints_the_values_of_the_original(dataset, decoded_mount):
    for name in dataset.variables:
        oracle = dataset.twin if name in NCDUMP_LACKS_FILTER else dataset.nc
        fill = -1 if name == "i_counts" else FILL
        expected = ncdump_values(str(oracle), name, fill)
        shown = ncdump_values(zarr_url(decoded_mount), name, None)
        np.testing.assert_array_equal(shown, expected, err_msg=name)
        np.testing.assert_allclose(shown, dataset.values[name].ravel(), rtol=1e-6, err_msg=name)


def test_nccopy_gives_a_netcdf4_file_equal_to_the_original(dataset, decoded_mount, tmp_path):
    copy = tmp_path / "copy.nc"
    run("nccopy", "-k", "nc4", zarr_url(decoded_mount), str(copy))
    with netCDF4.Dataset(copy) as out, h5py.File(dataset.nc) as original:
        out.set_auto_mask(False)
        assert sorted(out.variables) == sorted(dataset.variables)
        assert len(out.dimensions["y"]) == NY and len(out.dimensions["x"]) == NX
        for name in dataset.variables:
            np.testing.assert_array_equal(out[name][...], original[name][...], err_msg=name)
            assert out[name].dimensions == tuple(json.loads(dataset.refs["refs"][f"{name}/.zattrs"])["_ARRAY_DIMENSIONS"])
        assert out["v_zlib"].getncattr("units") == "K"


def test_gdal_lists_every_array_and_translates_a_2d_variable(dataset, decoded_mount, tmp_path):
    info = json.loads(run("gdalmdiminfo", f'ZARR:"{decoded_mount.path}"'))
    assert sorted(info["arrays"]) == sorted(dataset.variables)
    assert [d.rsplit("/", 1)[-1] for d in info["arrays"]["v_blosc"]["dimensions"]] == ["y", "x"]
    for name in ("v_shuffle_zlib", "v_blosc"):
        out = tmp_path / f"{name}.bin"
        run("gdal_translate", "-q", "-of", "ENVI", "-ot", "Float32", f'ZARR:"{decoded_mount.path}":/{name}', str(out))
        np.testing.assert_array_equal(np.fromfile(out, "<f4").reshape(NY, NX), dataset.values[name], err_msg=name)


def test_raw_and_decoded_views_read_equal_through_xarray(dataset, decoded_mount, raw_mount):
    decoded = xr.open_zarr(decoded_mount.path, consolidated=False, zarr_format=2, mask_and_scale=False)
    raw = xr.open_zarr(raw_mount.path, consolidated=False, zarr_format=2, mask_and_scale=False)
    assert sorted(decoded.variables) == sorted(raw.variables) == sorted(dataset.variables)
    for name in dataset.variables:
        xr.testing.assert_identical(decoded[name].load(), raw[name].load())
        np.testing.assert_array_equal(decoded[name].values, dataset.values[name], err_msg=name)
    assert decoded.attrs == raw.attrs


def test_unavailable_codec_is_eio_named_in_the_log_other_variables_read(files, tmp_path):
    nc, _, values = files
    refs = make_references("scan", nc, str(nc))
    meta = json.loads(refs["refs"]["v_zlib/.zarray"])
    meta["compressor"] = {"id": "zfpy", "mode": 4, "tolerance": 0.001}  # a codec this machine lacks
    refs["refs"]["v_zlib/.zarray"] = json.dumps(meta)
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps(refs))

    inspected = subprocess.run(["python3", "-m", "refmount", "inspect", str(refs_path)], capture_output=True,
                               text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert inspected.returncode == 1
    assert re.search(r"v_zlib .*MISSING CODEC: zfpy", inspected.stdout), inspected.stdout

    with mounted(refs_path, tmp_path / "mnt", ["-o", "view=decoded"]) as mount:
        assert (mount.path / "v_zlib" / "0.0").stat().st_size == 10 * 16 * 4
        with pytest.raises(OSError) as caught:
            (mount.path / "v_zlib" / "0.0").read_bytes()
        assert caught.value.errno == errno.EIO
        data = np.frombuffer((mount.path / "v_zstd" / "0.0").read_bytes(), "<f4").reshape(10, 16)
        np.testing.assert_array_equal(data, values["v_zstd"][:10, :16])
        np.testing.assert_allclose(ncdump_values(zarr_url(mount), "v_shuffle_zlib", None),
                                   values["v_shuffle_zlib"].ravel(), rtol=1e-6)
        log = mount.log()
    assert re.search(r"v_zlib.*codec 'zfpy' is not installed", log), log[-3000:]
