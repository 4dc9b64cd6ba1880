"""The decoded view without FUSE: codecs, edge chunks, order, caching, errors, metadata, inspect.

Arrays are written by zarr itself (Zarr v2, numcodecs codecs) to local
files; the reference set points at those chunk files. The decoded tree is
copied out through :class:`RefFilesystem` exactly as a reader would see it,
and zarr, reading that copy, must return the arrays that were written.
"""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from refmount.cli.inspect import render, summarise
from refmount.config.options import MountConfig, parse_mount_options
from refmount.errors import ConfigError, DecodeError, UnsupportedCodec, errno_for
from refmount.fs.filesystem import RefFilesystem, TreeOwner
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.refs.model import Inline, Range
from refmount.refs.tree import Namespace
from refmount.store.policy import UrlPolicy
from refmount.views.decoded import DecodedChunk, DecodedChunkCache, DecodedTree
from refmount.views.present import cache_budgets, parse_view, present
from tests.support.backends import CountingBackend

KERNEL_READ = 128 << 10


def write_array(root: Path, name: str, data: np.ndarray, chunks, *, compressor=None, filters=None,
                order="C", fill_value=None, separator=".") -> None:
    """One Zarr v2 array written by zarr (the reference implementation of the format)."""
    array = zarr.create_array(
        store=str(root), name=name, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2,
        compressors=compressor, filters=filters, order=order, fill_value=fill_value,
        chunk_key_encoding={"name": "v2", "separator": separator},
    )
    array[...] = data


def references_of(root: Path, *, inline_chunks: bool = False) -> dict:
    """A reference set over a Zarr store on disk: metadata inline, chunks as byte ranges of their files."""
    refs = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if path.name.startswith(".") or inline_chunks:
            refs[key] = Inline(path.read_bytes())
        else:
            refs[key] = Range(str(path), 0, path.stat().st_size)
    return refs


class View:
    """A decoded view over references, with a counting backend, driven through RefFilesystem."""

    def __init__(self, refs: dict, *, decoded_budget: int = 64 << 20, delay: float = 0.0) -> None:
        self.backend = CountingBackend(delay=delay)
        raw = Namespace(refs)
        cache = BlockCache(self.backend, capacity=64 << 20, block_size=64 << 10, max_request=1 << 20)
        reader = Reader(raw, cache, self.backend, readahead=0)
        self.chunks = DecodedChunkCache(decoded_budget, reader.metrics)
        namespace, self.reader = present("decoded", raw, reader, chunk_cache=self.chunks)
        self.fs = RefFilesystem(namespace, self.reader, TreeOwner(0, 0), 1.0)
        self.metrics = reader.metrics

    def read(self, path: str, size: int = KERNEL_READ) -> bytes:
        """The whole file, read as the kernel does: in pieces of ``size``."""
        handle = self.fs.open(path, 0)
        try:
            length = self.fs.getattr(path)["st_size"]
            return b"".join(self.fs.read(handle, size, offset) for offset in range(0, length, size))
        finally:
            self.fs.release(handle)

    def copy_to(self, target: Path) -> Path:
        """Copy the tree out, as ``cp -r`` from the mount would."""
        for key in self.fs.namespace:
            out = target / key
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self.read("/" + key))
        return target

    def close(self) -> None:
        self.reader.close()


def zarray(view: View, name: str) -> dict:
    return json.loads(view.read(f"/{name}/.zarray"))


CODECS = {
    "zlib": dict(compressor=numcodecs.Zlib(level=5)),
    "gzip": dict(compressor=numcodecs.GZip()),
    "shuffle_zlib": dict(filters=[numcodecs.Shuffle(elementsize=4)], compressor=numcodecs.Zlib()),
    "blosc": dict(compressor=numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.BITSHUFFLE)),
    "zstd": dict(compressor=numcodecs.Zstd(level=3)),
    "lz4": dict(compressor=numcodecs.LZ4()),
    "bz2": dict(compressor=numcodecs.BZ2()),
    "delta_zlib": dict(filters=[numcodecs.Delta(dtype="<i4")], compressor=numcodecs.Zlib()),
    "scaleoffset": dict(filters=[numcodecs.FixedScaleOffset(offset=0, scale=10, dtype="<i4", astype="<i2")],
                        compressor=numcodecs.Zstd()),
    "fletcher_zlib": dict(filters=[numcodecs.Fletcher32()], compressor=numcodecs.Zlib()),
    "none": dict(),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("zarr") / "store.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["title"] = "decoded view"
    data = (np.arange(37 * 53, dtype="<i4").reshape(37, 53) * 7) % 1000 - 300
    arrays = {}
    for name, codecs in CODECS.items():
        write_array(root, name, data, (10, 16), fill_value=-1, **codecs)  # 37x53 over 10x16: edge chunks
        arrays[name] = data
    floats = np.random.default_rng(3).normal(size=(9, 5, 11)).astype(">f8")  # big-endian stays big-endian
    write_array(root, "big_endian", floats, (4, 5, 4), compressor=numcodecs.Zlib(), fill_value=float("nan"))
    arrays["big_endian"] = floats
    fortran = np.arange(7 * 9, dtype="<u2").reshape(7, 9)
    write_array(root, "fortran", fortran, (4, 4), compressor=numcodecs.Zlib(), order="F", fill_value=0)
    arrays["fortran"] = fortran
    nested = np.arange(30, dtype="<f4").reshape(5, 6)
    write_array(root, "grp/nested", nested, (2, 4), compressor=numcodecs.Zstd(), separator="/", fill_value=0)
    arrays["grp/nested"] = nested
    scalar = np.array(42.5, dtype="<f8")
    write_array(root, "scalar", scalar, (), compressor=numcodecs.Zlib())
    arrays["scalar"] = scalar
    for name in arrays:
        zarr.open_array(str(root / name), mode="r+", zarr_format=2).attrs.update(
            {"_ARRAY_DIMENSIONS": [f"d{i}" for i in range(arrays[name].ndim)], "units": "m"})
    return root, arrays


@pytest.fixture
def view(store):
    root, _ = store
    v = View(references_of(root))
    yield v
    v.close()


def test_decoded_tree_reads_equal_through_zarr(store, view, tmp_path):
    root, arrays = store
    copy = view.copy_to(tmp_path / "copy.zarr")
    group = zarr.open_group(str(copy), mode="r", zarr_format=2)
    for name, expected in arrays.items():
        meta = zarray(view, name)
        assert meta["compressor"] is None and meta["filters"] is None, name
        original = json.loads((root / name / ".zarray").read_text())
        if not original["shape"]:  # a scalar is shown as NCZarr writes one: one element of shape [1]
            original.update(shape=[1], chunks=[1])
            assert meta["_NCZARR_ARRAY"] == {"dimrefs": [], "storage": "scalar"}
            expected = expected.reshape(1)
        for field in ("shape", "chunks", "dtype", "order", "fill_value", "zarr_format"):
            assert meta[field] == original[field] or (field == "fill_value" and original[field] == "NaN"), field
        assert json.loads(view.read(f"/{name}/.zattrs")) == json.loads((root / name / ".zattrs").read_text())
        np.testing.assert_array_equal(group[name][...], expected, err_msg=name)
    assert group.attrs["title"] == "decoded view"


def test_chunk_sizes_come_from_metadata_without_fetching(store, view):
    _, arrays = store
    for key in view.fs.namespace:
        name, _, chunk = key.rpartition("/")
        if chunk.startswith(".") or name.startswith("grp"):
            continue
        meta = zarray(view, name)
        expected = np.dtype(meta["dtype"]).itemsize * int(np.prod(meta["chunks"]))
        assert view.fs.getattr("/" + key)["st_size"] == expected, key
    assert view.backend.gets == 0
    assert view.fs.getattr("/grp/nested/2/1")["st_size"] == 2 * 4 * 4


def test_chunk_bytes_are_the_decoded_chunk_in_declared_order(store, view):
    _, arrays = store
    edge = np.frombuffer(view.read("/zlib/3.3"), "<i4").reshape(10, 16)
    np.testing.assert_array_equal(edge[:7, :5], arrays["zlib"][30:37, 48:53])  # inside the array
    fortran = np.frombuffer(view.read("/fortran/1.0"), "<u2").reshape((4, 4), order="F")
    np.testing.assert_array_equal(fortran[:3, :4], arrays["fortran"][4:7, 0:4])
    assert np.frombuffer(view.read("/scalar/0"), "<f8")[0] == 42.5


def test_sweeping_a_chunk_in_kernel_sized_reads_decodes_it_once(tmp_path):
    root = tmp_path / "big.zarr"
    data = np.random.default_rng(1).integers(0, 50, size=(256, 512), dtype="<i4")  # 512 KiB chunks
    write_array(root, "v", data, (256, 512), compressor=numcodecs.Zlib())
    v = View(references_of(root))
    try:
        body = v.read("/v/0.0", KERNEL_READ)
        assert body == data.tobytes()
        assert v.metrics.get("decodes") == 1
        assert v.metrics.get("decoded_hits") == 3
        assert v.chunks.size == len(body)  # kept in its share of the budget
    finally:
        v.close()


def test_concurrent_readers_of_one_chunk_decode_once(tmp_path):
    root = tmp_path / "c.zarr"
    data = np.arange(128 * 1024, dtype="<f8").reshape(128, 1024)
    write_array(root, "v", data, (128, 1024), compressor=numcodecs.Blosc())
    v = View(references_of(root), delay=0.2)  # a slow store: all readers arrive while it decodes
    results: list[bytes] = []
    try:
        barrier = threading.Barrier(6)

        def reader(offset: int) -> None:
            handle = v.fs.open("/v/0.0", 0)
            barrier.wait()
            results.append(v.fs.read(handle, KERNEL_READ, offset))

        threads = [threading.Thread(target=reader, args=(i * KERNEL_READ,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert sorted(results) == sorted(data.tobytes()[i * KERNEL_READ:(i + 1) * KERNEL_READ] for i in range(6))
        assert v.metrics.get("decodes") == 1
        assert v.backend.gets == 1
    finally:
        v.close()


def test_chunk_larger_than_its_share_is_served_not_kept(tmp_path, caplog):
    root = tmp_path / "s.zarr"
    data = np.arange(64 * 64, dtype="<i8").reshape(64, 64)
    write_array(root, "v", data, (64, 64), compressor=numcodecs.Zlib())
    v = View(references_of(root), decoded_budget=1024)
    try:
        assert v.read("/v/0.0") == data.tobytes()
        assert v.chunks.size == 0
        assert "exceed the decoded chunk cache (1024 bytes)" in array_log_lines(caplog)["v"]
    finally:
        v.close()


def test_missing_codec_is_eio_naming_it_and_other_arrays_read(store, tmp_path, caplog):
    root, arrays = store
    refs = references_of(root)
    meta = json.loads(refs["zlib/.zarray"].data)
    meta["compressor"] = {"id": "zfpy", "mode": 4, "tolerance": 0.01}
    refs["zlib/.zarray"] = Inline(json.dumps(meta).encode())
    v = View(refs)
    try:
        assert zarray(v, "zlib")["compressor"] is None
        assert v.fs.getattr("/zlib/0.0")["st_size"] == 10 * 16 * 4  # listing still works
        with pytest.raises(UnsupportedCodec, match="zfpy") as caught:
            v.read("/zlib/0.0")
        assert errno_for(caught.value) == errno.EIO
        assert v.backend.gets == 0  # refused before fetching anything
        np.testing.assert_array_equal(np.frombuffer(v.read("/zstd/0.0"), "<i4").reshape(10, 16), arrays["zstd"][:10, :16])
        assert "codec 'zfpy' is not installed" in v.fs.getxattr("/zlib/0.0", "user.refmount.error").decode()
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == ["decoded view: zlib: codec 'zfpy' is not installed (no numcodecs codec has that id); "
                            "its chunks will read as EIO"]  # one line for the array, however many reads
    finally:
        v.close()


def test_corrupt_chunk_and_bad_checksum_are_eio_never_data(store, tmp_path):
    root, _ = store
    refs = references_of(root, inline_chunks=True)
    refs["zlib/0.0"] = Inline(b"not a zlib stream")
    good = bytearray(refs["fletcher_zlib/0.0"].data)
    raw = numcodecs.Zlib().decode(bytes(good))
    tampered = bytearray(raw)
    tampered[0] ^= 0xFF  # data changed, checksum kept
    refs["fletcher_zlib/0.0"] = Inline(numcodecs.Zlib().encode(bytes(tampered)))
    v = View(refs)
    try:
        with pytest.raises(DecodeError, match="zlib/0.0: codec 'zlib'"):
            v.read("/zlib/0.0")
        with pytest.raises(DecodeError, match="fletcher32"):
            v.read("/fletcher_zlib/0.0")
        assert errno_for(DecodeError("x")) == errno.EIO
        assert v.metrics.get("decode_errors") == 2
        assert v.read("/zlib/1.1")  # the rest of the array still reads
    finally:
        v.close()


def test_edge_chunk_stored_cut_to_the_array_is_padded_with_fill_value():
    meta = {"zarr_format": 2, "shape": [5, 7], "chunks": [4, 4], "dtype": "<i2", "fill_value": -9,
            "order": "C", "compressor": {"id": "zlib", "level": 1}, "filters": None}
    part = np.arange(1 * 3, dtype="<i2").reshape(1, 3)
    refs = {"a/.zarray": Inline(json.dumps(meta).encode()),
            "a/1.1": Inline(numcodecs.Zlib().encode(part.tobytes())),
            "a/0.0": Inline(numcodecs.Zlib().encode(b"\0" * 10))}  # neither full nor the edge shape
    v = View(refs)
    try:
        padded = np.frombuffer(v.read("/a/1.1"), "<i2").reshape(4, 4)
        expected = np.full((4, 4), -9, "<i2")
        expected[:1, :3] = part
        np.testing.assert_array_equal(padded, expected)
        with pytest.raises(DecodeError, match="decoded to 10 bytes"):
            v.read("/a/0.0")
    finally:
        v.close()


def inline_metadata_only(key, ref) -> bytes:
    raise AssertionError(f"{key}: metadata is inline in these sets, nothing should be read for it")


def array_log_lines(caplog) -> dict[str, str]:
    """The line the view logged for each array when it first read its metadata."""
    lines = {}
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("decoded view: "):
            name, _, rest = message[len("decoded view: "):].partition(": ")
            lines[name] = rest
    return lines


def test_object_dtype_keeps_its_codec(tmp_path, caplog):
    root = tmp_path / "o.zarr"
    names = np.array(["Zürich", "Oslo", "", "Reykjavík"], dtype=object)
    array = zarr.create_array(store=str(root), name="names", shape=(4,), chunks=(2,), dtype=str, zarr_format=2)
    array[...] = names
    refs = references_of(root)
    caplog.set_level("INFO", logger="refmount.decoded")
    tree = DecodedTree(Namespace(refs), inline_metadata_only)
    assert tree.lookup("names/.zarray").ref == refs["names/.zarray"] and tree.lookup("names/0").ref == refs["names/0"]
    assert "object dtype" in array_log_lines(caplog)["names"]
    v = View(refs)
    try:
        copy = v.copy_to(tmp_path / "copy.zarr")
        assert list(zarr.open_array(str(copy / "names"), mode="r", zarr_format=2)[...]) == list(names)
    finally:
        v.close()


def test_uncompressed_full_chunks_pass_through_and_consolidated_metadata_is_rewritten(store, caplog):
    root, _ = store
    refs = references_of(root)
    consolidated = {"zarr_consolidated_format": 1,
                    "metadata": {k: json.loads(r.data) for k, r in refs.items() if isinstance(r, Inline)}}
    refs[".zmetadata"] = Inline(json.dumps(consolidated).encode())
    caplog.set_level("INFO", logger="refmount.decoded")
    tree = DecodedTree(Namespace(refs), inline_metadata_only)
    assert tree.lookup("none/0.0").ref is refs["none/0.0"]  # no codec, full size: the raw reference itself
    assert isinstance(tree.lookup("none/3.3").ref, Range)
    assert isinstance(tree.lookup("zlib/0.0").ref, DecodedChunk)
    logged = array_log_lines(caplog)
    assert logged["none"].startswith("no codecs") and logged["zlib"].startswith("chunks decoded from zlib")
    metadata = json.loads(tree.lookup(".zmetadata").ref.data)["metadata"]
    assert metadata["zstd/.zarray"]["compressor"] is None and metadata["zstd/.zarray"]["filters"] is None
    assert metadata["zstd/.zattrs"] == json.loads(refs["zstd/.zattrs"].data)


class RecordingTree:
    """A dict tree that records every question asked of it, to show what the view touches."""

    def __init__(self, refs: dict) -> None:
        self.inner = Namespace(refs)
        self.lookups: list[str] = []
        self.enumerations: list[str] = []

    def lookup(self, path):
        self.lookups.append(path.strip("/"))
        return self.inner.lookup(path)

    def listdir(self, path):
        self.enumerations.append(f"listdir {path}")
        return self.inner.listdir(path)

    def iter_references(self):
        self.enumerations.append("iter_references")
        return self.inner.iter_references()

    def __iter__(self):
        self.enumerations.append("iter")
        return iter(self.inner)

    @property
    def urls(self):
        self.enumerations.append("urls")
        return self.inner.urls

    def subdirectory_count(self, path):
        return self.inner.subdirectory_count(path)

    def extent(self, url):
        return self.inner.extent(url)

    @property
    def directory_count(self):
        return self.inner.directory_count

    def __len__(self):
        return len(self.inner)


def test_the_view_is_lazy_a_chunk_lookup_reads_only_its_arrays_metadata(store):
    root, arrays = store
    recording = RecordingTree(references_of(root))
    backend = CountingBackend()
    cache = BlockCache(backend, capacity=8 << 20, block_size=64 << 10, max_request=1 << 20)
    reader = Reader(recording.inner, cache, backend, readahead=0)
    tree, view_reader = present("decoded", recording, reader)
    try:
        assert recording.lookups == [] and recording.enumerations == [] and backend.gets == 0
        chunk = tree.lookup("zstd/1.2")
        assert isinstance(chunk.ref, DecodedChunk) and chunk.ref.coords == (1, 2)
        assert recording.lookups == ["zstd/1.2", "zstd/.zarray"]
        recording.lookups.clear()
        assert isinstance(tree.lookup("zstd/3.0").ref, DecodedChunk)
        assert recording.lookups == ["zstd/3.0"]  # the array's metadata is remembered
        recording.lookups.clear()
        assert isinstance(tree.lookup("grp/nested/2/1").ref, DecodedChunk)  # "/" separator: chunk dirs first
        assert recording.lookups == ["grp/nested/2/1", "grp/nested/2/.zarray", "grp/nested/.zarray"]
        expected = np.frombuffer(view_reader.read(chunk, 0, chunk.ref.size), "<i4").reshape(10, 16)
        np.testing.assert_array_equal(expected, arrays["zstd"][10:20, 32:48])
        assert recording.enumerations == [] and backend.gets == 1  # the one chunk read
    finally:
        view_reader.close()


def test_array_metadata_is_remembered_for_a_bounded_number_of_arrays(store):
    root, _ = store
    recording = RecordingTree(references_of(root))
    tree = DecodedTree(recording, inline_metadata_only, arrays_kept=2)
    for name in ("zlib", "gzip", "zstd"):
        tree.lookup(f"{name}/0.0")
    recording.lookups.clear()
    tree.lookup("zstd/0.1")
    tree.lookup("zlib/0.1")  # pushed out by the third array: read again
    assert recording.lookups == ["zstd/0.1", "zlib/0.1", "zlib/.zarray"]


def test_decoding_reader_describes_decoded_chunks(view):
    info = view.reader.describe(view.fs.namespace.lookup("zlib/1.1"))
    assert info["kind"] == "decoded" and info["codecs"] == "zlib" and info["decoded-length"] == str(10 * 16 * 4)
    assert info["source"] == "range" and info["url"].endswith("zlib/1.1")


def test_view_option_and_budget_split():
    assert parse_view("Decoded") == "decoded" and parse_view("raw") == "raw"
    with pytest.raises(ValueError, match="raw or decoded"):
        parse_view("plain")
    values, _ = parse_mount_options("view=decoded,cache_size=64M")
    assert MountConfig.build("r.json", "/mnt", values).view == "decoded"
    assert MountConfig.build("r.json", "/mnt", {}).view == "raw"
    with pytest.raises(ConfigError, match="view"):
        parse_mount_options("view=sideways")
    assert cache_budgets("raw", 1 << 30, 1 << 20) == (1 << 30, 0)
    assert cache_budgets("decoded", 1 << 30, 1 << 20) == (1 << 29, 1 << 29)
    assert cache_budgets("decoded", 3 << 20, 2 << 20) == (2 << 20, 1 << 20)  # raw keeps one block
    assert sum(cache_budgets("decoded", 12345678, 1 << 20)) == 12345678


def test_inspect_lists_unavailable_codecs_and_kept_object_arrays(tmp_path):
    meta = {"zarr_format": 2, "shape": [4], "chunks": [2], "fill_value": None, "order": "C"}
    refs = {
        ".zgroup": Inline(b'{"zarr_format": 2}'),
        "lossy/.zarray": Inline(json.dumps({**meta, "dtype": "<f4", "compressor": {"id": "zfpy"}, "filters": None}).encode()),
        "scaled/.zarray": Inline(json.dumps({**meta, "dtype": "<f8", "compressor": None, "filters": [
            {"id": "fixedscaleoffset", "offset": 0, "scale": 100, "dtype": "<f8", "astype": "<i4"}]}).encode()),
        "names/.zarray": Inline(json.dumps({**meta, "dtype": "|O", "compressor": None,
                                            "filters": [{"id": "vlen-utf8"}]}).encode()),
    }
    summary = summarise("refs.json", refs, Namespace(refs), UrlPolicy())
    by_name = {a.name: a for a in summary.arrays}
    assert by_name["lossy"].missing_codecs == ["zfpy"]
    assert by_name["scaled"].missing_codecs == []  # needs arguments, and has them: available
    assert by_name["names"].decoded_view.startswith("keeps codec")
    text = render(summary)
    assert "MISSING CODEC: zfpy" in text and "keeps codec vlen-utf8 (object dtype)" in text
