"""The pure mapping functions: dtypes, fill values, attributes, filter pipelines, URL maps."""

from __future__ import annotations

import numpy as np
import pytest

from refmount.scan.attrs import to_json
from refmount.scan.codecs import FilterSpec, UnsupportedFilter, map_pipeline
from refmount.scan.dtypes import encode_fill_value, zarr_dtype
from refmount.scan.output import BadURLMap, apply_url_map, chunk_key, parse_url_map


def test_zarr_dtype_keeps_byte_order_and_lists_fields() -> None:
    assert zarr_dtype(np.dtype(">i2")) == ">i2"
    assert zarr_dtype(np.dtype("|b1")) == "|b1"
    assert zarr_dtype(np.dtype([("a", "<u1"), ("b", ">f4", (2,))])) == [["a", "|u1"], ["b", ">f4", [2]]]


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [(np.nan, "<f4", "NaN"), (np.inf, ">f8", "Infinity"), (-np.inf, "<f2", "-Infinity"), (1.5, "<f8", 1.5),
     (-3, "<i8", -3), (True, "|b1", True), (1 + 2j, "<c8", [1.0, 2.0]), (b"ab", "S2", "YWI="), (None, "<f4", None)],
)
def test_fill_value_encoding(value, dtype, expected) -> None:
    assert encode_fill_value(value, np.dtype(dtype)) == expected


def test_attribute_values() -> None:
    assert to_json(np.array([np.nan, 1.0])) == ["NaN", 1.0]
    assert to_json(np.array([7], dtype=">i4")) == 7
    assert to_json(np.array([b"x", b"y"])) == ["x", "y"]
    assert to_json(b"\xff") == "\xff"
    assert to_json(np.float32(np.inf)) == "Infinity"


def spec(fid: int, *values: int) -> FilterSpec:
    return FilterSpec(fid, 0, values, "")


def test_pipeline_order_and_compressor_slot() -> None:
    f4 = np.dtype("<f4")
    codecs = map_pipeline([spec(2, 4), spec(1, 6)], f4)
    assert codecs.filters == [{"id": "shuffle", "elementsize": 4}] and codecs.compressor == {"id": "zlib", "level": 6}
    codecs = map_pipeline([spec(2, 4), spec(1, 6), spec(3)], f4)
    assert [c["id"] for c in codecs.filters] == ["shuffle", "zlib", "fletcher32"] and codecs.compressor is None
    assert map_pipeline([], f4).filters is None
    for fid in (4, 5, 6, 32004, 32008, 99999):
        with pytest.raises(UnsupportedFilter):
            map_pipeline([spec(fid)], f4)


def test_url_map_and_keys() -> None:
    pairs = parse_url_map(["/a/=s3://x/", "/a/b/=s3://y/"])
    assert apply_url_map("/a/b/c.h5", pairs) == "s3://y/c.h5"
    assert apply_url_map("/a/c.h5", pairs) == "s3://x/c.h5"
    assert apply_url_map("/z.h5", pairs) == "/z.h5"
    with pytest.raises(BadURLMap):
        parse_url_map(["nope"])
    assert chunk_key("g/v", (1, 2)) == "g/v/1.2" and chunk_key("v", ()) == "v/0"
