"""The reference-tree contract: one test body that every tree implementation passes.

A tree is what a reference set looks like once loaded: ``lookup`` of a key
or directory, streamed ``listdir``, link counts, per-URL extents, the URLs
referenced, and iteration over every reference. The raw trees (dict model,
compact JSON columns, Parquet record files) and every view over them (the
decoded view) are served by the same filesystem code, so they must agree on
all of it. Subclass :class:`TreeContract`, implement :meth:`make_tree`, and
the whole contract runs against the implementation (zarr-python's
StoreTests is the model).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from refmount.errors import NotADirectory, NotFound
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.tree import Dir, File, inode_of

ZARRAY = {
    "zarr_format": 2, "shape": [4, 6], "chunks": [2, 3], "dtype": "<f4", "order": "C",
    "fill_value": None, "compressor": None, "filters": None,
}


def sample_references() -> dict[str, Reference]:
    """A small set with every shape of reference, nested groups, and URLs shared by several keys."""
    refs: dict[str, Reference] = {
        ".zgroup": Inline(b'{"zarr_format": 2}'),
        ".zattrs": Inline(b'{"title": "contract"}'),
        "temp/.zarray": Inline(json.dumps(ZARRAY).encode()),
        "temp/.zattrs": Inline(b'{"_ARRAY_DIMENSIONS": ["y", "x"]}'),
        "forecast/.zgroup": Inline(b'{"zarr_format": 2}'),
        "forecast/wind/.zarray": Inline(json.dumps(ZARRAY).encode()),
        "forecast/wind/0.0": Whole("s3://bucket/whole.bin"),
    }
    chunk = 2 * 3 * 4
    for i in range(2):
        for j in range(2):
            refs[f"temp/{i}.{j}"] = Range("s3://bucket/a.h5", 1000 + (i * 2 + j) * chunk, chunk)
    refs["forecast/wind/0.1"] = Range("s3://bucket/b.h5", 0, chunk)
    refs["forecast/wind/1.0"] = Range("s3://bucket/b.h5", 5000, chunk)
    return refs


def children(keys: Iterable[str], directory: str) -> list[str]:
    """The names directly in ``directory`` that ``keys`` imply, each once, sorted: the contract's own oracle."""
    prefix = f"{directory}/" if directory else ""
    return sorted({key[len(prefix) :].split("/", 1)[0] for key in keys if key.startswith(prefix)})


class TreeContract:
    """Subclasses provide :meth:`make_tree` (and may narrow :meth:`expected`)."""

    def make_tree(self, refs: dict[str, Reference], tmp_path):  # pragma: no cover - abstract
        raise NotImplementedError

    def expected(self, refs: dict[str, Reference]) -> dict[str, Reference]:
        """The references the tree should present for ``refs`` (views may rewrite some)."""
        return refs

    def same_reference(self, shown, expected: Reference) -> bool:
        return shown == expected

    def resolve_all(self, tree, refs: dict[str, Reference]) -> None:
        """Look up every key: ``extent`` and ``urls`` promise to cover the references resolved so far
        (a lazy tree such as the Parquet one learns them as it loads record files)."""
        for key in self.expected(refs):
            tree.lookup(key)

    @pytest.fixture
    def refs(self) -> dict[str, Reference]:
        return sample_references()

    @pytest.fixture
    def tree(self, refs, tmp_path):
        return self.make_tree(refs, tmp_path)

    # -- lookup ---------------------------------------------------------------

    def test_every_key_is_a_file_with_its_reference(self, tree, refs):
        for key, ref in self.expected(refs).items():
            node = tree.lookup(key)
            assert isinstance(node, File), key
            assert node.path == key
            assert self.same_reference(node.ref, ref), key

    def test_leading_and_trailing_slashes_name_the_same_node(self, tree):
        assert tree.lookup("/temp/0.0").path == "temp/0.0"
        assert isinstance(tree.lookup("/forecast/"), Dir)

    def test_implied_directories_exist_down_to_the_root(self, tree):
        for path in ("", "temp", "forecast", "forecast/wind"):
            node = tree.lookup(path)
            assert isinstance(node, Dir), path
            assert node.inode == inode_of(path)

    def test_missing_paths_are_not_found(self, tree):
        for path in ("nothing", "temp/9.9", "temp/0.0/deeper", "forecast/wind/x/y"):
            with pytest.raises(NotFound):
                tree.lookup(path)

    def test_inodes_are_stable_and_distinct(self, tree, refs):
        inodes = {tree.lookup(key).inode for key in refs}
        assert len(inodes) == len(refs)
        assert all(tree.lookup(key).inode == inode_of(key) for key in refs)

    # -- listing --------------------------------------------------------------

    def test_listdir_names_each_child_once(self, tree, refs):
        keys = self.expected(refs)
        assert children(sample_references(), "") == [".zattrs", ".zgroup", "forecast", "temp"]  # the oracle itself
        for directory in ("", "/temp", "forecast", "forecast/wind"):
            assert sorted(tree.listdir(directory)) == children(keys, directory.strip("/")), directory

    def test_listdir_of_a_file_or_nothing_fails(self, tree):
        with pytest.raises(NotADirectory):
            list(tree.listdir("temp/0.0"))
        with pytest.raises(NotFound):
            list(tree.listdir("absent"))

    def test_subdirectory_counts_give_link_counts(self, tree):
        assert tree.subdirectory_count("") == 2
        assert tree.subdirectory_count("forecast") == 1
        assert tree.subdirectory_count("temp") == 0

    def test_counts(self, tree, refs):
        assert len(tree) == len(self.expected(refs))
        assert tree.directory_count == 4  # root, temp, forecast, forecast/wind

    # -- what the set reaches -------------------------------------------------

    def test_extent_is_the_furthest_byte_a_range_reads(self, tree, refs):
        self.resolve_all(tree, refs)
        assert tree.extent("s3://bucket/a.h5") == 1000 + 4 * 24
        assert tree.extent("s3://bucket/b.h5") == 5000 + 24
        assert tree.extent("s3://bucket/whole.bin") == 0
        assert tree.extent("s3://elsewhere") == 0

    def test_urls_are_every_referenced_object(self, tree, refs):
        self.resolve_all(tree, refs)
        assert sorted(set(tree.urls)) == ["s3://bucket/a.h5", "s3://bucket/b.h5", "s3://bucket/whole.bin"]

    def test_iter_references_yields_every_key_once(self, tree, refs):
        seen = dict(tree.iter_references())
        expected = self.expected(refs)
        assert sorted(seen) == sorted(expected)
        for key, ref in expected.items():
            assert self.same_reference(seen[key], ref), key
