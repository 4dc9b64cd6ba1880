"""The netCDF view's pure parts: header bytes, layout, boxes of elements, plans and assembled reads.

The header and layout are checked byte for byte against files netCDF-C
writes (through netCDF4-python) for random dimensions, variables, types and
attributes; a whole virtual file made from in-memory chunks is read back by
netCDF4-python and compared with the arrays it was made from.
"""

from __future__ import annotations

import math
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refmount.views.netcdf.header import Attribute, Dimension, Variable, layout, pad4
from refmount.views.netcdf.plan import LEFT_OUT_ATTRIBUTE, ArrayMeta, attribute, plan_group, valid_name
from refmount.views.netcdf.reading import FileData
from refmount.views.netcdf.slabs import boxes, chunks_of, intersection
from refmount.views.netcdf.types import (
    CDF5_ONLY,
    NC_CHAR,
    NC_DOUBLE,
    NC_FLOAT,
    NC_INT,
    NC_INT64,
    NC_SHORT,
    external_dtype,
)
from refmount.views.zarr_meta import ArrayCodec

FORMATS = {1: "NETCDF3_CLASSIC", 2: "NETCDF3_64BIT_OFFSET", 5: "NETCDF3_64BIT_DATA"}
NUMERIC = {"i1": 1, "i2": 3, "i4": 4, "f4": 5, "f8": 6, "u1": 7, "u2": 8, "u4": 9, "i8": 10, "u8": 11}
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=9).filter(lambda s: s[0] != "_")


@st.composite
def files(draw):
    version = draw(st.sampled_from([1, 2, 5]))
    dim_names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=True))
    dims = [Dimension(name, draw(st.integers(1, 6))) for name in dim_names]
    types = [t for t, nc in NUMERIC.items() if version == 5 or nc not in CDF5_ONLY]
    variables = []
    for name in draw(st.lists(NAMES, max_size=4, unique=True)):
        ids = tuple(draw(st.lists(st.integers(0, len(dims) - 1), max_size=3))) if dims else ()
        dtype = draw(st.sampled_from(types))
        attrs = []
        for attr_name in draw(st.lists(NAMES, max_size=2, unique=True)):
            if draw(st.booleans()):
                attrs.append(Attribute.text(attr_name, draw(st.text(alphabet="xyz é", min_size=1, max_size=7))))
            else:
                attrs.append(Attribute.numbers(attr_name, NC_SHORT, draw(st.lists(st.integers(-99, 99), min_size=1,
                                                                                    max_size=3))))
        variables.append(Variable(name, ids, tuple(dims[i].length for i in ids), NUMERIC[dtype], tuple(attrs)))
    gattrs = [Attribute.numbers("g", NC_DOUBLE, [1.5, -2.0])] if draw(st.booleans()) else []
    return version, dims, gattrs, variables


def numpy_type(nc_type: int) -> str:
    return next(t for t, nc in NUMERIC.items() if nc == nc_type)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files())
def test_header_and_layout_are_what_netcdf_c_writes(tmp_path: Path, spec) -> None:
    version, dims, gattrs, variables = spec
    path = tmp_path / "written.nc"
    with netCDF4.Dataset(path, "w", format=FORMATS[version]) as f:
        f.set_fill_off()
        for dim in dims:
            f.createDimension(dim.name, dim.length)
        for attr in gattrs:
            f.setncattr(attr.name, np.frombuffer(attr.payload, external_dtype(attr.nc_type)))
        for var in variables:
            v = f.createVariable(var.name, numpy_type(var.nc_type), tuple(dims[i].name for i in var.dim_ids))
            for attr in var.attributes:
                value = (attr.payload.decode() if attr.nc_type == NC_CHAR
                         else np.frombuffer(attr.payload, external_dtype(attr.nc_type)))
                v.setncattr(attr.name, value)
            v[...] = np.ones(var.shape, numpy_type(var.nc_type))
    written = path.read_bytes()
    planned = layout(version, dims, gattrs, variables)
    assert written[: len(planned.header)] == planned.header
    if variables:  # netCDF-C pads a file without data to 4096 bytes
        assert len(written) == planned.size


def test_padding_and_offsets() -> None:
    assert [pad4(n) for n in (0, 1, 3, 4, 5)] == [0, 4, 4, 4, 8]
    planned = layout(2, [Dimension("x", 3)], [], [Variable("a", (0,), (3,), 1), Variable("b", (0,), (3,), NC_SHORT)])
    assert planned.begins[1] - planned.begins[0] == 4  # 3 bytes padded to 4
    assert planned.size == planned.begins[1] + 8
    with pytest.raises(ValueError, match="not 4 long"):
        layout(2, [Dimension("x", 3)], [], [Variable("a", (0,), (4,), 1)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5), max_size=4), st.data())
def test_boxes_concatenate_to_the_run_of_elements(shape, data) -> None:
    total = math.prod(shape)
    first = data.draw(st.integers(0, total))
    stop = data.draw(st.integers(first, total))
    values = np.arange(total).reshape(shape)
    pieces = [values[tuple(slice(a, b) for a, b in zip(*box, strict=True))].ravel() for box in boxes(shape, first, stop)]
    joined = np.concatenate(pieces) if pieces else np.array([], int)
    assert joined.tolist() == list(range(first, stop))
    assert len(pieces) <= max(1, 2 * len(shape) - 1)


def test_chunks_of_a_box_and_their_intersections() -> None:
    box = ((1, 3), (2, 9))
    assert list(chunks_of(box, (2, 4))) == [(0, 0), (0, 1), (0, 2)]
    assert intersection(box, (0, 2), (2, 4)) == ((slice(1, 2), slice(0, 1)), (slice(0, 1), slice(5, 6)))


def test_attribute_types_from_json() -> None:
    assert attribute("n", 3).nc_type == NC_INT
    assert attribute("n", 3 << 40, version=5).nc_type == NC_INT64
    assert attribute("n", 3 << 40, version=2).nc_type == NC_DOUBLE
    assert attribute("pi", 3.140000104904175).nc_type == NC_FLOAT  # a float32 written as JSON
    assert attribute("half", 0.5).nc_type == NC_DOUBLE
    assert attribute("fill", "NaN", NC_FLOAT).nc_type == NC_FLOAT
    assert attribute("t", "text").nc_type == NC_CHAR
    assert isinstance(attribute("l", ["a", "b"]), str)
    assert isinstance(attribute("d", {"a": 1}), str)
    assert valid_name("tas") and valid_name("_x") and not valid_name("a/b") and not valid_name("-x")


def zarray(shape, chunks, dtype, fill=None, **extra):
    return {"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": fill,
            "compressor": None, "filters": None, "order": "C", **extra}


def test_plan_chooses_the_format_and_reports_what_is_left_out() -> None:
    arrays = [
        ArrayMeta("t", zarray([4], [512], "<f8"), {"_ARRAY_DIMENSIONS": ["t"]}),
        ArrayMeta("v", zarray([4, 3], [2, 2], "<f4", -9.0), {"_ARRAY_DIMENSIONS": ["t", "x"], "units": "K"}),
        ArrayMeta("c", zarray([3], [3], "<c8"), {"_ARRAY_DIMENSIONS": ["x"]}),
        ArrayMeta("anon", zarray([2, 2], [2, 2], "<i2"), {}),
        ArrayMeta("clash", zarray([5], [5], "<i2"), {"_ARRAY_DIMENSIONS": ["x"]}),
        ArrayMeta("s", zarray([3], [3], "|O", "", filters=[{"id": "vlen-utf8"}]), {"_ARRAY_DIMENSIONS": ["x"]}, 7),
        ArrayMeta("u", zarray([3], [3], "|O", "", filters=[{"id": "vlen-utf8"}]), {"_ARRAY_DIMENSIONS": ["x"]},
                  "too big"),
    ]
    plan = plan_group({"title": "x"}, arrays)
    assert plan.layout.version == 2
    names = [v.name for v in plan.layout.variables]
    assert names == ["t", "anon", "s", "v"]
    assert dict(plan.left_out).keys() == {"c", "clash", "u"}
    v = plan.layout.variables[names.index("v")]
    assert [a.name for a in v.attributes] == ["_FillValue", "units"]
    header = plan.layout.header
    assert LEFT_OUT_ATTRIBUTE.encode() in header and b"_zdim_2" in header and b"string7" in header
    assert plan_group({}, [ArrayMeta("big", zarray([2], [2], "<i8"), {})]).layout.version == 5
    forced = plan_group({}, [ArrayMeta("big", zarray([2], [2], "<i8"), {})], "cdf2")
    assert forced.layout.version == 2 and forced.left_out[0][0] == "big"


class MemoryChunks:
    """Chunks of in-memory arrays, counting which were asked for."""

    def __init__(self, values: dict[str, np.ndarray], missing: set[tuple[str, tuple[int, ...]]]) -> None:
        self.values = values
        self.missing = missing
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def chunk(self, array: ArrayCodec, coords: tuple[int, ...]):
        self.asked.append((array.path, coords))
        if (array.path, coords) in self.missing:
            return None
        full = np.zeros(array.chunks, array.dtype)
        source = self.values[array.path]
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, array.chunks, array.shape, strict=True))
        full[tuple(slice(0, r.stop - r.start) for r in region)] = source[region]
        return full


def test_a_virtual_file_reads_back_with_netcdf4(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = {
        "a": rng.normal(size=(5, 7)).astype("<f4"),
        "b": np.arange(6, dtype="<i2"),
        "s": np.array([b"ab", b"cde", b"", b"f", b"gh", b"ijk"], "S3"),
        "z": np.array(7, "<u2"),
    }
    metas = [ArrayMeta("a", zarray([5, 7], [2, 3], "<f4", -1.0), {"_ARRAY_DIMENSIONS": ["y", "x"]}),
             ArrayMeta("b", zarray([6], [4], "<i2"), {"_ARRAY_DIMENSIONS": ["n"]}),
             ArrayMeta("s", zarray([6], [4], "|S3"), {"_ARRAY_DIMENSIONS": ["n"]}),
             ArrayMeta("z", zarray([], [], "<u2"), {})]
    plan = plan_group({"title": "memory"}, metas)
    arrays = {m.name: ArrayCodec.from_meta(m.name, m.zarray) for m in metas}
    chunks = MemoryChunks(values, missing={("a", (2, 0))})
    data = FileData(plan, arrays, chunks)
    whole = b"".join(data.read(offset, 37) for offset in range(0, data.size, 37))
    assert len(whole) == data.size
    path = tmp_path / "virtual.nc"
    path.write_bytes(whole)
    with netCDF4.Dataset(path) as f:
        assert f.data_model == "NETCDF3_64BIT_DATA" and f.title == "memory"
        expected = values["a"].copy()
        expected[4:, 0:3] = -1.0
        np.testing.assert_array_equal(f["a"][:].filled(-1.0), expected)
        np.testing.assert_array_equal(f["b"][:], values["b"])
        f.set_auto_chartostring(True)
        assert list(netCDF4.chartostring(f["s"][:].data)) == ["ab", "cde", "", "f", "gh", "ijk"]
        assert int(f["z"][...]) == 7
    chunks.asked.clear()
    var = plan.layout.variables[[v.name for v in plan.layout.variables].index("a")]
    begin = plan.layout.begins[[v.name for v in plan.layout.variables].index("a")]
    data.read(begin + 4 * 7 * 3, 4 * 7)  # row 3 of a
    assert sorted(set(chunks.asked)) == [("a", (1, 0)), ("a", (1, 1)), ("a", (1, 2))]
    assert var.shape == (5, 7)
