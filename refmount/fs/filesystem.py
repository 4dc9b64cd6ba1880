"""The filesystem's behaviour, free of FUSE: attributes, listings, handles, reads, xattrs.

Everything the kernel can ask is answered here in plain Python with the
error taxonomy of :mod:`refmount.errors`; :mod:`refmount.fuse_ops` only
translates calls and errnos. Tests drive this class directly.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from refmount.errors import IsADirectory, NoAttribute, ReadOnly
from refmount.read.reader import Reader
from refmount.refs.model import Inline, Range, Whole
from refmount.refs.tree import Dir, File, ReferenceTree
from refmount.urls import redact_url

FILE_MODE = 0o444
DIR_MODE = 0o555
XATTR_PREFIX = "user.refmount."
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True)
class TreeOwner:
    """Ownership and permission bits shown for every node."""

    uid: int
    gid: int
    umask: int = 0o222

    def file_mode(self) -> int:
        return stat.S_IFREG | (FILE_MODE & ~self.umask & 0o777)

    def dir_mode(self) -> int:
        # The umask applies to directories as to files (umask 027 means no access for others at all).
        return stat.S_IFDIR | (DIR_MODE & ~self.umask & 0o777)


class RefFilesystem:
    """A read-only tree over one namespace."""

    def __init__(self, namespace: ReferenceTree, reader: Reader, owner: TreeOwner, mtime: float) -> None:
        self.namespace = namespace
        self.reader = reader
        self.owner = owner
        self.mtime = mtime or time.time()
        self._handles: dict[int, File] = {}
        self._handle_ids = itertools.count(1)
        self._lock = threading.Lock()
        reader.metrics.gauge("open_handles", lambda: len(self._handles))

    # -- metadata ------------------------------------------------------------

    def getattr(self, path: str) -> dict[str, Any]:
        node = self.namespace.lookup(path)
        common = {
            "st_ino": node.inode,
            "st_uid": self.owner.uid,
            "st_gid": self.owner.gid,
            "st_atime": self.mtime,
            "st_mtime": self.mtime,
            "st_ctime": self.mtime,
        }
        if isinstance(node, Dir):
            nlink = 2 + self.namespace.subdirectory_count(node.path)
            return {**common, "st_mode": self.owner.dir_mode(), "st_nlink": nlink, "st_size": 0}
        size = self.reader.size(node.ref)
        return {
            **common,
            "st_mode": self.owner.file_mode(),
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": self.reader.cache.block_size,
        }

    def readdir(self, path: str) -> Iterable[str]:
        """Names in a directory, streamed; asks the store only for Parquet record files."""
        return itertools.chain((".", ".."), self.namespace.listdir(path))

    def statfs(self) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": len(self.namespace) + self.namespace.directory_count,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

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
        file = self._handles.get(handle)
        if file is None:  # a read without open (some kernels, or fh lost): look it up
            node = self.namespace.lookup(path or "")
            if isinstance(node, Dir):
                raise IsADirectory(path or "/")
            file = node
        return self.reader.read(file, offset, size)

    def release(self, handle: int) -> None:
        with self._lock:
            self._handles.pop(handle, None)

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    # -- extended attributes: where a key's bytes come from -------------------

    def listxattr(self, path: str) -> list[str]:
        node = self.namespace.lookup(path)
        if isinstance(node, Dir):
            return []
        return [XATTR_PREFIX + name for name in _describe_ref(node).keys()]

    def getxattr(self, path: str, name: str) -> bytes:
        node = self.namespace.lookup(path)
        if isinstance(node, File) and name.startswith(XATTR_PREFIX):
            value = _describe_ref(node).get(name[len(XATTR_PREFIX) :])
            if value is not None:
                return value.encode()
        raise NoAttribute(f"{path}: {name}")


def _describe_ref(file: File) -> dict[str, str]:
    ref = file.ref
    describe = getattr(ref, "describe", None)  # references of a view (decoded chunks) describe themselves
    if describe is not None:
        return describe()
    if isinstance(ref, Inline):
        return {"kind": "inline", "length": str(len(ref.data))}
    if isinstance(ref, Range):
        return {"kind": "range", "url": redact_url(ref.url), "offset": str(ref.offset), "length": str(ref.length)}
    if isinstance(ref, Whole):
        return {"kind": "whole", "url": redact_url(ref.url)}
    return {}
