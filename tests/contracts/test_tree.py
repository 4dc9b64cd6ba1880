"""The tree contract run against every raw tree implementation (views add their own subclasses)."""

from __future__ import annotations

from refmount.refs.compact import CompactNamespace
from refmount.refs.tree import Namespace

from .tree_contract import TreeContract


class TestMappingTree(TreeContract):
    def make_tree(self, refs, tmp_path):
        return Namespace(refs)


class TestCompactTree(TreeContract):
    def make_tree(self, refs, tmp_path):
        return CompactNamespace(refs)
