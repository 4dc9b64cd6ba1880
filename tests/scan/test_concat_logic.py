"""The combining rules on hand-made reference sets: renumbering, time scales, ordering, groups."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr

from refmount.scan.chunkdata import read_array, values_digest
from refmount.scan.concat import ConcatError, FileScan, concat_scans, plan_reads
from refmount.scan.output import dumps, inline_value, zarray
from refmount.scan.timeunits import IncompatibleTimeUnits, common_time_scale


def array_refs(path: str, values: np.ndarray, dims: list[str], chunks: tuple[int, ...], attrs: dict | None = None,
               ) -> dict[str, Any]:
    """An uncompressed array as inline chunks, the way a scan would describe it."""
    refs: dict[str, Any] = {
        f"{path}/.zarray": dumps(zarray(values.shape, chunks, values.dtype.str, None, None, None)),
        f"{path}/.zattrs": dumps({**(attrs or {}), "_ARRAY_DIMENSIONS": dims}),
    }
    for index in np.ndindex(*[-(-s // c) for s, c in zip(values.shape, chunks, strict=True)]):
        block = np.zeros(chunks, values.dtype)
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, values.shape, strict=True))
        block[tuple(slice(0, r.stop - r.start) for r in region)] = values[region]
        refs[f"{path}/{'.'.join(map(str, index))}"] = inline_value(block.tobytes())
    return refs


def file_scan(name: str, refs: dict[str, Any], dim: str = "x") -> FileScan:
    """A FileScan with what the worker would have decoded (no byte ranges here, so no reads)."""
    doc = {"version": 1, "templates": {"u": f"/data/{name}"}, "refs": {".zgroup": dumps({"zarr_format": 2}),
                                                                       ".zattrs": dumps({"name": name}), **refs},
           "refmount": {"sources": {f"/data/{name}": {"size": 1}}}}
    plan = plan_reads(doc["refs"], dim)

    def no_reads(offset: int, length: int) -> bytes:
        raise AssertionError("inline sets need no reads")
    scan = FileScan(name, doc)
    scan.values = {p: read_array(doc["refs"], p, no_reads) for p in plan.coordinates}
    scan.digests = {p: values_digest(read_array(doc["refs"], p, no_reads)) for p in plan.independent}
    return scan


def open_doc(doc: dict, path: str) -> np.ndarray:
    group = zarr.open_group(fsspec.filesystem("reference", fo=doc).get_mapper(""), mode="r", zarr_format=2)
    return np.asarray(group[path][...])


def test_dimension_on_a_later_axis_and_decreasing_coordinate() -> None:
    """Chunks are shifted on the dimension's own axis; a descending coordinate orders files descending."""
    parts = []
    for n, xs in enumerate([np.array([9.0, 8.0, 7.0, 6.0]), np.array([5.0, 4.0])]):
        data = np.arange(3 * len(xs), dtype="i4").reshape(3, len(xs)) + 100 * n
        parts.append((xs, data))
    scans = [file_scan(f"f{n}", {**array_refs("x", xs, ["x"], (2,)), **array_refs("v", data, ["y", "x"], (2, 2))})
             for n, (xs, data) in reversed(list(enumerate(parts)))]
    result = concat_scans(scans, "x")
    assert result.order == ["f0", "f1"]
    np.testing.assert_array_equal(open_doc(result.doc, "x"), [9, 8, 7, 6, 5, 4])
    np.testing.assert_array_equal(open_doc(result.doc, "v"), np.concatenate([parts[0][1], parts[1][1]], axis=1))
    assert "v/0.2" in result.doc["refs"] and "v/1.2" in result.doc["refs"] and "v/0.3" not in result.doc["refs"]
    assert json.loads(result.doc["refs"][".zattrs"]) == {"name": "f0"}
    assert set(result.doc["refmount"]["sources"]) == {"/data/f0", "/data/f1"}


def test_arrays_in_groups_and_an_empty_file() -> None:
    def part(name: str, xs: np.ndarray) -> FileScan:
        refs = {**array_refs("x", xs, ["x"], (max(1, len(xs)),)),
                "sub/.zgroup": dumps({"zarr_format": 2}), "sub/.zattrs": dumps({"g": name}),
                **array_refs("sub/w", xs * 2, ["x"], (2,)),
                **array_refs("sub/const", np.arange(3.0), ["c"], (3,))}
        return file_scan(name, refs)
    result = concat_scans([part("b", np.array([2, 3])), part("empty", np.array([], "i8")), part("a", np.array([0, 1]))],
                          "x")
    assert result.order == ["a", "b"] and any("empty" in note and "left out" in note for note in result.notes)
    np.testing.assert_array_equal(open_doc(result.doc, "sub/w"), [0, 2, 4, 6])
    np.testing.assert_array_equal(open_doc(result.doc, "sub/const"), [0, 1, 2])
    assert json.loads(result.doc["refs"]["sub/.zattrs"]) == {"g": "a"}


def test_attribute_that_changes_meaning_is_refused() -> None:
    scans = [file_scan(f"f{n}", {**array_refs("x", np.array([2 * n, 2 * n + 1]), ["x"], (2,)),
                                 **array_refs("v", np.arange(2.0), ["x"], (2,), {"scale_factor": 0.1 * (n + 1)})})
             for n in range(2)]
    with pytest.raises(ConcatError, match=r"v: attribute 'scale_factor' in f1 \(0.2\) differs from f0 \(0.1\)"):
        concat_scans(scans, "x")


def test_duplicate_coordinate_value_is_an_overlap() -> None:
    scans = [file_scan(f"f{n}", array_refs("x", np.array(xs), ["x"], (2,))) for n, xs in enumerate([[0, 1], [1, 2]])]
    with pytest.raises(ConcatError, match=r"f0 \(0 \.\. 1\) and f1 \(1 \.\. 2\) overlap along 'x'"):
        concat_scans(scans, "x")


def test_time_scales_convert_exactly() -> None:
    values, units = common_time_scale(
        [np.array([0, 1], "i8"), np.array([0, 12], "i8"), np.array([0.5])],
        ["days since 2000-01-02", "hours since 2000-01-01 12:00:00", "days since 2000-01-03T00:00:00Z"],
        ["standard", "standard", "standard"],
    )
    assert units == "hours since 2000-01-01 12:00:00"
    assert values[0].dtype == np.int64 and values[0].tolist() == [12, 36]
    assert values[1].tolist() == [0, 12]
    assert values[2].dtype == np.float64 and values[2].tolist() == [48.0]
    same, kept = common_time_scale([np.array([5])], ["days since 1-1-1"], ["noleap"])
    assert kept == "days since 1-1-1" and same[0].tolist() == [5]


def test_time_scales_that_cannot_be_converted() -> None:
    with pytest.raises(IncompatibleTimeUnits, match="calendars"):
        common_time_scale([np.array([0]), np.array([0])], ["days since 2000-01-01", "days since 2000-02-01"],
                          ["noleap", "noleap"])
    with pytest.raises(IncompatibleTimeUnits, match="not 'UNIT since DATE'"):
        common_time_scale([np.array([0]), np.array([0])], ["days since 2000-01-01", "m"], [None, None])


def test_coordinate_in_a_group_of_one_file_only_is_a_missing_variable() -> None:
    base = {**array_refs("x", np.array([0, 1]), ["x"], (2,))}
    extra = {"sub/.zgroup": dumps({"zarr_format": 2}), **array_refs("sub/x", np.array([5, 6]), ["x"], (2,))}
    scans = [file_scan("f0", {**base, **extra}),
             file_scan("f1", array_refs("x", np.array([2, 3]), ["x"], (2,)))]
    with pytest.raises(ConcatError, match=r"sub/x: missing in f1 \(present in f0\)"):
        concat_scans(scans, "x")
    result = concat_scans(scans, "x", mismatch="drop")
    assert "sub/x/.zarray" not in result.doc["refs"] and result.notes == ["sub/x: left out: missing in f1"]
