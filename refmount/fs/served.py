"""What the FUSE adapter serves: one interface for a single set's tree and for the router over many.

The kernel's questions are answered by a :class:`ServedTree`. Two classes
implement it: :class:`refmount.fs.filesystem.RefFilesystem` (one reference
set) and :class:`refmount.fs.router.SetRouter` (one set at the root, or a
collection of sets as subdirectories, reloadable). The adapter holds a
``ServedTree`` and never needs to know which one it has.

Both build the same attribute dictionaries, so the owner, permission bits
and ``statfs`` figures are defined once here: a directory the router
synthesises (a collection's root, a set not loaded yet) must look exactly
like one a loaded set shows.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from refmount.read.ranges import Part

FILE_MODE = 0o444
DIR_MODE = 0o555
XATTR_PREFIX = "user.refmount."
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class ServedTree(Protocol):
    """A read-only tree as the kernel sees it, answering with the error taxonomy of :mod:`refmount.errors`."""

    def getattr(self, path: str) -> dict[str, Any]:
        """``stat`` fields of ``path``; NotFound (ENOENT) if it does not exist."""
        ...

    def getattr_of_handle(self, handle: int, path: str) -> dict[str, Any]:
        """``fstat``: the attributes of what ``handle`` opened, also once ``path`` is gone; else of ``path``."""
        ...

    def readdir(self, path: str) -> Iterable[str]:
        """Names in a directory, ``.`` and ``..`` first; NotADirectory (ENOTDIR) for a file."""
        ...

    def listing(self, path: str) -> Listing:
        """The entries of a directory (without ``.`` and ``..``) with the attributes known without I/O.

        NotFound or NotADirectory when called, like :meth:`readdir`; the entries stream.
        """
        ...

    def statfs(self) -> dict[str, int]: ...

    def access(self, path: str, mode: int) -> None:
        """Nothing if ``path`` exists and ``mode`` asks no write; ReadOnly (EROFS) if it does."""
        ...

    def open(self, path: str, flags: int) -> int:
        """A handle for reading a file; ReadOnly for write flags, IsADirectory for a directory."""
        ...

    def read(self, handle: int, size: int, offset: int, path: str | None = None) -> bytes:
        """Up to ``size`` bytes at ``offset``; an unknown handle (stateless open) reads ``path``."""
        ...

    def read_parts(self, handle: int, size: int, offset: int, path: str | None = None) -> list[Part]:
        """:meth:`read`'s bytes as parts in order, uncopied: the adapter copies them into libfuse's buffer."""
        ...

    def release(self, handle: int) -> None: ...

    def listxattr(self, path: str) -> list[str]: ...

    def getxattr(self, path: str, name: str) -> bytes:
        """One extended attribute; NoAttribute (ENODATA) if ``path`` has none of that name."""
        ...


#: The size or link count of an entry whose attributes are not known without I/O (the kernel asks for them).
UNKNOWN = -1

#: One entry of a :class:`Listing`: name, inode, kind (``stat.S_IFREG``, ``stat.S_IFDIR``, or 0 when not even
#: that is known without a lookup), and a file's size or a directory's link count, or :data:`UNKNOWN`.
Entry = tuple[str, int, int, int]


@dataclass(frozen=True)
class Listing:
    """A directory's entries with their attributes, for a listing that hands them to the kernel (readdirplus).

    ``file_attrs`` and ``dir_attrs`` are what ``getattr`` answers for every file
    and directory of this listing but for the fields each entry sets
    (:meth:`attrs`), so the attributes a listing gives are those ``stat``
    gives, by construction: one dictionary per listing, a tuple per entry.
    """

    file_attrs: dict[str, Any]
    dir_attrs: dict[str, Any]
    entries: Iterator[Entry]

    def attrs(self, entry: Entry) -> dict[str, Any] | None:
        """The ``getattr`` answer an entry stands for; None when its attributes are not known."""
        _, inode, kind, count = entry
        if count == UNKNOWN or not kind:
            return None
        if kind == stat.S_IFDIR:
            return {**self.dir_attrs, "st_ino": inode, "st_nlink": count}
        return {**self.file_attrs, "st_ino": inode, "st_size": count, "st_blocks": blocks_of(count)}


def blocks_of(size: int) -> int:
    """``st_blocks`` of a file of ``size`` bytes (512-byte units)."""
    return (size + 511) // 512


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

    def dir_attrs(self, inode: int, nlink: int, mtime: float) -> dict[str, Any]:
        """A directory's ``stat`` fields; ``nlink`` is 2 plus its subdirectories, as POSIX counts."""
        return {**self._common(inode, mtime), "st_mode": self.dir_mode(), "st_nlink": nlink, "st_size": 0}

    def file_attrs(self, inode: int, size: int, block_size: int, mtime: float) -> dict[str, Any]:
        """A file's ``stat`` fields; ``st_blksize`` tells readers the size of a fetch worth asking for."""
        return {
            **self._common(inode, mtime),
            "st_mode": self.file_mode(),
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": blocks_of(size),
            "st_blksize": block_size,
        }

    def _common(self, inode: int, mtime: float) -> dict[str, Any]:
        return {
            "st_ino": inode,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": mtime,
            "st_mtime": mtime,
            "st_ctime": mtime,
        }


def statfs_figures(files: int) -> dict[str, int]:
    """``statfs`` of a read-only tree: no blocks free or used, ``files`` nodes."""
    return {
        "f_bsize": 4096,
        "f_frsize": 4096,
        "f_blocks": 0,
        "f_bfree": 0,
        "f_bavail": 0,
        "f_files": files,
        "f_ffree": 0,
        "f_favail": 0,
        "f_namemax": 255,
    }
