"""The Zarr v3 view without a mount: zarr.json documents over v2 chunk files that zarr-python 3 reads as v3.

Each case writes a real Zarr v2 array with zarr-python (its codecs, dtype,
order and separator), wraps the files in the view, writes the view's
``zarr.json`` documents beside them and opens the directory with
``zarr_format=3`` only: the values must be the ones written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr

from refmount.errors import NotFound
from refmount.refs.keys import ZARR_JSON
from refmount.refs.model import Inline, Whole
from refmount.refs.tree import File, Namespace
from refmount.views.zarr3 import Zarr3Tree
from refmount.views.zarr3_meta import NotTranslatable, array_metadata, codecs_of, data_type


def _files(root: Path) -> dict[str, Inline]:
    return {str(p.relative_to(root)): Inline(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def _write_v3_documents(root: Path) -> Zarr3Tree:
    tree = Zarr3Tree(Namespace(_files(root)), lambda key, ref: (_ for _ in ()).throw(AssertionError(key)))
    for key, ref in tree.iter_references():
        if key.rpartition("/")[2] == ZARR_JSON:
            assert isinstance(ref, Inline)
            (root / key).write_bytes(ref.data)
    return tree


def _v2_array(root: Path, name: str, data: np.ndarray, **kwargs) -> None:
    group = zarr.open_group(root, mode="a", zarr_format=2)
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=kwargs.pop("chunks"), **kwargs)
    array[...] = data
    array.attrs["_ARRAY_DIMENSIONS"] = [f"d{i}" for i in range(data.ndim)]
    array.attrs["units"] = "K"


RNG = np.random.default_rng(3)
FLOATS = RNG.normal(size=(9, 13)).astype("<f4")

CASES = {
    "zlib": dict(data=FLOATS, chunks=(4, 5), compressors=numcodecs.Zlib(level=3)),
    "gzip": dict(data=FLOATS, chunks=(4, 5), compressors=numcodecs.GZip(level=5)),
    "shuffle_zlib": dict(data=FLOATS, chunks=(4, 5), filters=[numcodecs.Shuffle(elementsize=4)],
                         compressors=numcodecs.Zlib()),
    "zstd": dict(data=FLOATS, chunks=(4, 5), compressors=numcodecs.Zstd(level=2)),
    "blosc": dict(data=FLOATS, chunks=(4, 5), compressors=numcodecs.Blosc(cname="zstd", shuffle=-1)),
    "crc32c_zlib": dict(data=FLOATS, chunks=(4, 5), filters=[numcodecs.CRC32C()], compressors=numcodecs.Zlib()),
    "delta_zlib": dict(data=np.arange(117, dtype="<i4").reshape(9, 13), chunks=(4, 5),
                       filters=[numcodecs.Delta(dtype="<i4")], compressors=numcodecs.Zlib()),
    "fixedscaleoffset": dict(data=np.round(FLOATS.astype("<f8"), 2), chunks=(4, 5),
                             filters=[numcodecs.FixedScaleOffset(offset=0, scale=100, dtype="<f8", astype="<i4")],
                             compressors=None),
    "big_endian": dict(data=FLOATS.astype(">f8"), chunks=(4, 5), compressors=None),
    "order_f": dict(data=FLOATS, chunks=(4, 5), order="F", compressors=numcodecs.Zlib()),
    "slash_separator": dict(data=FLOATS, chunks=(4, 5), chunk_key_encoding={"name": "v2", "separator": "/"},
                            compressors=numcodecs.Zlib()),
    "scalar": dict(data=np.array(273.15, dtype="<f8"), chunks=(), compressors=None),
    "uint8": dict(data=np.arange(50, dtype="u1"), chunks=(7,), compressors=numcodecs.Zlib()),
    "bool": dict(data=np.array([True, False, True]), chunks=(2,), compressors=None),
    "complex": dict(data=(FLOATS + 1j * FLOATS).astype("<c8"), chunks=(4, 5), compressors=None),
    "datetime": dict(data=np.arange(5).astype("datetime64[s]"), chunks=(2,), compressors=None),
    "fixed_bytes": dict(data=np.array([b"ab", b"cde", b""], dtype="S3"), chunks=(2,), compressors=None),
    "fixed_unicode": dict(data=np.array(["ab", "cdé", ""], dtype="<U3"), chunks=(2,), compressors=None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_zarr_python_3_reads_every_translated_array_in_v3_only_mode(case, tmp_path):
    spec = dict(CASES[case])
    data = spec.pop("data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that some of these dtypes are not in the v2/v3 specs
        _v2_array(tmp_path, case, data, fill_value=data.reshape(-1)[0] if data.dtype.kind != "M" else None, **spec)
        _write_v3_documents(tmp_path)
        group = zarr.open_group(tmp_path, mode="r", zarr_format=3)
        array = group[case]
        np.testing.assert_array_equal(array[...], data)
    meta = json.loads((tmp_path / case / ZARR_JSON).read_text())
    assert meta["dimension_names"] == [f"d{i}" for i in range(data.ndim)]
    assert meta["attributes"] == {"units": "K"}
    assert meta["chunk_key_encoding"]["name"] == "v2"


def test_variable_length_strings_map_to_the_v3_string_type(tmp_path):
    data = np.array(["a", "bcd", "", "éé"], dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(tmp_path, mode="a", zarr_format=2)
        array = group.create_array("s", shape=(4,), dtype=str, chunks=(3,))
        array[...] = data
        _write_v3_documents(tmp_path)
        got = zarr.open_group(tmp_path, mode="r", zarr_format=3)["s"][...]
    assert list(got) == list(data)
    assert json.loads((tmp_path / "s" / ZARR_JSON).read_text())["codecs"][0] == {"name": "vlen-utf8"}


def test_codec_translation_uses_v3_standard_forms_where_they_exist():
    zarray = {"shape": [4, 6], "chunks": [2, 3], "dtype": ">i2", "order": "F", "fill_value": None,
              "filters": [{"id": "shuffle", "elementsize": 2}],
              "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": -1, "blocksize": 0}}
    assert codecs_of(zarray) == [
        {"name": "transpose", "configuration": {"order": [1, 0]}},
        {"name": "bytes", "configuration": {"endian": "big"}},
        {"name": "numcodecs.shuffle", "configuration": {"elementsize": 2}},
        {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": 2,
                                            "blocksize": 0}},
    ]
    assert codecs_of({**zarray, "filters": None, "compressor": {"id": "gzip", "level": 6}})[-1] == \
        {"name": "gzip", "configuration": {"level": 6}}
    meta = array_metadata({**zarray, "filters": None, "compressor": None}, {})
    assert meta["codecs"] == [{"name": "transpose", "configuration": {"order": [1, 0]}},
                              {"name": "bytes", "configuration": {"endian": "big"}}]
    assert meta["fill_value"] == 0 and "dimension_names" not in meta


@pytest.mark.parametrize(
    "zarray, reason",
    [
        ({"dtype": [["a", "<i4"], ["b", "<f8"]]}, "structured dtype"),
        ({"dtype": "|O", "filters": [{"id": "json2"}]}, "object dtype encoded by json2"),
        ({"dtype": "|O", "filters": None}, "no object codec"),
        ({"dtype": "|V8"}, "has no v3 data type"),
        ({"dtype": "<f4", "compressor": {"id": "zlib"}, "filters": None, "order": "C",
          "x": 0}, None),
        ({"dtype": "<f4", "filters": [{"id": "zlib"}, {"id": "delta", "dtype": "<f4"}]}, "comes after a byte codec"),
        ({"dtype": "<f4", "compressor": {"id": "no-such-codec"}}, "no v3 form known"),
    ],
)
def test_arrays_v3_cannot_describe_are_refused_with_the_reason(zarray, reason):
    base = {"shape": [3], "chunks": [2], "fill_value": None, "filters": None, "compressor": None}
    if reason is None:
        assert array_metadata({**base, **zarray}, {})["data_type"] == "float32"
        return
    with pytest.raises(NotTranslatable, match=reason):
        array_metadata({**base, **zarray}, {})


def test_data_types_have_their_v3_core_names():
    assert [data_type(s, {}) for s in ("|b1", "<i1", ">u8", "<f2", "<c16")] == \
        ["bool", "int8", "uint64", "float16", "complex128"]


def _tree(refs: dict) -> Zarr3Tree:
    encoded = {k: Inline(json.dumps(v).encode()) if isinstance(v, dict) else v for k, v in refs.items()}
    return Zarr3Tree(Namespace(encoded), lambda key, ref: (_ for _ in ()).throw(AssertionError(key)))


ZARRAY = {"zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "<f4", "fill_value": None, "order": "C",
          "filters": None, "compressor": None}


def test_view_adds_zarr_json_only_beside_groups_and_arrays_and_lists_it():
    tree = _tree({".zgroup": {"zarr_format": 2}, ".zattrs": {"title": "t"}, "a/.zarray": ZARRAY,
                  "a/0": Whole("s3://b/x"), "g/.zgroup": {"zarr_format": 2}, "plain/file": Inline(b"x")})
    assert sorted(tree.listdir("")) == [".zattrs", ".zgroup", "a", "g", "plain", ZARR_JSON]
    assert ZARR_JSON in list(tree.listdir("a")) and ZARR_JSON in list(tree.listdir("g"))
    assert ZARR_JSON not in list(tree.listdir("plain"))
    root = tree.lookup("/zarr.json")
    assert isinstance(root, File) and isinstance(root.ref, Inline)
    assert json.loads(root.ref.data) == {"zarr_format": 3, "node_type": "group", "attributes": {"title": "t"}}
    with pytest.raises(NotFound):
        tree.lookup("plain/zarr.json")
    with pytest.raises(NotFound):
        tree.lookup("missing/zarr.json")
    assert tree.lookup("a/0").ref == Whole("s3://b/x")  # chunks untouched
    keys = [key for key, _ in tree.iter_references()]
    assert keys.count("a/zarr.json") == 1 and keys.count("zarr.json") == 1 and "plain/zarr.json" not in keys


def test_a_sets_own_zarr_json_is_kept_and_not_listed_twice():
    own = Inline(b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    tree = _tree({".zgroup": {"zarr_format": 2}, "zarr.json": own})
    assert tree.lookup("zarr.json").ref == own
    assert sorted(tree.listdir("")) == [".zgroup", ZARR_JSON]


def test_root_without_zgroup_is_a_group_and_untranslatable_arrays_get_no_document(caplog):
    tree = _tree({"s/.zarray": {**ZARRAY, "dtype": "|O", "filters": [{"id": "pickle"}]}, "s/0": Inline(b"x")})
    assert json.loads(tree.lookup("zarr.json").ref.data)["node_type"] == "group"
    with pytest.raises(NotFound):
        tree.lookup("s/zarr.json")
    list(tree.listdir("s"))
    assert sum("s has no zarr.json" in r.getMessage() for r in caplog.records) == 1  # said once


def test_non_finite_attributes_become_strict_json_as_v3_spells_them():
    tree = _tree({".zgroup": {"zarr_format": 2}, "a/.zarray": {**ZARRAY, "fill_value": "NaN"},
                  "a/.zattrs": Inline(b'{"_FillValue": NaN, "range": [-Infinity, Infinity, 1.5], "n": {"m": NaN}}')})
    text = tree.lookup("a/zarr.json").ref.data.decode()
    meta = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in zarr.json"))
    assert meta["attributes"] == {"_FillValue": "AAAAAAAA+H8=", "range": ["-Infinity", "Infinity", 1.5],
                                  "n": {"m": "NaN"}}
    assert meta["fill_value"] == "NaN"


@pytest.mark.parametrize("fill", [-999.0, "NaN", 3])
def test_xarray_reads_a_float_fill_value_attribute_from_the_v3_document(tmp_path, fill):
    values = np.array([1.0, -999.0, 3.0, 4.0], "<f4")
    root = tmp_path / "set"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _v2_array(root, "v", values, chunks=(2,), compressors=None, fill_value=None)
        (root / "v" / ".zattrs").write_text(json.dumps({"_ARRAY_DIMENSIONS": ["t"], "_FillValue": fill}))
        _write_v3_documents(root)
        v3 = xr.open_zarr(root, zarr_format=3, consolidated=False)["v"].values
        v2 = xr.open_zarr(root, zarr_format=2, consolidated=False)["v"].values
    np.testing.assert_array_equal(v3, v2)
    if fill == -999.0:
        assert np.isnan(v3[1]) and v3[0] == 1.0
