"""The decoded view's NCZarr adjustments: what netCDF-C 4.9 needs to read an array without crashing."""

from __future__ import annotations

import json

import numpy as np

from refmount.refs.model import Inline
from refmount.refs.tree import Namespace
from refmount.views.decoded import DecodedChunk, DecodedTree
from refmount.views.nczarr import nczarr_compatible
from refmount.views.zarr_meta import ArrayCodec


def meta(shape, chunks, dtype="<f8", fill=0):
    return {"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": fill,
            "compressor": None, "filters": None, "order": "C"}


def test_chunks_longer_than_the_array_are_trimmed_to_its_shape():
    out, shown = nczarr_compatible(meta([6, 10], [512, 4]))
    assert out["chunks"] == [6, 4] and shown == (6, 4)
    assert nczarr_compatible(meta([6, 10], [3, 4])) == (meta([6, 10], [3, 4]), None)


def test_scalars_and_char_arrays_as_nczarr_writes_them():
    scalar, _ = nczarr_compatible(meta([], []))
    assert scalar["shape"] == [1] and scalar["chunks"] == [1]
    assert scalar["_NCZARR_ARRAY"] == {"dimrefs": [], "storage": "scalar"}
    chars, _ = nczarr_compatible(meta([3, 4], [3, 4], "|S1", "AA=="))
    assert chars["dtype"] == "<U1" and chars["fill_value"] == ""


def test_a_trimmed_chunk_holds_the_first_elements_of_the_stored_chunk():
    stored = np.arange(512, dtype="<f8")
    refs = {"t/.zarray": Inline(json_bytes(meta([6], [512]))), "t/0": Inline(stored.tobytes())}
    tree = DecodedTree(Namespace(refs), lambda key, ref: b"")
    node = tree.lookup("t/0")
    chunk = node.ref
    assert isinstance(chunk, DecodedChunk) and chunk.size == 6 * 8
    assert np.frombuffer(chunk.trimmed(stored.tobytes()), "<f8").tolist() == list(range(6))
    raw = DecodedTree(Namespace(refs), lambda key, ref: b"", nczarr=False)
    assert raw.lookup("t/0").ref == refs["t/0"]  # the netCDF view reads chunks as stored
    assert ArrayCodec.from_meta("t", meta([6], [512])).chunk_nbytes == 512 * 8


def json_bytes(doc) -> bytes:
    return json.dumps(doc).encode()
