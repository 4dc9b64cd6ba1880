"""One reference set's tree, free of FUSE: attributes, listings, handles, reads, xattrs.

Everything the kernel can ask is answered here in plain Python with the
error taxonomy of :mod:`refmount.errors`; :mod:`refmount.fs.fuse_adapter`
only translates calls and errnos. This is a :class:`refmount.fs.served.ServedTree`;
the router (:mod:`refmount.fs.router`) builds one per loaded set. Tests drive
this class directly.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from refmount.errors import IsADirectory, NoAttribute, ReadOnly, RefmountError
from refmount.fs.served import UNKNOWN, WRITE_FLAGS, XATTR_PREFIX, Entry, Listing, TreeOwner, statfs_figures
from refmount.read.ranges import Part
from refmount.read.reader import Reader
from refmount.refs.tree import Dir, File, ReferenceTree, inode_of

__all__ = ["RefFilesystem", "TreeOwner"]

#: Files remembered for reads without a handle; more than the files a mount's readers have open at once.
RECENT_FILES = 256


class RefFilesystem:
    """A read-only tree over one namespace, read through ``reader`` (the raw reader or a view's)."""

    def __init__(self, namespace: ReferenceTree, reader: Reader, owner: TreeOwner, mtime: float) -> None:
        self.namespace = namespace
        self.reader = reader
        self.owner = owner
        self.mtime = mtime or time.time()
        self._handles: dict[int, File] = {}
        self._handle_ids = itertools.count(1)
        self._lock = threading.Lock()
        # Reads without a handle (zero-message open: every read of a one-set mount) name their file by path;
        # the tree never changes under one filesystem, so a path resolved once stays resolved. A plain dict:
        # its single operations are atomic, and a race costs a second lookup, never a wrong file.
        self._recent: dict[str, File] = {}

    # -- metadata ------------------------------------------------------------

    def getattr(self, path: str) -> dict[str, Any]:
        return self._attrs(self.namespace.lookup(path))

    def getattr_of_handle(self, handle: int, path: str) -> dict[str, Any]:
        file = self._handles.get(handle)
        return self.getattr(path) if file is None else self._attrs(file)

    def _attrs(self, node: File | Dir) -> dict[str, Any]:
        if isinstance(node, Dir):
            nlink = 2 + self.namespace.subdirectory_count(node.path)
            return self.owner.dir_attrs(node.inode, nlink, self.mtime)
        return self.owner.file_attrs(node.inode, self.reader.size(node.ref), self.reader.cache.block_size, self.mtime)

    def readdir(self, path: str) -> Iterable[str]:
        """Names in a directory, streamed; asks the store only for Parquet record files."""
        return itertools.chain((".", ".."), self.namespace.listdir(path))

    def listing(self, path: str) -> Listing:
        """Names in a directory with the attributes :meth:`getattr` gives them, where those cost no I/O.

        Each name is looked up in the tree when the tree answers lookups from
        memory (JSON sets and the decoded view over them; the compact tree
        gives the sizes with the names); a tree whose lookups may read the
        store (Parquet, Icechunk, the Zarr v3 and netCDF views) lists names
        only, as readdir does, for a listing must not cost a read per entry.
        A file whose size only the store knows goes without attributes, and so
        does an entry whose lookup fails (its ``stat`` reports why).
        """
        key = path.strip("/")
        prefix = key + "/" if key else ""
        sized = getattr(self.namespace, "listdir_sizes", None)
        if sized is not None and type(self.reader) is Reader:  # the raw view of a compact tree: sizes in bulk
            entries = self._sized_entries(prefix, sized(path))
        elif getattr(self.namespace, "lookups_in_memory", False):
            entries = self._entries(prefix, self.namespace.listdir(path))  # NotFound / NotADirectory now
        else:  # a lookup may read the store (Parquet record files, Icechunk manifests): names only, as readdir
            entries = ((name, inode_of(prefix + name), 0, UNKNOWN) for name in self.namespace.listdir(path))
        return Listing(
            self.owner.file_attrs(0, 0, self.reader.cache.block_size, self.mtime),
            self.owner.dir_attrs(0, 2, self.mtime),
            entries,
        )

    def _sized_entries(self, prefix: str, names: Iterator[tuple[str, int | None]]) -> Iterator[Entry]:
        """Entries from a tree that states its files' sizes with their names (what the raw reader answers)."""
        subdirectories = self.namespace.subdirectory_count
        for name, size in names:
            if size is None:
                yield name, inode_of(prefix + name), stat.S_IFDIR, 2 + subdirectories(prefix + name)
            else:
                yield name, inode_of(prefix + name), stat.S_IFREG, UNKNOWN if size < 0 else size

    def _entries(self, prefix: str, names: Iterable[str]) -> Iterator[Entry]:
        lookup, listed_size, subdirectories = self.namespace.lookup, self.reader.listed_size, self.namespace.subdirectory_count
        for name in names:
            try:
                node = lookup(prefix + name)
            except RefmountError:
                yield name, inode_of(prefix + name), 0, UNKNOWN
                continue
            if isinstance(node, Dir):
                yield name, node.inode, stat.S_IFDIR, 2 + subdirectories(node.path)
            else:
                size = listed_size(node.ref)
                yield name, node.inode, stat.S_IFREG, UNKNOWN if size is None else size

    def statfs(self) -> dict[str, int]:
        return statfs_figures(len(self.namespace) + self.namespace.directory_count)

    def access(self, path: str, mode: int) -> None:
        self.namespace.lookup(path)
        if mode & os.W_OK:
            raise ReadOnly(path)

    # -- data ----------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        if flags & WRITE_FLAGS:
            raise ReadOnly(path)
        node = self.namespace.lookup(path)
        if isinstance(node, Dir):
            raise IsADirectory(path)
        with self._lock:
            handle = next(self._handle_ids)
            self._handles[handle] = node
        return handle

    def read(self, handle: int, size: int, offset: int, path: str | None = None) -> bytes:
        return b"".join(self.read_parts(handle, size, offset, path))

    def read_parts(self, handle: int, size: int, offset: int, path: str | None = None) -> list[Part]:
        file = self._handles.get(handle) or self._recent.get(path or "")
        if file is None:  # a read without open (zero-message open, or fh lost): look it up
            file = self._file_at(path or "")
        return self.reader.read_parts(file, offset, size)

    def _file_at(self, path: str) -> File:
        node = self.namespace.lookup(path)
        if isinstance(node, Dir):
            raise IsADirectory(path or "/")
        if len(self._recent) >= RECENT_FILES:
            self._recent.clear()
        self._recent[path] = node
        return node

    def release(self, handle: int) -> None:
        with self._lock:
            self._handles.pop(handle, None)

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        """Stop the reader's readahead; demand reads of files still open keep working."""
        self.reader.close()

    # -- extended attributes: where a key's bytes come from -------------------

    def listxattr(self, path: str) -> list[str]:
        node = self.namespace.lookup(path)
        if isinstance(node, Dir):
            return []
        return [XATTR_PREFIX + name for name in self.reader.describe(node)]

    def getxattr(self, path: str, name: str) -> bytes:
        node = self.namespace.lookup(path)
        if isinstance(node, File) and name.startswith(XATTR_PREFIX):
            value = self.reader.describe(node).get(name[len(XATTR_PREFIX) :])
            if value is not None:
                return value.encode()
        raise NoAttribute(f"{path}: {name}")
