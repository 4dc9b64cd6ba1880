"""Every dataset of the generated matrix reads back through zarr exactly as h5py reads it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest

from refmount.scan import scan_hdf5
from tests.support.h5matrix import (
    INLINED_DECODED,
    UNSUPPORTED,
    make_matrix,
    make_userblock,
)
from tests.support.scan_fixtures import (
    assert_same_array,
    decode_manually,
    h5_datasets,
    h5_values,
    open_refs,
)

#: Valid Zarr v2 dtypes that zarr-python 3 refuses to read (nested / subarray fields).
ZARR3_UNREADABLE = {"dtypes/compound_nested"}


def read_back(group, refs: dict, name: str) -> np.ndarray:
    """Read an array through zarr, or by the spec with numcodecs where zarr 3 cannot."""
    if name in ZARR3_UNREADABLE:
        return decode_manually(refs, name)
    return group[name][...]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_matrix(tmp_path_factory.mktemp("matrix"))


@pytest.fixture(scope="module")
def scanned(matrix: Path) -> dict:
    return scan_hdf5(str(matrix))


def expected_readable(matrix: Path) -> dict[str, h5py.Dataset]:
    """Datasets that must read back: all but the skipped ones."""
    skipped = {p.lstrip("/") for p in UNSUPPORTED} - {p.lstrip("/") for p in INLINED_DECODED}
    return {k: v for k, v in h5_datasets(matrix).items() if k not in skipped}


def test_every_dataset_reads_back_identically(matrix: Path, scanned) -> None:
    group = open_refs(scanned.refs)
    datasets = expected_readable(matrix)
    assert len(datasets) > 60
    failures = []
    for name, ds in datasets.items():
        try:
            assert_same_array(read_back(group, scanned.refs, name), h5_values(ds), name)
        except Exception as exc:  # noqa: BLE001 - collect all, report together
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


def test_fill_values_match_hdf5(matrix: Path, scanned) -> None:
    group = open_refs(scanned.refs)
    for name, ds in expected_readable(matrix).items():
        if name in ZARR3_UNREADABLE:
            continue
        if h5py.check_string_dtype(ds.dtype) and h5py.check_string_dtype(ds.dtype).length is None:
            continue
        if ds.id.get_create_plist().fill_value_defined() != h5py.h5d.FILL_VALUE_USER_DEFINED:
            # HDF5's default (zero) is not a missing-value marker: Zarr gets null, readers still see zeros.
            assert json.loads(scanned.refs["refs"][f"{name}/.zarray"])["fill_value"] is None, name
            continue
        expected = np.asarray(ds.fillvalue, dtype=ds.dtype)
        actual = np.asarray(group[name].fill_value, dtype=ds.dtype)
        assert actual.tobytes() == expected.tobytes(), name


def test_unwritten_chunks_are_left_out_and_read_as_fill(scanned) -> None:
    refs = scanned.refs["refs"]
    sparse = [k for k in refs if k.startswith("layouts/sparse/") and not k.endswith((".zarray", ".zattrs"))]
    assert sorted(sparse) == ["layouts/sparse/0.0", "layouts/sparse/9.3", "layouts/sparse/9.4"]
    assert not [k for k in refs if k.startswith("layouts/never_written_chunked/") and "/." not in k]
    group = open_refs(scanned.refs)
    assert group["layouts/sparse"][50, 50] == 7.0
    assert (group["layouts/never_written_chunked"][...] == -9).all()
    assert np.isnan(group["layouts/never_written_contiguous"][...]).all()


def test_fill_value_json_encodings(scanned) -> None:
    refs = scanned.refs["refs"]
    meta = lambda name: json.loads(refs[f"{name}/.zarray"])  # noqa: E731
    assert meta("layouts/nan_fill")["fill_value"] == "NaN"
    assert meta("layouts/inf_fill")["fill_value"] == "-Infinity"
    assert base64.b64decode(meta("dtypes/fixed_bytes")["fill_value"]) == b"fill\0\0\0"
    compound = meta("dtypes/compound")
    assert compound["dtype"] == [["a", "<i4"], ["b", ">f8"], ["c", "|S3"]]
    raw = base64.b64decode(compound["fill_value"])
    assert np.frombuffer(raw, dtype=np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")]))[0].tolist() == (-1, 2.5, b"zz")


def test_filters_map_in_pipeline_order(scanned) -> None:
    refs = scanned.refs["refs"]
    meta = lambda name: json.loads(refs[f"filters/{name}/.zarray"])  # noqa: E731
    m = meta("shuffle_gzip_fletcher32")
    assert [f["id"] for f in m["filters"]] == ["shuffle", "zlib", "fletcher32"] and m["compressor"] is None
    m = meta("shuffle_gzip")
    assert m["filters"] == [{"id": "shuffle", "elementsize": 4}] and m["compressor"]["id"] == "zlib"
    assert meta("zstd")["compressor"]["id"] == "zstd"
    assert meta("bzip2")["compressor"]["id"] == "bz2"
    assert meta("blosc_lz4")["compressor"]["cname"] == "lz4"
    # Every chunk skipped the optional blosc filter, so the chunks are raw.
    assert meta("blosc_incompressible")["compressor"] is None


def test_unsupported_objects_are_reported_with_reasons(scanned) -> None:
    problems = {p.path: p for p in scanned.report.problems}
    for path, word in UNSUPPORTED.items():
        assert path in problems, path
        assert word.lower() in problems[path].reason.lower(), problems[path]
    for path in INLINED_DECODED:
        assert problems[path].action == "inlined decoded"
    assert problems["/filters/lz4_big"].action == "skipped"
    assert "attribute 'self'" in problems["/refs/target"].reason
    assert scanned.report.skipped_reasons()


def test_attributes_convert_faithfully(scanned) -> None:
    group = open_refs(scanned.refs)
    attrs = dict(group.attrs)
    assert attrs["title"] == "refmount scan matrix"
    assert attrs["int_attr"] == -3
    assert attrs["float_arr"] == [1.5, "NaN", "Infinity", "-Infinity"]
    assert attrs["bytes_attr"] == "raw bytes"
    assert attrs["vlen_str_list"] == ["a", "b\u00e9"]
    assert attrs["bool_attr"] is True
    assert attrs["one"] == 42
    assert attrs["empty"] is None
    assert attrs["compound"] == {"x": 1, "y": 2.5}
    assert dict(group["refs/target"].attrs) == {"ok": "kept", "_ARRAY_DIMENSIONS": ["phony_dim_1"]} or \
        dict(group["refs/target"].attrs)["ok"] == "kept"


def test_dimension_names(scanned) -> None:
    group = open_refs(scanned.refs)
    dims = lambda name: group[name].attrs["_ARRAY_DIMENSIONS"]  # noqa: E731
    assert dims("dims/field") == ["y", "x"]
    assert dims("dims/x") == ["x"]
    assert "CLASS" not in group["dims/x"].attrs and "DIMENSION_LIST" not in group["dims/field"].attrs
    square = dims("dims/square")
    assert square[0] != square[1] and all(d.startswith("phony_dim_") for d in square)
    assert dims("dims/half_named")[0] == "y" and dims("dims/half_named")[1] == square[0]
    assert dims("layouts/scalar") == []


def test_soft_link_to_existing_dataset_is_presented(scanned) -> None:
    group = open_refs(scanned.refs)
    assert group["links/soft"][...].tolist() == [0, 1, 2]
    assert "links/external/.zarray" not in scanned.refs["refs"]


def test_counts_add_up(scanned) -> None:
    report = scanned.report
    refs = scanned.refs["refs"]
    ranges = [v for v in refs.values() if isinstance(v, list)]
    assert report.chunks == len(ranges)
    assert report.bytes_referenced == sum(v[2] for v in ranges)
    assert report.datasets == sum(1 for k in refs if k.endswith(".zarray"))
    assert report.inlined_chunks == sum(1 for k, v in refs.items() if isinstance(v, str) and v.startswith("base64:"))


def test_inline_threshold_controls_inlining(matrix: Path) -> None:
    none = scan_hdf5(str(matrix), inline_threshold=0)
    assert none.report.chunks > 0
    chunk_values = [v for k, v in none.refs["refs"].items() if k.startswith("filters/gzip/")]
    assert all(isinstance(v, list) for v in chunk_values if not isinstance(v, str) or v.startswith("base64:"))
    everything = scan_hdf5(str(matrix), inline_threshold=10**9)
    assert everything.report.chunks == 0
    group = open_refs(everything.refs)
    for name, ds in expected_readable(matrix).items():
        assert_same_array(read_back(group, everything.refs, name), h5_values(ds), name)


def test_nested_compound_is_valid_zarr_v2_that_zarr3_does_not_read(scanned) -> None:
    meta = json.loads(scanned.refs["refs"]["dtypes/compound_nested/.zarray"])
    assert meta["dtype"] == [["p", [["x", "<f4"], ["y", "<f4"]]], ["v", "<i2", [3]]]
    with pytest.raises(ValueError, match="No Zarr data type"):
        open_refs(scanned.refs)["dtypes/compound_nested"]


def test_userblock_offsets_point_at_the_data(tmp_path: Path) -> None:
    path = make_userblock(tmp_path)
    result = scan_hdf5(str(path), inline_threshold=0)
    refs = result.refs["refs"]
    raw = path.read_bytes()
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        _, offset, length = refs["contiguous/0.0"]
        assert offset >= 512
        assert np.frombuffer(raw[offset:offset + length], "<i4").tolist() == f["contiguous"][()].ravel().tolist()
        group = open_refs(result.refs)
        for name in ("contiguous", "chunked"):
            assert_same_array(group[name][...], f[name][()], name)


def test_reference_filesystem_accepts_the_refmount_key(scanned, matrix: Path) -> None:
    facts = scanned.refs["refmount"]["sources"][str(matrix)]
    assert facts["size"] == matrix.stat().st_size and "mtime" in facts
    fs = fsspec.filesystem("reference", fo=scanned.refs)
    assert "refmount" not in fs.ls("", detail=False)
    assert json.loads(fs.cat(".zgroup")) == {"zarr_format": 2}
    assert scanned.refs["templates"] == {"u": str(matrix)}
    assert all(v[0] == "{{u}}" for v in scanned.refs["refs"].values() if isinstance(v, list))
    json.dumps(scanned.refs, allow_nan=False)
