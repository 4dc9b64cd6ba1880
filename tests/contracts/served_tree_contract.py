"""The served-tree contract: one test body for every tree the FUSE adapter can be given.

A :class:`refmount.fs.served.ServedTree` is what the kernel's questions are
answered by: the filesystem of one reference set, or the router over one set
or a collection of sets. Whatever the adapter holds, a file must stat, list,
read, refuse writes and describe itself the same way, so the same body runs
against each. Subclass :class:`ServedTreeContract`, implement
:meth:`make_served` (returning the tree and the path prefix the set is shown
under), and the whole contract runs against it.

The set uses inline references and byte ranges of local files in
``tmp_path``, so no server is needed and the expected bytes are known.
"""

from __future__ import annotations

import base64
import errno
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refmount.fs.served import XATTR_PREFIX, ServedTree
from tests.support.served import errno_of

BLOCK_SIZE = 64 << 10
DATA_SIZE = 200_000


@dataclass
class Dataset:
    """A reference set on disk and what each of its paths must show."""

    refs: dict[str, Any]  # the kerchunk "refs" of the set
    files: dict[str, bytes]  # key -> the bytes the file must read as
    directories: dict[str, set[str]]  # directory -> its children
    data_path: Path
    whole_path: Path

    @property
    def nodes(self) -> int:
        return len(self.files) + len(self.directories)


def make_dataset(base: Path) -> Dataset:
    generator = random.Random(7)
    data = generator.randbytes(DATA_SIZE)
    whole = generator.randbytes(5000)
    binary = generator.randbytes(300)
    data_path, whole_path = base / "data.bin", base / "whole.bin"
    data_path.write_bytes(data)
    whole_path.write_bytes(whole)
    refs: dict[str, Any] = {
        ".zgroup": '{"zarr_format": 2}',
        "a/text": "hello, served tree",
        "a/binary": "base64:" + base64.b64encode(binary).decode(),
        "a/chunk": [str(data_path), 1234, 150_000],
        "a/b/tail": [str(data_path), DATA_SIZE - 1000, 1000],
        "a/b/whole": [str(whole_path)],
    }
    files = {
        ".zgroup": b'{"zarr_format": 2}',
        "a/text": b"hello, served tree",
        "a/binary": binary,
        "a/chunk": data[1234 : 1234 + 150_000],
        "a/b/tail": data[-1000:],
        "a/b/whole": whole,
    }
    directories = {"": {".zgroup", "a"}, "a": {"text", "binary", "chunk", "b"}, "a/b": {"tail", "whole"}}
    return Dataset(refs, files, directories, data_path, whole_path)


class ServedTreeContract:
    """Subclasses provide :meth:`make_served` (and :meth:`statfs_files` if they show more than the set)."""

    def make_served(self, dataset: Dataset, tmp_path: Path) -> Iterator[tuple[ServedTree, str]]:  # pragma: no cover
        """Yield ``(tree, prefix)``: the tree and the path the set's root is shown at ('' for the mount root)."""
        raise NotImplementedError

    def statfs_files(self, dataset: Dataset) -> int:
        """The nodes statfs must count once the set is loaded."""
        return dataset.nodes

    @pytest.fixture
    def dataset(self, tmp_path: Path) -> Dataset:
        return make_dataset(tmp_path)

    @pytest.fixture
    def served(self, dataset: Dataset, tmp_path: Path) -> Iterator[tuple[ServedTree, str]]:
        yield from self.make_served(dataset, tmp_path)

    @pytest.fixture
    def tree(self, served: tuple[ServedTree, str]) -> ServedTree:
        return served[0]

    @pytest.fixture
    def at(self, served: tuple[ServedTree, str]) -> Callable[[str], str]:
        """The served path of a key or directory of the set."""
        prefix = served[1]
        return lambda key: f"{prefix}/{key}" if key else (prefix or "/")

    # -- attributes -------------------------------------------------------------

    def test_files_show_their_size_and_read_only_mode(self, tree, at, dataset):
        for key, data in dataset.files.items():
            attrs = tree.getattr(at(key))
            assert stat.S_ISREG(attrs["st_mode"]), key
            assert stat.S_IMODE(attrs["st_mode"]) == 0o444, key
            assert attrs["st_size"] == len(data), key
            assert attrs["st_nlink"] == 1, key
            assert attrs["st_blocks"] == (len(data) + 511) // 512, key
            assert attrs["st_blksize"] == BLOCK_SIZE, key
            assert (attrs["st_uid"], attrs["st_gid"]) == (os.getuid(), os.getgid()), key

    def test_directories_link_to_their_subdirectories(self, tree, at, dataset):
        tree.getattr(at(".zgroup"))  # a collection shows a set's root with 2 links until the set is loaded
        for directory, links in (("", 3), ("a", 3), ("a/b", 2)):
            attrs = tree.getattr(at(directory))
            assert stat.S_ISDIR(attrs["st_mode"]), directory
            assert stat.S_IMODE(attrs["st_mode"]) == 0o555, directory
            assert attrs["st_nlink"] == links, directory
            assert attrs["st_size"] == 0, directory

    def test_inodes_are_distinct(self, tree, at, dataset):
        paths = [*dataset.files, *dataset.directories]
        assert len({tree.getattr(at(path))["st_ino"] for path in paths}) == len(paths)

    def test_an_open_handle_stats_as_its_file(self, tree, at, dataset):
        handle = tree.open(at("a/chunk"), os.O_RDONLY)
        try:
            assert tree.getattr_of_handle(handle, at("a/chunk")) == tree.getattr(at("a/chunk"))
        finally:
            tree.release(handle)
        assert tree.getattr_of_handle(0, at("a/b/tail"))["st_size"] == 1000  # no such handle: by path

    # -- listing ------------------------------------------------------------------

    def test_listings_start_with_dot_entries_then_each_child_once(self, tree, at, dataset):
        for directory, children in dataset.directories.items():
            names = list(tree.readdir(at(directory)))
            assert names[:2] == [".", ".."], directory
            assert sorted(names[2:]) == sorted(children), directory

    def test_listings_give_each_entry_the_attributes_getattr_gives_it(self, tree, at, dataset):
        """What a listing hands the kernel (readdirplus) is what ``stat`` answers, field for field."""
        bare = set()
        for directory, children in dataset.directories.items():
            listing = tree.listing(at(directory))
            entries = list(listing.entries)
            assert sorted(name for name, *_ in entries) == sorted(children), directory
            for entry in entries:
                name, inode, kind, _ = entry
                key = f"{directory}/{name}" if directory else name
                answer = tree.getattr(at(key))
                assert (inode, kind) == (answer["st_ino"], stat.S_IFMT(answer["st_mode"])), key
                attrs = listing.attrs(entry)
                if attrs is None:
                    bare.add(key)
                else:
                    assert attrs == answer, key
        # Only a file whose size costs a request to the store goes without: the whole-object reference.
        assert bare == {key for key, value in dataset.refs.items() if isinstance(value, list) and len(value) == 1}

    def test_a_listing_of_a_file_or_of_nothing_has_its_errno(self, tree, at):
        assert errno_of(lambda: tree.listing(at("a/chunk"))) == errno.ENOTDIR
        assert errno_of(lambda: tree.listing(at("nothing"))) == errno.ENOENT

    # -- data -------------------------------------------------------------------

    def test_reads_at_odd_offsets_return_the_referenced_bytes(self, tree, at, dataset):
        for key, data in dataset.files.items():
            end = len(data)
            handle = tree.open(at(key), os.O_RDONLY)
            try:
                for offset, size in ((0, 1), (1, 4095), (3, end), (4093, 65537), (65535, 3), (BLOCK_SIZE + 1, 70_001),
                                     (end - 3, 10), (end, 5), (end + 100, 5)):
                    got = tree.read(handle, size, offset, at(key))
                    assert got == data[offset : offset + size], (key, offset, size)
            finally:
                tree.release(handle)

    def test_a_read_without_an_open_handle_reads_by_path(self, tree, at, dataset):
        assert tree.read(987_654, 100, 7, at("a/chunk")) == dataset.files["a/chunk"][7:107]

    def test_writes_are_refused_as_read_only(self, tree, at):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_APPEND, os.O_RDONLY | os.O_CREAT,
                      os.O_RDONLY | os.O_TRUNC):
            assert errno_of(tree.open, at("a/chunk"), flags) == errno.EROFS, flags
        assert errno_of(lambda: tree.access(at("a/chunk"), os.W_OK)) == errno.EROFS
        assert errno_of(lambda: tree.access(at("a"), os.R_OK | os.W_OK)) == errno.EROFS
        assert errno_of(lambda: tree.access(at("a/chunk"), os.R_OK)) == 0
        assert errno_of(lambda: tree.access(at("a/b"), os.R_OK | os.X_OK)) == 0

    def test_wrong_kinds_and_missing_paths_have_their_errnos(self, tree, at):
        assert errno_of(lambda: tree.open(at("a"), os.O_RDONLY)) == errno.EISDIR
        assert errno_of(lambda: list(tree.readdir(at("a/chunk")))) == errno.ENOTDIR
        for missing in ("nothing", "a/nothing", "a/chunk/deeper", "a/b/c/d"):
            assert errno_of(tree.getattr, at(missing)) == errno.ENOENT, missing
            assert errno_of(tree.open, at(missing), os.O_RDONLY) == errno.ENOENT, missing
            assert errno_of(tree.access, at(missing), os.R_OK) == errno.ENOENT, missing
        assert errno_of(lambda: list(tree.readdir(at("nothing")))) == errno.ENOENT

    # -- the filesystem and extended attributes ------------------------------------

    def test_statfs_counts_every_node_and_no_free_space(self, tree, at, dataset):
        tree.getattr(at(".zgroup"))  # load the set
        figures = tree.statfs()
        assert figures["f_files"] == self.statfs_files(dataset)
        assert (figures["f_bsize"], figures["f_namemax"]) == (4096, 255)
        assert figures["f_bfree"] == figures["f_bavail"] == figures["f_ffree"] == 0

    def test_xattrs_say_where_the_bytes_come_from(self, tree, at, dataset):
        def attributes(key: str) -> dict[str, bytes]:
            names = tree.listxattr(at(key))
            assert all(name.startswith(XATTR_PREFIX) for name in names), names
            return {name[len(XATTR_PREFIX) :]: tree.getxattr(at(key), name) for name in names}

        assert attributes("a/chunk") == {"kind": b"range", "url": str(dataset.data_path).encode(),
                                         "offset": b"1234", "length": b"150000"}
        assert attributes("a/binary") == {"kind": b"inline", "length": b"300"}
        assert attributes("a/b/whole") == {"kind": b"whole", "url": str(dataset.whole_path).encode()}
        assert attributes("a") == {}
        assert errno_of(lambda: tree.getxattr(at("a/chunk"), XATTR_PREFIX + "nothing")) == errno.ENODATA
        assert errno_of(lambda: tree.getxattr(at("a/chunk"), "security.selinux")) == errno.ENODATA
        assert errno_of(lambda: tree.getxattr(at("a"), XATTR_PREFIX + "kind")) == errno.ENODATA
        assert errno_of(lambda: tree.listxattr(at("nothing"))) == errno.ENOENT
