"""VirtualiZarr's spelling of a 0-d array's chunk (``crs/``) is read as ``crs/0``; other empty segments stay refused.

The key shapes are checked by hand, and on a set VirtualiZarr itself writes
from an HDF5 file with a scalar variable (its kerchunk writer).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from refmount.errors import InvalidReferences
from refmount.refs.kerchunk.parse import parse_reference_bytes, parse_references
from refmount.refs.keys import scalar_chunk_array
from refmount.refs.model import Inline, Range
from refmount.refs.tree import Namespace

SCALAR = json.dumps({"shape": [], "chunks": [], "dtype": "<i4", "fill_value": 0, "order": "C", "filters": None,
                     "compressor": None, "zarr_format": 2})
VECTOR = json.dumps({"shape": [3], "chunks": [3], "dtype": "<i4", "fill_value": 0, "order": "C", "filters": None,
                     "compressor": None, "zarr_format": 2})


def test_the_key_shape_alone_is_recognised():
    assert scalar_chunk_array("crs/") == "crs"
    assert scalar_chunk_array("g/crs/") == "g/crs"
    assert scalar_chunk_array("crs") is None
    assert scalar_chunk_array("crs//") is None
    assert scalar_chunk_array("/") is None
    assert scalar_chunk_array("a//b/") is None


def test_a_zero_dimensional_arrays_trailing_slash_chunk_becomes_chunk_0():
    refs = parse_references({"version": 1, "refs": {"crs/": ["s3://b/f.nc", 10, 4], "crs/.zarray": SCALAR,
                                                    "g/crs/": "base64:AQAAAA==", "g/crs/.zarray": SCALAR}})
    assert refs["crs/0"] == Range("s3://b/f.nc", 10, 4)
    assert refs["g/crs/0"] == Inline(b"\x01\x00\x00\x00")
    assert "crs/" not in refs
    Namespace(refs)  # a legal tree


@pytest.mark.parametrize(
    "refs, message",
    [
        ({"v/": ["s3://b/f", 0, 4], "v/.zarray": VECTOR}, "empty path segment"),  # not 0-d
        ({"v/": ["s3://b/f", 0, 4]}, "empty path segment"),  # no array at all
        ({"v/": ["s3://b/f", 0, 4], "v/.zarray": ["s3://b/zarray"]}, "empty path segment"),  # not inline
        ({"a//": "x", "a/.zarray": SCALAR}, "empty path segment"),
        ({"a//b/": "x"}, "empty path segment"),
        ({"crs/": ["s3://b/f", 0, 4], "crs/0": ["s3://b/f", 0, 4], "crs/.zarray": SCALAR}, "given twice"),
    ],
)
def test_other_empty_segments_are_still_refused(refs, message):
    with pytest.raises(InvalidReferences, match=message):
        parse_references(refs)


def test_a_set_virtualizarr_writes_for_a_scalar_variable_loads(tmp_path: Path):
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    path = tmp_path / "scalar.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("crs", data=np.int32(4326))
        f.create_dataset("t", data=np.arange(6.0), chunks=(3,), compression="gzip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vds = open_virtual_dataset(f"file://{path}", parser=HDFParser(),
                                   registry=ObjectStoreRegistry({"file://": LocalStore()}))
        doc = vds.vz.to_kerchunk(format="dict")
    assert "crs/" in doc["refs"], "VirtualiZarr no longer writes the trailing-slash key this test is about"
    refs = parse_reference_bytes(json.dumps(doc).encode())
    chunk = refs["crs/0"]
    assert isinstance(chunk, Range)
    raw = path.read_bytes()[chunk.offset : chunk.offset + chunk.length]
    assert np.frombuffer(raw, "<i4")[0] == 4326
