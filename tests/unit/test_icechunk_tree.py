"""The Icechunk tree without FUSE: manifest decoding, chunk keys, lazy manifests, refusals.

Repositories are real ones written by icechunk and zarr (tests/support/icechunk_repos.py).
"""

from __future__ import annotations

import shutil

import icechunk
import pytest

from refmount.errors import BackendError, ConfigError, InvalidReferences, NotADirectory, NotFound
from refmount.refs.icechunk.manifest import HEADER_SIZE, base32, decode_manifest, manifest_payload
from refmount.refs.icechunk.tree import IcechunkNamespace, chunk_key
from refmount.refs.model import Inline, Range
from refmount.refs.open import detect_format, open_reference_set
from refmount.refs.tree import Dir, File
from tests.support.icechunk_repos import build_repository, write_hdf5


@pytest.fixture
def repository(tmp_path):
    hdf5 = tmp_path / "data" / "source.h5"
    hdf5.parent.mkdir()
    _, chunks = write_hdf5(str(hdf5))
    root = tmp_path / "repo"
    build_repository(icechunk.local_filesystem_storage(str(root)), f"file://{hdf5}", f"file://{hdf5.parent}/",
                     icechunk.local_filesystem_store(str(hdf5.parent)), chunks)
    return root, hdf5, chunks


def test_each_kind_of_chunk_becomes_an_ordinary_reference(repository):
    root, hdf5, chunks = repository
    assert detect_format(str(root))[0] == "icechunk"
    info, tree = open_reference_set(str(root))
    assert info.format == "icechunk" and isinstance(tree, IcechunkNamespace) and info.mtime > 0
    for row, offset, size in chunks:  # virtual: the byte range of the HDF5 file, as kerchunk would reference it
        assert tree.lookup(f"sub/virt/c/{row}/0").ref == Range(f"file://{hdf5}", offset, size)
    native = tree.lookup("native/c/0").ref
    assert isinstance(native, Range) and native.url.startswith(f"{root}/chunks/") and native.offset == 0
    assert (root / "chunks" / native.url.rsplit("/", 1)[1]).stat().st_size == native.length
    assert isinstance(tree.lookup("small/c/0").ref, Inline)
    assert isinstance(tree.lookup("zarr.json"), File) and isinstance(tree.lookup("sub/virt/c"), Dir)
    assert sorted(tree.listdir("")) == ["native", "small", "sub", "zarr.json"]
    assert sorted(tree.listdir("small/c")) == ["0", "1"]
    assert tree.subdirectory_count("") == 3 and tree.subdirectory_count("sub/virt") == 1
    assert tree.subdirectory_count("sub/virt/c") == 3
    assert tree.extent(f"file://{hdf5}") == max(offset + size for _, offset, size in chunks)
    keys = dict(tree.iter_references())
    assert len(keys) == len(tree) == 5 + 4 + 2 + 3  # zarr.json files, then native, inline, virtual chunks
    with pytest.raises(NotFound):
        tree.lookup("small/c/2")
    with pytest.raises(NotADirectory):
        tree.listdir("native/zarr.json")


def test_manifests_are_read_only_when_an_array_is_first_used(repository):
    root, _, _ = repository
    _, tree = open_reference_set(str(root))
    shutil.rmtree(root / "manifests")
    assert sorted(tree.listdir("sub")) == ["virt", "zarr.json"]  # metadata was read at open
    assert tree.lookup("native/zarr.json").ref.size > 0
    assert list(tree.urls) == []
    with pytest.raises((ConfigError, BackendError)):
        tree.lookup("native/c/0")


def test_a_ref_selects_a_tag_or_a_snapshot_and_an_unknown_one_is_refused(repository):
    root, _, _ = repository
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(root)))
    first = repo.lookup_tag("v1")
    for ref in ("v1", first):
        _, tree = open_reference_set(str(root), ref=ref)
        assert tree.snapshot.snapshot_id == first
    _, tree = open_reference_set(str(root))
    assert tree.snapshot.snapshot_id == repo.lookup_branch("main") != first
    with pytest.raises(ConfigError, match="no branch, tag or snapshot 'v9'"):
        open_reference_set(str(root), ref="v9")
    with pytest.raises(ConfigError, match="cannot be opened"):
        open_reference_set(str(root), ref="0" * 20)


def test_a_ref_for_a_set_that_is_not_a_repository_is_refused(tmp_path):
    path = tmp_path / "set.json"
    path.write_text('{"version": 1, "refs": {".zgroup": "{}"}}')
    with pytest.raises(ConfigError, match="not an Icechunk repository"):
        open_reference_set(str(path), ref="main")


def test_damaged_or_foreign_manifests_are_refused_naming_the_file(repository):
    root, _, _ = repository
    _, tree = open_reference_set(str(root))
    node = next(node for node in tree.snapshot.nodes if node.path == "sub/virt")
    name = node.manifests[0]
    data = (root / "manifests" / name).read_bytes()
    payload = manifest_payload(data, name)
    assert len(list(decode_manifest(payload, name, node.node_id))) == 3
    assert list(decode_manifest(payload, name, base32(bytes(8)))) == []  # another array's: none of its chunks
    with pytest.raises(InvalidReferences, match="magic bytes"):
        manifest_payload(b"PK" + data[2:], name)
    with pytest.raises(InvalidReferences, match="format version 2"):
        manifest_payload(data[:36] + b"\x02" + data[37:], name)
    with pytest.raises(InvalidReferences, match="not a manifest"):
        manifest_payload(data[:37] + b"\x01" + data[38:], name)
    with pytest.raises(InvalidReferences, match="cannot be decompressed"):
        manifest_payload(data[:HEADER_SIZE] + b"\x00" * 16, name)
    with pytest.raises(InvalidReferences, match=f"manifest {name} is damaged"):
        list(decode_manifest(payload[: len(payload) // 2], name, node.node_id))


def test_base32_and_chunk_keys_spell_what_icechunk_and_zarr_spell():
    assert base32(bytes(12)) == "0" * 20
    assert base32(b"\xff" * 8) == "ZZZZZZZZZZZZY"  # 64 bits: the last 5-bit group is padded with zeros
    assert chunk_key({}, (1, 2)) == "c/1/2"
    assert chunk_key({"chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}}}, (1, 2)) == "c.1.2"
    assert chunk_key({"chunk_key_encoding": {"name": "v2"}}, (1, 2)) == "1.2"
    assert chunk_key({"chunk_key_encoding": {"name": "v2"}}, ()) == "0"
    assert chunk_key({}, ()) == "c"
    with pytest.raises(InvalidReferences):
        chunk_key({"chunk_key_encoding": {"name": "other"}}, (0,))
