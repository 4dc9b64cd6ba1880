"""The immutable tree a reference set presents: files, implied directories, inodes.

Built once per reference set and never changed while mounted, so lookups
need no locks. Directories are implied by key prefixes (``temp/0.0`` implies
``temp``); a key that is both a file and the prefix of another key cannot be
presented as a POSIX tree and is refused, naming both keys. That rule is
:func:`implied_directories`, used by every tree implementation.

Inode numbers are derived from the key by hashing, not by numbering in load
order, so the same key keeps its inode across remounts and reloads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from refmount.errors import InvalidReferences, NotADirectory, NotFound
from refmount.refs.model import Range, Reference, Whole

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
    """What the filesystem, reader and views need of a tree: the one interface every signature names.

    Implemented by :class:`Namespace` (a dict),
    :class:`refmount.refs.compact.CompactNamespace` (large JSON sets, column arrays) and
    :class:`refmount.refs.parquet.tree.ParquetNamespace` (Parquet layout, record files on demand).

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


def implied_directories(
    parents: Iterable[str],
    is_file: Callable[[str], bool],
    file_in: Callable[[str], str],
) -> dict[str, tuple[str, ...]]:
    """Every directory a set implies, each with its subdirectory names (sorted): the one rule of every tree.

    ``parents`` are the directories that directly hold files (``temp`` for
    ``temp/0.0``); each implies its ancestors up to the root ``""``, which
    always exists. A directory that is also a file (``is_file``) cannot be
    presented as a POSIX tree and is refused, naming both keys: the file and
    a key inside it (a subdirectory, else the file ``file_in(directory)``
    names). Taking the distinct parents rather than every key keeps this one
    pass per directory, however many chunks each holds.
    """
    subdirs: dict[str, set[str]] = {"": set()}
    for directory in parents:
        child = directory
        while child:
            subdirs.setdefault(child, set())
            parent, _, name = child.rpartition("/")
            known = parent in subdirs
            subdirs.setdefault(parent, set()).add(name)
            if known:  # its own ancestors were recorded when it was
                break
            child = parent
    for directory, names in subdirs.items():
        if directory and is_file(directory):
            example = min(names) if names else file_in(directory)
            raise InvalidReferences(f"is a file and also the directory of {directory}/{example!s}", key=directory)
    return {directory: tuple(sorted(names)) for directory, names in subdirs.items()}


class Namespace:
    """Lookup, listing and per-URL extents for one reference set, held in a dict."""

    #: Lookups answer from memory: a listing may look up each of its entries (for readdirplus).
    lookups_in_memory = True

    def __init__(self, refs: Mapping[str, Reference]) -> None:
        self._files: dict[str, Reference] = dict(refs)
        files_in: dict[str, list[str]] = {}
        extents: dict[str, int] = {}
        for key, ref in self._files.items():
            parent, _, name = key.rpartition("/")
            names = files_in.get(parent)
            if names is None:
                files_in[parent] = [name]
            else:
                names.append(name)
            if isinstance(ref, Range):
                end = ref.offset + ref.length
                if end > extents.get(ref.url, 0):
                    extents[ref.url] = end
        subdirs = implied_directories(files_in, self._files.__contains__, lambda directory: files_in[directory][0])
        self._dirs: dict[str, tuple[str, ...]] = {
            directory: tuple(sorted((*names, *files_in.get(directory, ())))) for directory, names in subdirs.items()
        }
        self._subdirs: dict[str, int] = {directory: len(names) for directory, names in subdirs.items() if names}
        self._extents = extents

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
