"""``refmount scan GLOB --concat-dim time``: many NetCDF4 files as one mounted dataset, and what it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr

from refmount.cli.scan import main as scan_main
from tests.scan.concat_files import LENGTHS, TIME_CHUNK, with_time_bounds, write_series
from tests.support.datasets import kerchunk_translate
from tests.support.mounting import mounted


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_series(tmp_path_factory.mktemp("series"))


@pytest.fixture(scope="module")
def combined_json(series: list[Path]) -> Path:
    """The series scanned in two worker processes into one set (through the command line, as a user runs it)."""
    out = series[0].parent.parent / "era.json"
    result = subprocess.run(
        [sys.executable, "-m", "refmount", "scan", f"{series[0].parent}/*.nc", "--concat-dim", "time",
         "--jobs", "2", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()  # not a terminal: one plain line per file, then the summary
    assert sum(line.startswith(f"[{n}/4] ") for n in range(1, 5) for line in lines) == 4, result.stderr
    assert "concatenated 4 file(s) along 'time' (length 25)" in lines[-1]
    return out


def open_mfdataset(paths: Sequence[Path]) -> xr.Dataset:
    """``xarray.open_mfdataset(paths, combine="by_coords")``, loaded: what the mounted set must equal.

    Called under the combine defaults xarray's FutureWarning announces
    (``use_new_combine_kwarg_defaults``, xarray >= 2025.8): with today's
    ``data_vars="all"`` the time-independent ``orography`` would get a time
    axis, which neither a set concatenated along time nor xarray's next
    default gives it.
    """
    with xr.set_options(use_new_combine_kwarg_defaults=True), xr.open_mfdataset(paths, combine="by_coords") as ds:
        return ds.load()


def open_refs(doc: dict) -> xr.Dataset:
    return xr.open_zarr(fsspec.filesystem("reference", fo=doc).get_mapper(""), consolidated=False, zarr_format=2)


def scan(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = scan_main(args)
    return code, capsys.readouterr().err


@pytest.mark.fuse
def test_mounted_concatenation_equals_open_mfdataset(series: list[Path], combined_json: Path, tmp_path: Path) -> None:
    expected = open_mfdataset(series)
    with mounted(combined_json, tmp_path / "mnt") as mount:
        actual = xr.open_zarr(mount.path, consolidated=False).load()
    xr.testing.assert_identical(actual, expected)  # values, coordinates, attributes (the first file's, as override)
    assert actual.attrs["part"] == 0  # the first file in time, not the first name (part03.nc)
    assert actual["time"].encoding["units"] == "days since 2020-01-01 00:00:00"


def test_chunks_renumbered_and_coordinate_inlined(combined_json: Path, series: list[Path]) -> None:
    doc = json.loads(combined_json.read_text())
    refs = doc["refs"]
    chunks_per_file = [-(-n // TIME_CHUNK) for n in LENGTHS]
    assert sorted(int(k.split("/")[1].split(".")[0]) for k in refs if k.startswith("t2m/") and "." in k[4:] and
                  not k.startswith("t2m/.")) == list(range(sum(chunks_per_file)))
    assert json.loads(refs["t2m/.zarray"])["shape"] == [sum(LENGTHS), 4, 5]
    # Chunk 2 (the first of the second file in time) points into that file, at the offset its own chunk 0 has.
    second = series[1]
    url_of = {"{{" + name + "}}": url for name, url in doc["templates"].items()}
    assert url_of[refs["t2m/2.0.0"][0]] == str(second)
    own = json.loads(subprocess.run([sys.executable, "-m", "refmount", "scan", str(second)], capture_output=True,
                                    text=True, check=True).stdout)
    assert refs["t2m/2.0.0"][1:] == own["refs"]["t2m/0.0.0"][1:]
    time_meta = json.loads(refs["time/.zarray"])
    assert time_meta["chunks"] == [sum(LENGTHS)] and time_meta["compressor"] is None
    assert refs["time/0"].startswith("base64:")
    assert set(doc["refmount"]["sources"]) == {str(p) for p in series}


def test_parquet_output_reads_the_same(series: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "era.parq"
    code, err = scan([str(p) for p in series] + ["--concat-dim", "time", "--format", "parquet", "--jobs", "1",
                                                 "-q", "-o", str(out)], capsys)
    assert code == 0 and err == ""
    fs = fsspec.filesystem("reference", fo=str(out), remote_protocol="file")
    actual = xr.open_zarr(fs.get_mapper(""), consolidated=False, zarr_format=2).load()
    xr.testing.assert_identical(actual, open_mfdataset(series))


def test_progress_bar_on_a_terminal(series: list[Path], tmp_path: Path) -> None:
    leader, follower = os.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "refmount", "scan", *map(str, series), "--concat-dim", "time", "-o",
             str(tmp_path / "x.json")], stderr=follower, stdout=subprocess.DEVNULL, timeout=120,
        )
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert process.returncode == 0
    text = output.decode()
    assert "\r[" in text and "] 4/4 files" in text and "[1/4] " not in text


def test_kerchunk_multizarrtozarr_reads_the_same_values(series: list[Path], combined_json: Path) -> None:
    """kerchunk's combiner agrees once told to decode CF times (with raw numbers it mixes the files' units)."""
    from kerchunk.combine import MultiZarrToZarr
    singles = [kerchunk_translate(str(p), inline_threshold=300) for p in series]
    theirs = MultiZarrToZarr(singles, concat_dims=["time"], coo_map={"time": "cf:time"},
                             identical_dims=["lat", "lon", "orography"], remote_protocol="file").translate()
    ours = open_refs(json.loads(combined_json.read_text())).load()
    xr.testing.assert_equal(ours, open_refs(theirs).load())


def test_unlimited_time_with_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bounds in each file's own units are put on the coordinate's scale; netCDF-C's unlimited chunking fits."""
    paths = write_series(tmp_path / "in", lengths=(5, 7, 3), edit=with_time_bounds, unlimited=True)
    code, err = scan([*map(str, paths), "--concat-dim", "time", "--jobs", "2", "-o", str(tmp_path / "o.json")], capsys)
    assert code == 0, err
    actual = open_refs(json.loads((tmp_path / "o.json").read_text())).load()
    expected = open_mfdataset(paths)
    xr.testing.assert_identical(actual, expected)
    assert actual["time_bnds"].values[-1, 1] == np.datetime64("2020-01-16")


# -- refusals -------------------------------------------------------------------


def test_time_not_monotonic_within_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def shuffle_time(i: int, ds: xr.Dataset) -> xr.Dataset:
        return ds.isel(time=[1, 0, *range(2, ds.sizes["time"])]) if i == 2 else ds
    paths = write_series(tmp_path / "in", edit=shuffle_time)
    code, err = scan([str(tmp_path / "in/*.nc"), "--concat-dim", "time", "--jobs", "1", "-o", str(tmp_path / "o.json")],
                     capsys)
    assert code == 2
    assert f"{paths[2]}: 'time' is not strictly increasing within the file (2020-01-14T00:00:00 then 2020-01-13" in err
    assert not (tmp_path / "o.json").exists()


def test_overlapping_files_are_refused_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def shift_back(i: int, ds: xr.Dataset) -> xr.Dataset:
        return ds.assign_coords(time=ds["time"] - np.timedelta64(2, "D")) if i == 1 else ds
    paths = write_series(tmp_path / "in", edit=shift_back)
    code, err = scan([*map(str, paths), "--concat-dim", "time", "--jobs", "1", "-o", str(tmp_path / "o.json")], capsys)
    assert code == 2
    assert f"{paths[0]} (2020-01-01T00:00:00 .. 2020-01-06T00:00:00) and {paths[1]} (2020-01-05T00:00:00" in err
    assert "overlap along 'time'" in err


def _change_orography(i: int, ds: xr.Dataset) -> xr.Dataset:
    if i == 2:
        ds["orography"] = ds["orography"] + 1.0
    return ds


def test_mismatched_time_independent_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_series(tmp_path / "in", edit=_change_orography)
    args = [*map(str, paths), "--concat-dim", "time", "--jobs", "1"]
    code, err = scan([*args, "-o", str(tmp_path / "refused.json")], capsys)
    assert code == 2
    assert f"orography (no 'time' dimension) differs from {paths[0]} in {paths[2]} (values)" in err
    assert not (tmp_path / "refused.json").exists()

    code, err = scan([*args, "--mismatch", "first", "-o", str(tmp_path / "first.json")], capsys)
    assert code == 0 and f"kept from {paths[0]}" in err
    first = open_refs(json.loads((tmp_path / "first.json").read_text())).load()
    xr.testing.assert_identical(first["orography"], xr.open_dataset(paths[0])["orography"].load())

    code, err = scan([*args, "--mismatch", "drop", "-o", str(tmp_path / "drop.json")], capsys)
    assert code == 0 and "left out" in err
    dropped = open_refs(json.loads((tmp_path / "drop.json").read_text()))
    assert "orography" not in dropped and dropped.sizes["time"] == sum(LENGTHS)


def test_file_missing_a_variable_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_series(tmp_path / "in", edit=lambda i, ds: ds.drop_vars("precip") if i == 1 else ds)
    code, err = scan([*map(str, paths), "--concat-dim", "time", "--jobs", "1", "-o", str(tmp_path / "o.json")], capsys)
    assert code == 2
    assert f"precip: missing in {paths[1]} (present in {paths[0]})" in err
    code, err = scan([*map(str, paths), "--concat-dim", "time", "--jobs", "1", "--mismatch", "drop",
                      "-o", str(tmp_path / "o.json")], capsys)
    assert code == 0 and f"precip: left out: missing in {paths[1]}" in err


def test_partial_chunk_before_the_last_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that ends in a partial chunk before the last one: small arrays are inlined, larger ones refused."""
    paths = write_series(tmp_path / "in", lengths=(5, 6, 4))
    args = [*map(str, paths), "--concat-dim", "time", "--jobs", "1"]
    code, err = scan([*args, "--decoded-inline-limit", "0", "-o", str(tmp_path / "refused.json")], capsys)
    assert code == 2
    assert (f"t2m: {paths[0]} has length 5 along 'time', not a multiple of the chunk size 3 "
            "(only the last file may end in a partial chunk)") in err
    code, err = scan([*args, "-o", str(tmp_path / "inlined.json")], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "inlined.json").read_text())
    assert doc["refs"]["t2m/0.0.0"].startswith("base64:")
    xr.testing.assert_identical(open_refs(doc).load(), open_mfdataset(paths))


def test_concat_dim_without_coordinate_is_refused(series: list[Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = scan([str(series[0]), "--concat-dim", "level", "-o", str(tmp_path / "o.json")], capsys)
    assert code == 2
    assert f"{series[0]}: no coordinate variable 'level'" in err and "no array has a dimension 'level'" in err


def test_s3_glob_concatenated_in_parallel(series: list[Path], tmp_path: Path, local_s3, s3_bucket) -> None:
    """Files in a bucket: globbed, scanned by two workers reading ranges, values equal to the local files."""
    for path in series:
        local_s3.upload(path, f"s3://{s3_bucket}/era/{path.name}")
    out = tmp_path / "era.json"
    result = subprocess.run(
        [sys.executable, "-m", "refmount", "scan", f"s3://{s3_bucket}/era/*.nc", "--concat-dim", "time", "--jobs", "2",
         "-q", "-o", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **local_s3.env()},
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert sorted(doc["templates"].values()) == sorted(f"s3://{s3_bucket}/era/{p.name}" for p in series)
    options = {"fo": doc, "remote_protocol": "s3", "asynchronous": True,
               "remote_options": {**local_s3.storage_options(), "asynchronous": True}}
    actual = xr.open_zarr("reference://", storage_options=options, consolidated=False, zarr_format=2).load()
    xr.testing.assert_identical(actual, open_mfdataset(series))
