"""Parquet reference sets (fsspec's layout) written by fsspec/kerchunk and by refmount, mounted for real.

Everything read through the mount must equal what fsspec's ReferenceFileSystem
reads from the same Parquet set; chunk keys must load only their own record file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import fsspec
import numpy as np
import pytest

from refmount.errors import InvalidReferences, NotFound
from refmount.refs.model import Inline, Range, Whole
from refmount.refs.open import open_reference_set
from refmount.refs.parquet.layout import chunk_number
from refmount.refs.parquet.tree import ParquetNamespace
from tests.support.datasets import kerchunk_translate, write_hdf5
from tests.support.mounting import mounted

MISSING = "temp/0.1.2"  # a chunk taken out of the set: absent from the tree
RECORD_LOG = "loaded record file"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refmount", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    """One dataset as JSON, as Parquet written by kerchunk/fsspec, and as Parquet written by refmount."""
    from kerchunk.df import refs_to_dataframe

    base = tmp_path_factory.mktemp("parquet")
    h5 = base / "data.h5"
    arrays = write_hdf5(h5)
    with open(h5, "rb") as handle:  # inline_threshold > 0: some chunks become raw rows
        refs = kerchunk_translate(handle, str(h5), inline_threshold=400)
    refs = json.loads(json.dumps(refs))
    del refs["refs"][MISSING]
    blob = base / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 3)
    refs["refs"]["blob/.zarray"] = json.dumps({
        "shape": [768], "chunks": [768], "dtype": "|u1", "compressor": None, "fill_value": 0,
        "filters": None, "order": "C", "zarr_format": 2,
    })
    refs["refs"]["blob/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": ["byte"]})
    refs["refs"]["blob/0"] = [str(blob)]  # a whole-object reference
    assert any(isinstance(v, str) and v.startswith("base64:") for k, v in refs["refs"].items()), "no inline chunk"
    json_path = base / "refs.json"
    json_path.write_text(json.dumps(refs))
    by_fsspec = base / "by-fsspec.parq"
    refs_to_dataframe(str(json_path), str(by_fsspec), record_size=5)
    by_refmount = base / "by-refmount.parq"
    result = _run("convert", str(json_path), str(by_refmount), "--record-size", "4")
    assert result.returncode == 0, result.stderr
    return {"base": base, "refs": refs, "json": json_path, "fsspec": by_fsspec, "refmount": by_refmount,
            "arrays": arrays}


def _expected_keys(refs: dict) -> list[str]:
    return sorted(refs["refs"]) + [".zmetadata"]


@pytest.mark.fuse
@pytest.mark.parametrize("writer", ["fsspec", "refmount"])
def test_mounted_parquet_reads_as_fsspec_reads_it(sets, writer, tmp_path):
    source = sets[writer]
    reference = fsspec.filesystem("reference", fo=str(source), remote_protocol="file")
    with mounted(source, tmp_path / "mnt") as m:
        for key in _expected_keys(sets["refs"]):
            assert (m.path / key).read_bytes() == reference.cat_file(key), key
            assert (m.path / key).stat().st_size == len(reference.cat_file(key)), key
        # listings: exactly the keys of the set, the missing chunk absent
        for directory in ("", "temp", "grp", "grp/flag", "blob"):
            prefix = f"{directory}/" if directory else ""
            expected = {k[len(prefix):].split("/")[0] for k in _expected_keys(sets["refs"]) if k.startswith(prefix)}
            assert set(os.listdir(m.path / directory)) == expected, directory
        assert MISSING.rsplit("/", 1)[1] not in os.listdir(m.path / "temp")
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / MISSING)
        # (fsspec itself fails on this null row with a TypeError from a NaN path; the mount says ENOENT)
        for absent in ("temp/0.0.9", "temp/00.0.0", "temp/0.0", "temp/x"):
            assert not (m.path / absent).exists(), absent
        # the whole-object row and an inline row
        assert (m.path / "blob/0").read_bytes() == bytes(range(256)) * 3
        inline = next(k for k, v in sets["refs"]["refs"].items() if isinstance(v, str) and v.startswith("base64:"))
        assert (m.path / inline).read_bytes() == base64.b64decode(sets["refs"]["refs"][inline][7:])


@pytest.mark.fuse
def test_xarray_reads_the_mounted_parquet_set(sets, tmp_path):
    import xarray as xr

    with mounted(sets["refmount"], tmp_path / "mnt") as m:
        with xr.open_zarr(m.path, consolidated=False, zarr_format=2, mask_and_scale=False) as ds:
            expected = sets["arrays"]["temp"].copy()
            actual = ds["temp"].values
            # the chunk left out of the set reads as the fill value
            mask = np.zeros(expected.shape, bool)
            mask[0:5, 16:32, 32:47] = True
            np.testing.assert_array_equal(actual[~mask], expected[~mask])
            np.testing.assert_array_equal(ds["count"].values, sets["arrays"]["count"])
            np.testing.assert_array_equal(ds["lat"].values, sets["arrays"]["lat"])


@pytest.mark.fuse
def test_a_chunk_stat_loads_one_record_file(sets, tmp_path):
    with mounted(sets["fsspec"], tmp_path / "mnt") as m:
        os.listdir(m.path)
        (m.path / "temp/.zarray").read_bytes()
        assert m.log().count(RECORD_LOG) == 0, "metadata and the root must not load record files"
        os.stat(m.path / "temp/1.1.2")  # chunk 3*3*1 + 3*1 + 2 = 14: record 2 of size 5
        assert m.log().count(RECORD_LOG) == 1
        assert "temp/refs.2.parq" in m.log()
        os.stat(m.path / "temp/1.1.0")  # chunk 12: same record, already loaded
        assert m.log().count(RECORD_LOG) == 1
        names = os.listdir(m.path / "temp")  # all 36 temp chunks: 8 record files, 7 more
        assert len(names) == 2 + 35
        assert m.log().count(RECORD_LOG) == 8


def test_namespace_counts_record_files_and_bounds_its_cache(sets):
    info, namespace = open_reference_set(str(sets["fsspec"]))
    assert info.format == "parquet" and namespace.records_loaded == 0
    namespace.lookup("temp/0.0.0")
    namespace.lookup("temp/0.1.1")  # chunk 4: same record file
    assert namespace.records_loaded == 1
    with pytest.raises(NotFound):
        namespace.lookup(MISSING)  # chunk 5: record 1
    assert namespace.records_loaded == 2
    with pytest.raises(NotFound):
        namespace.lookup("temp/9.9.9")  # outside the grid: nothing loaded
    assert namespace.records_loaded == 2
    assert namespace.extent(str(sets["base"] / "data.h5")) > 0

    fs = fsspec.filesystem("file")
    none = ParquetNamespace(fs, str(sets["fsspec"]), (sets["fsspec"] / ".zmetadata").read_bytes(), record_cache=0)
    for _ in range(3):
        none.lookup("temp/0.0.0")
    assert none.records_loaded == 3 and none.records_cached == 0  # no cache: loaded on every lookup


def test_chunk_numbers_follow_the_row_major_grid():
    assert chunk_number("1.1.2", (4, 3, 3)) == 14
    assert chunk_number("0", (1,)) == 0
    for bad in ("01.1.2", "1.1", "1.1.3", "a.b.c", "-1.0.0", "1.1.2.0", "１.1.2"):
        assert chunk_number(bad, (4, 3, 3)) is None, bad


def _references(url: str) -> dict:
    _, namespace = open_reference_set(url)
    out = {}
    for key, ref in namespace.iter_references():
        if key == ".zmetadata":
            continue
        out[key] = ("json", json.loads(ref.data)) if key.rsplit("/", 1)[-1].startswith(".z") else ref
    return out


def test_conversions_round_trip(sets, tmp_path):
    original = _references(str(sets["json"]))
    assert any(isinstance(r, Whole) for r in original.values())
    assert any(isinstance(r, Inline) for r in original.values())
    assert any(isinstance(r, Range) for r in original.values())
    back = tmp_path / "back.json"
    assert _run("convert", str(sets["refmount"]), str(back)).returncode == 0
    assert _references(str(back)) == original
    from_fsspec = tmp_path / "from-fsspec.json"
    assert _run("convert", str(sets["fsspec"]), str(from_fsspec)).returncode == 0
    assert _references(str(from_fsspec)) == original
    again = tmp_path / "again.parq"
    assert _run("convert", str(from_fsspec), str(again), "--record-size", "1000").returncode == 0
    assert _references(str(again)) == original
    refused = _run("convert", str(from_fsspec), str(again))
    assert refused.returncode == 2 and "exists" in refused.stderr


def test_sets_the_layout_cannot_hold_are_refused_naming_the_key(tmp_path):
    source = tmp_path / "odd.json"
    source.write_text(json.dumps({"version": 1, "refs": {".zgroup": '{"zarr_format":2}', "loose": "text"}}))
    result = _run("convert", str(source), str(tmp_path / "out.parq"))
    assert result.returncode == 2 and "'loose'" in result.stderr
    assert not (tmp_path / "out.parq").exists()


def test_a_directory_without_zmetadata_is_not_a_reference_set(tmp_path):
    from refmount.errors import ConfigError

    with pytest.raises(ConfigError, match="without .zmetadata"):
        open_reference_set(str(tmp_path))


def test_a_corrupt_record_file_is_an_error_naming_it(sets, tmp_path):
    import shutil

    copy = tmp_path / "copy.parq"
    shutil.copytree(sets["refmount"], copy)
    (copy / "temp" / "refs.0.parq").write_bytes(b"not parquet")
    _, namespace = open_reference_set(str(copy))
    with pytest.raises(InvalidReferences, match="refs.0.parq"):
        namespace.lookup("temp/0.0.0")
    namespace.lookup("temp/1.0.0")  # other records still serve


def test_scan_writes_parquet_that_fsspec_reads(sets, tmp_path):
    out = tmp_path / "out"
    result = _run("scan", str(sets["base"] / "data.h5"), "-o", str(out) + "/", "--format", "parquet",
                  "--record-size", "3")
    assert result.returncode == 0, result.stderr
    target = out / "data.h5.parq"
    assert (target / ".zmetadata").exists() and (target / "temp" / "refs.0.parq").exists()
    reference = fsspec.filesystem("reference", fo=str(target), remote_protocol="file")
    _, namespace = open_reference_set(str(target))
    for key, ref in namespace.iter_references():
        if isinstance(ref, Inline):
            assert reference.cat_file(key) == ref.data, key
        elif isinstance(ref, Range):
            with open(ref.url, "rb") as handle:
                handle.seek(ref.offset)
                assert reference.cat_file(key) == handle.read(ref.length), key
    import zarr

    group = zarr.open_group(fsspec.get_mapper("reference://", fo=str(target), remote_protocol="file"),
                            mode="r", zarr_format=2, use_consolidated=False)
    np.testing.assert_array_equal(group["temp"][:], sets["arrays"]["temp"])
