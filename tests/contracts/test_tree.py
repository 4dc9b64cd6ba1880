"""The tree contract run against every raw tree implementation (views add their own subclasses)."""

from __future__ import annotations

import json

import pytest

from refmount.refs.compact import CompactNamespace
from refmount.refs.keys import ZMETADATA
from refmount.refs.model import Inline, Range, Reference
from refmount.refs.open import open_reference_set
from refmount.refs.parquet.tree import ParquetNamespace
from refmount.refs.parquet.write import write_parquet
from refmount.refs.tree import Namespace

from .tree_contract import TreeContract, sample_references


class TestMappingTree(TreeContract):
    def make_tree(self, refs, tmp_path):
        return Namespace(refs)


class TestCompactTree(TreeContract):
    def make_tree(self, refs, tmp_path):
        return CompactNamespace(refs)


class TestParquetTree(TreeContract):
    """The sample written in fsspec's Parquet layout (two chunks per record file) and opened as a mount opens it."""

    @pytest.fixture
    def refs(self) -> dict[str, Reference]:
        # The layout counts every chunk slot of an array's grid (fsspec's len: an upper bound),
        # so the sample fills the one empty slot of forecast/wind to make the count exact.
        refs = sample_references()
        refs["forecast/wind/1.1"] = Range("s3://bucket/b.h5", 2000, 24)
        return refs

    def make_tree(self, refs, tmp_path):
        root = tmp_path / "set.parq"
        counts = write_parquet(lambda: refs.items(), str(root), record_size=2)
        assert counts["record_files"] == 4  # two per array: chunks are found across record files
        self.zmetadata = (root / ZMETADATA).read_bytes()
        info, tree = open_reference_set(str(root), record_cache=1)
        assert info.format == "parquet" and isinstance(tree, ParquetNamespace)
        return tree

    def expected(self, refs):
        # The layout serves its own .zmetadata (as fsspec's ReferenceFileSystem does) beside the set's keys.
        return {**refs, ZMETADATA: Inline(self.zmetadata)}

    def same_reference(self, shown, expected):
        # Metadata documents live as JSON inside .zmetadata and are served re-serialised (fsspec's
        # serialiser), so they are the same document, not necessarily the same bytes.
        if isinstance(shown, Inline) and isinstance(expected, Inline) and shown != expected:
            return json.loads(shown.data) == json.loads(expected.data)
        return shown == expected
