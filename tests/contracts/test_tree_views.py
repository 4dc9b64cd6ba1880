"""The tree contract run against the decoded view over each raw tree.

The view must answer every tree question as the tree it wraps does, except
for the entries it rewrites. In the sample used here ``temp`` is given a
zlib compressor, so its ``.zarray`` is shown without codecs and its chunks
as decoded chunks; ``forecast/wind`` has no codecs, so its full-size range
chunks pass through and only its whole-object chunk (size unknown without
asking the store) is presented as a decoded chunk of the declared size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from refmount.refs.compact import CompactNamespace
from refmount.refs.model import Inline, Reference, Whole
from refmount.refs.tree import Namespace
from refmount.views.decoded import DecodedChunk, DecodedTree
from refmount.views.zarr3 import Zarr3Tree

from .tree_contract import ZARRAY, TreeContract, sample_references

CHUNK_BYTES = 2 * 3 * 4  # chunks [2, 3] of <f4


@dataclass(frozen=True)
class Decoded:
    """What the contract expects for a chunk the view decodes: its raw reference, at the decoded size."""

    source: Reference


def view_references() -> dict[str, Reference]:
    refs = sample_references()
    refs["temp/.zarray"] = Inline(json.dumps({**ZARRAY, "compressor": {"id": "zlib", "level": 1}}).encode())
    return refs


def no_metadata_reads(key: str, ref: Reference) -> bytes:
    raise AssertionError(f"{key}: the sample's metadata is inline")


class DecodedViewContract(TreeContract):
    def raw_tree(self, refs: dict[str, Reference]):  # pragma: no cover - abstract
        raise NotImplementedError

    def make_tree(self, refs, tmp_path):
        return DecodedTree(self.raw_tree(refs), no_metadata_reads)

    @pytest.fixture
    def refs(self) -> dict[str, Reference]:
        return view_references()

    def expected(self, refs):
        shown: dict[str, object] = dict(refs)
        for key, ref in refs.items():
            parent, _, name = key.rpartition("/")
            if name == ".zarray":
                meta = json.loads(ref.data)
                shown[key] = Inline(json.dumps({**meta, "compressor": None, "filters": None}).encode())
            elif parent == "temp" and not name.startswith("."):
                shown[key] = Decoded(ref)
            elif parent == "forecast/wind" and isinstance(ref, Whole):
                shown[key] = Decoded(ref)
        return shown

    def same_reference(self, shown, expected) -> bool:
        if isinstance(expected, Decoded):
            return isinstance(shown, DecodedChunk) and shown.source == expected.source and shown.size == CHUNK_BYTES
        if isinstance(expected, Inline) and isinstance(shown, Inline) and expected.data.startswith(b"{"):
            return json.loads(shown.data) == json.loads(expected.data)
        return shown == expected


class TestDecodedViewOverMappingTree(DecodedViewContract):
    def raw_tree(self, refs):
        return Namespace(refs)


class TestDecodedViewOverCompactTree(DecodedViewContract):
    def raw_tree(self, refs):
        return CompactNamespace(refs)


# -- the Zarr v3 view ---------------------------------------------------------------


def zarr_json(refs: dict[str, Reference], directory: str) -> Inline:
    """The oracle's zarr.json for ``directory`` of the sample (built here, not by the view's code)."""
    def doc(name: str) -> dict:
        ref = refs.get(f"{directory}/{name}" if directory else name)
        return json.loads(ref.data) if isinstance(ref, Inline) else {}

    attributes = doc(".zattrs")
    zarray = doc(".zarray")
    if not zarray:
        return Inline(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode())
    dimensions = attributes.pop("_ARRAY_DIMENSIONS", None)
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": zarray["shape"], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": zarray["chunks"]}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attributes,
    }
    if dimensions:
        meta["dimension_names"] = dimensions
    return Inline(json.dumps(meta).encode())


class Zarr3ViewContract(TreeContract):
    """The v3 view presents the wrapped tree plus one zarr.json per group and array; counts stay the wrapped tree's."""

    def inner_tree(self, refs: dict[str, Reference]):  # pragma: no cover - abstract
        raise NotImplementedError

    def make_tree(self, refs, tmp_path):
        return Zarr3Tree(self.inner_tree(refs), no_metadata_reads)

    def expected(self, refs):
        shown: dict[str, object] = dict(refs)
        for directory in ("", "temp", "forecast", "forecast/wind"):
            shown[f"{directory}/zarr.json".lstrip("/")] = zarr_json(refs, directory)
        return shown

    def same_reference(self, shown, expected) -> bool:
        if isinstance(expected, Inline) and isinstance(shown, Inline) and expected.data.startswith(b"{"):
            return json.loads(shown.data) == json.loads(expected.data)
        return shown == expected

    def test_counts(self, tree, refs):
        # Deliberately the wrapped tree's: counting the added documents would mean enumerating the set.
        assert len(tree) == len(refs)
        assert tree.directory_count == 4


class TestZarr3ViewOverMappingTree(Zarr3ViewContract):
    def inner_tree(self, refs):
        return Namespace(refs)


class TestZarr3ViewOverCompactTree(Zarr3ViewContract):
    def inner_tree(self, refs):
        return CompactNamespace(refs)


class TestZarr3ViewOverDecodedView(Zarr3ViewContract):
    """With view=decoded the v3 view reads the decoded .zarray: ``temp`` (zlib underneath) lists only ``bytes``."""

    @pytest.fixture
    def refs(self) -> dict[str, Reference]:
        return view_references()

    def inner_tree(self, refs):
        return DecodedTree(Namespace(refs), no_metadata_reads)

    def expected(self, refs):
        shown = DecodedViewContract.expected(self, refs)
        decoded = {k: v for k, v in shown.items() if isinstance(v, Inline)}
        for directory in ("", "temp", "forecast", "forecast/wind"):
            shown[f"{directory}/zarr.json".lstrip("/")] = zarr_json(decoded, directory)
        return shown

    def same_reference(self, shown, expected) -> bool:
        return DecodedViewContract.same_reference(self, shown, expected)
