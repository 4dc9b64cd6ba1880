"""The served-tree contract run against each tree the FUSE adapter serves."""

from __future__ import annotations

import os

from refmount.fs.filesystem import RefFilesystem, TreeOwner
from refmount.metrics import Metrics
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.refs.open import open_reference_set
from refmount.store.fsspec_store import BackendOptions, FsspecBackend
from refmount.store.policy import UrlPolicy
from tests.support.served import open_served, write_reference_set

from .served_tree_contract import BLOCK_SIZE, ServedTreeContract


class TestSetFilesystem(ServedTreeContract):
    """One reference set's filesystem, as the router builds it for each set."""

    def make_served(self, dataset, tmp_path):
        path = write_reference_set(tmp_path / "set.json", dataset.refs)
        info, namespace = open_reference_set(str(path), {})
        metrics = Metrics()
        backend = FsspecBackend(BackendOptions(policy=UrlPolicy.for_source(str(path), ())), metrics)
        cache = BlockCache(backend, capacity=4 << 20, block_size=BLOCK_SIZE, max_request=1 << 20, metrics=metrics)
        fs = RefFilesystem(namespace, Reader(namespace, cache, backend, readahead=0, metrics=metrics),
                           TreeOwner(os.getuid(), os.getgid()), info.mtime)
        try:
            yield fs, ""
        finally:
            fs.close()
            backend.close()


class TestRouterOverOneSet(ServedTreeContract):
    """A mount of one reference set: the set at the mount's root."""

    def make_served(self, dataset, tmp_path):
        served = open_served(write_reference_set(tmp_path / "set.json", dataset.refs), block_size=BLOCK_SIZE)
        try:
            assert not served.router.collection
            yield served.router, ""
        finally:
            served.close()


class TestRouterOverCollection(ServedTreeContract):
    """A mount of a directory of sets: the set under its name, next to another set."""

    def make_served(self, dataset, tmp_path):
        sets = tmp_path / "sets"
        sets.mkdir()
        write_reference_set(sets / "one.json", dataset.refs)
        write_reference_set(sets / "other.json", {"note": "another set"})
        served = open_served(sets, block_size=BLOCK_SIZE)
        try:
            assert served.router.collection
            yield served.router, "/one"
        finally:
            served.close()

    def statfs_files(self, dataset):
        return dataset.nodes + 2  # the mount's root, and the other set's directory (not loaded)
