"""The immutable tree a reference set presents: files, implied directories, inodes.

Built once per reference set and never changed while mounted, so lookups
need no locks. Directories are implied by key prefixes (``temp/0.0`` implies
``temp``); a key that is both a file and the prefix of another key cannot be
presented as a POSIX tree and is refused, naming both keys.

Inode numbers are derived from the key by hashing, not by numbering in load
order, so the same key keeps its inode across remounts and reloads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from refmount.errors import InvalidReferences, NotADirectory, NotFound
from refmount.refs.model import Inline, Range, Reference, Whole

ROOT_INODE = 1


def inode_of(path: str) -> int:
    """A stable 63-bit inode for a key path ('' is the root)."""
    if not path:
        return ROOT_INODE
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & ((1 << 63) - 1)) | 2


@dataclass(frozen=True, slots=True)
class File:
    path: str
    ref: Reference

    @property
    def inode(self) -> int:
        return inode_of(self.path)


@dataclass(frozen=True, slots=True)
class Dir:
    path: str
    children: tuple[str, ...]

    @property
    def inode(self) -> int:
        return inode_of(self.path)


Node = File | Dir


class ReferenceTree(Protocol):
    """What the filesystem and reader need of a tree; implemented by :class:`Namespace` (a dict),
    :class:`refmount.refs.compact.CompactNamespace` (large JSON sets, column arrays) and
    :class:`refmount.refs.parquet.ParquetNamespace` (Parquet layout, record files on demand).

    ``listdir`` may return a lazy iterable: it raises NotFound/NotADirectory when called,
    and yields names as they are produced. ``Dir.children`` is informative only.
    """

    def lookup(self, path: str) -> Node: ...
    def listdir(self, path: str) -> Iterable[str]: ...
    def subdirectory_count(self, path: str) -> int: ...
    def extent(self, url: str) -> int: ...
    def iter_references(self) -> Iterator[tuple[str, Reference]]: ...
    @property
    def urls(self) -> Iterable[str]: ...
    @property
    def directory_count(self) -> int: ...
    def __len__(self) -> int: ...


class Namespace:
    """Lookup, listing and per-URL extents for one reference set."""

    def __init__(self, refs: Mapping[str, Reference]) -> None:
        self._files: dict[str, Reference] = dict(refs)
        children: dict[str, set[str]] = {"": set()}
        extents: dict[str, int] = {}
        for key, ref in self._files.items():
            parent, _, name = key.rpartition("/")
            _add_child(children, parent, name)
            if isinstance(ref, Range):
                end = ref.offset + ref.length
                if end > extents.get(ref.url, 0):
                    extents[ref.url] = end
        for directory in children:
            if directory in self._files:
                example = next(iter(children[directory]))
                raise InvalidReferences(
                    f"is a file and also the directory of {directory}/{example!s}", key=directory
                )
        self._dirs: dict[str, tuple[str, ...]] = {d: tuple(sorted(names)) for d, names in children.items()}
        self._extents = extents
        self._subdirs: dict[str, int] = {}
        for directory in self._dirs:
            if directory:
                parent = directory.rpartition("/")[0]
                self._subdirs[parent] = self._subdirs.get(parent, 0) + 1

    # -- queries -------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """The node at ``path`` (``/a/b`` or ``a/b``); NotFound if there is none."""
        key = path.strip("/")
        ref = self._files.get(key)
        if ref is not None:
            return File(key, ref)
        names = self._dirs.get(key)
        if names is not None:
            return Dir(key, names)
        raise NotFound(path)

    def listdir(self, path: str) -> tuple[str, ...]:
        node = self.lookup(path)
        if isinstance(node, File):
            raise NotADirectory(path)
        return node.children

    def subdirectory_count(self, path: str) -> int:
        """How many directories ``path`` holds (for a directory's link count)."""
        return self._subdirs.get(path.strip("/"), 0)

    def extent(self, url: str) -> int:
        """The end of the furthest byte any range reference reads from ``url``."""
        return self._extents.get(url, 0)

    @property
    def urls(self) -> Iterable[str]:
        """Every URL referenced by a range or whole-object reference."""
        seen = set(self._extents)
        seen.update(ref.url for ref in self._files.values() if isinstance(ref, Whole))
        return seen

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference) of the set."""
        return iter(self._files.items())

    @property
    def directory_count(self) -> int:
        return len(self._dirs)

    @staticmethod
    def size_if_known(ref: Reference) -> int | None:
        """The size of a reference without asking the store (None for a whole object)."""
        if isinstance(ref, Inline):
            return len(ref.data)
        if isinstance(ref, Range):
            return ref.length
        return None


def _add_child(children: dict[str, set[str]], parent: str, name: str) -> None:
    """Record ``name`` in ``parent`` and ``parent`` in its own parent, up to the first known directory."""
    while True:
        known = parent in children
        children.setdefault(parent, set()).add(name)
        if known or not parent:
            return
        parent, _, name = parent.rpartition("/")
