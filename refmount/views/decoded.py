"""The decoded view: every chunk file holds its chunk's decoded bytes, every ``.zarray`` says no codecs.

Why it exists. The readers a mount is for — netCDF-C (``ncdump``, ``nccopy``,
Fortran and C models), GDAL, CDO/NCO — open a Zarr tree on a local path but
decode only the few codecs they were built with: netCDF-C 4.9 prints garbage
for a zlib chunk it has no filter for, GDAL refuses ``shuffle``. Under
``-o view=decoded`` the mount decodes with numcodecs (the codecs the
reference set names: zlib/gzip, shuffle, blosc, zstd, lz4, bz2, delta,
fixedscaleoffset, fletcher32, ...) and presents what every Zarr v2 reader
can read: ``compressor: null, filters: null``, and the same dtype, shape,
chunks, fill value, order, attributes and ``_ARRAY_DIMENSIONS``.

What a reader sees, per array:

* ``.zarray``: rewritten without codecs (also inside ``.zmetadata``).
* a chunk file: ``itemsize * prod(chunks)`` bytes, known without decoding, so
  ``stat`` and ``ls -l`` never touch the object store. The bytes are the
  chunk in the array's declared ``order`` (``C`` for nearly every array; an
  ``order: "F"`` array keeps ``F``, because that is how any Zarr reader
  interprets codec-free chunk bytes of that array). Zarr v2 chunks are
  full-shape, edge chunks included; a source that stores an edge chunk cut
  to the array's extent is padded with the fill value to the full shape.
* object dtypes (variable-length strings): unchanged, codec kept — their
  decoded form is Python objects, not bytes a reader could take raw.
* an array whose codec is not installed keeps its decoded ``.zarray`` and
  sizes, but every chunk read fails with EIO and a log line naming the
  codec: never wrong bytes. ``refmount inspect`` lists such arrays.

Lazy by construction. :class:`DecodedTree` wraps any tree (dict, compact
columns, Parquet record files) and rewrites an entry only when it is looked
up: it never enumerates the set, so a Parquet set still loads only the
record files a reader touches, and a million-key JSON set keeps its compact
columns instead of a per-key dict. A chunk lookup costs one lookup of the
chunk in the raw tree and, the first time its array is met, one of the
array's ``.zarray``; what the view makes of each array is remembered for the
:data:`ARRAYS_KEPT` most recently used arrays. Because nothing is known up
front, the log says what happens to an array when its metadata is first read
(one line per array; a warning for a codec that is not installed, or for
chunks larger than the decoded chunk cache) rather than summarising the
whole set at mount time.

Caching. A chunk is decoded once and kept in a :class:`DecodedChunkCache`
whose budget is a share of ``cache_size`` (see
:func:`refmount.views.present.cache_budgets`), so the kernel sweeping a
chunk file in 128 KiB pieces costs one fetch and one decode, and concurrent
readers of one chunk wait for a single decode (single flight). The share is
separate from the raw block cache on purpose: raw readahead streams many
blocks through the block cache and must not evict the decoded chunk a
reader is half-way through.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from refmount.errors import DecodeError, NotADirectory, NotFound, UnsupportedCodec
from refmount.metrics import Metrics
from refmount.once import OnceCache
from refmount.read.cache import BlockCache
from refmount.read.ranges import Part, clamp_read
from refmount.refs.model import Inline, Range, Reference, Whole, known_size
from refmount.refs.tree import Dir, File, Node, ReferenceTree
from refmount.urls import redact_url
from refmount.views.expansion import inflate_within
from refmount.views.nczarr import nczarr_compatible
from refmount.views.zarr_meta import ArrayCodec, codec_configs, decoded_zarray, is_object_dtype

log = logging.getLogger("refmount.decoded")

#: How many arrays' metadata the view keeps parsed (an array is a few hundred bytes here).
ARRAYS_KEPT = 4096

#: Largest decoded chunk the view produces (option ``max_decoded_chunk``); a larger one reads as EIO.
DEFAULT_MAX_DECODED_CHUNK = 256 << 20

#: ``.zmetadata`` of the view when the set's own cannot be read or rewritten.
EMPTY_CONSOLIDATED = b'{"metadata": {}, "zarr_consolidated_format": 1}'


@dataclass(frozen=True, slots=True)
class DecodedChunk:
    """A chunk file of the decoded view: the raw reference it is decoded from, and its array."""

    source: Reference
    array: ArrayCodec
    coords: tuple[int, ...]
    shown: tuple[int, ...] | None = None  # the chunk shape presented, when trimmed to the array's shape

    @property
    def size(self) -> int:
        if self.shown is not None:
            return self.array.dtype.itemsize * math.prod(self.shown)
        return self.array.chunk_nbytes

    def trimmed(self, data: bytes) -> bytes:
        """The full decoded chunk cut to the presented shape (the chunk of an array smaller than one chunk)."""
        if self.shown is None:
            return data
        full = np.frombuffer(data, self.array.dtype).reshape(self.array.chunks, order=self.array.order)
        return full[tuple(slice(0, n) for n in self.shown)].tobytes(order=self.array.order)

    def describe(self) -> dict[str, str]:
        """Extended attributes: where the bytes come from and how they are decoded."""
        info = {"kind": "decoded", "codecs": self.array.label, "decoded-length": str(self.size)}
        source = self.source
        if isinstance(source, Inline):
            info.update({"source": "inline", "length": str(len(source.data))})
        elif isinstance(source, Range):
            info.update({"source": "range", "url": redact_url(source.url), "offset": str(source.offset),
                         "length": str(source.length)})
        elif isinstance(source, Whole):
            info.update({"source": "whole", "url": redact_url(source.url)})
        if self.array.problems:
            info["error"] = "; ".join(self.array.problems)
        return info


def _in_place_of_a_reference(chunk: DecodedChunk) -> Reference:
    """A decoded chunk, standing where the raw tree has a reference.

    ``File.ref`` is typed as the three shapes of the reference model; a view
    adds a fourth that only its own reader (:class:`DecodingReader`, which
    checks for it first) and the description of a file ever look inside.
    """
    return cast(Reference, chunk)


# -- the lazy decoded tree ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ArrayView:
    """What the view makes of one directory of the raw tree."""

    is_array: bool  # the directory holds a .zarray (its chunks belong to it, not to an outer array)
    codec: ArrayCodec | None = None  # None: not an array, or an array presented raw
    zarray: Inline | None = None  # the rewritten .zarray; None: the raw one is shown
    shown_chunks: tuple[int, ...] | None = None  # chunks trimmed to the shape (see nczarr_compatible)

    @property
    def decoded_meta(self) -> dict[str, Any] | None:
        return json.loads(self.zarray.data) if self.zarray is not None else None


_NOT_AN_ARRAY = _ArrayView(is_array=False)
_PRESENTED_RAW = _ArrayView(is_array=True)


class DecodedTree:
    """Any reference tree, as the decoded view presents it; entries are rewritten as they are looked up.

    ``read_meta(key, ref)`` returns the bytes of a metadata key of the raw
    tree; it is only called for a ``.zarray``/``.zmetadata`` that is not inline.
    Listing, counts, extents and URLs are the raw tree's: the view renames
    nothing and adds nothing.
    """

    def __init__(
        self,
        raw: ReferenceTree,
        read_meta: Callable[[str, Reference], bytes],
        *,
        chunk_cache_capacity: int | None = None,
        arrays_kept: int = ARRAYS_KEPT,
        nczarr: bool = True,
    ) -> None:
        self.raw = raw
        self._nczarr = nczarr
        self._read_meta = read_meta
        self._chunk_cache_capacity = chunk_cache_capacity
        self._arrays: OnceCache[str, _ArrayView] = OnceCache(arrays_kept)
        self._consolidated: OnceCache[str, Reference] = OnceCache(1)

    # -- the tree interface --------------------------------------------------

    def lookup(self, path: str) -> Node:
        node = self.raw.lookup(path)
        if isinstance(node, Dir):
            return node
        shown = self._present(node.path, node.ref)
        return node if shown is node.ref else File(node.path, shown)

    @property
    def lookups_in_memory(self) -> bool:
        """As the raw tree's (an array's metadata is read once, as for any ``stat`` of its chunks)."""
        return bool(getattr(self.raw, "lookups_in_memory", False))

    def listdir(self, path: str) -> Iterable[str]:
        return self.raw.listdir(path)

    def subdirectory_count(self, path: str) -> int:
        return self.raw.subdirectory_count(path)

    def extent(self, url: str) -> int:
        return self.raw.extent(url)

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference) of the raw tree, as the view presents it (enumerates: the caller asked)."""
        for key, ref in self.raw.iter_references():
            yield key, self._present(key, ref)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.raw.iter_references())

    @property
    def urls(self) -> Iterable[str]:
        return self.raw.urls

    @property
    def directory_count(self) -> int:
        return self.raw.directory_count

    def __len__(self) -> int:
        return len(self.raw)

    # -- rewriting one entry -------------------------------------------------

    def _present(self, key: str, ref: Reference) -> Reference:
        """What the view shows for the raw ``ref`` at ``key``."""
        parent, _, name = key.rpartition("/")
        if name == ".zarray":
            return self._array(parent, ref).zarray or ref
        if key == ".zmetadata":
            return self._consolidated.get(key, lambda: self._rewrite_consolidated(ref))
        if name.startswith("."):
            return ref
        owner = self._owning_array(key)
        if owner is None or owner[0].codec is None:
            return ref
        codec = owner[0].codec
        coords = codec.coords_of(owner[1])
        if coords is None:
            return ref
        shown = owner[0].shown_chunks
        if shown is None and not codec.configs and known_size(ref) == codec.chunk_nbytes:
            return ref  # already what the view presents: served straight from the block cache
        return _in_place_of_a_reference(DecodedChunk(ref, codec, coords, shown))

    def _owning_array(self, key: str) -> tuple[_ArrayView, str] | None:
        """The deepest array whose directory holds ``key``, and the key relative to it."""
        directory = key
        while directory:
            directory = directory.rpartition("/")[0]
            array = self._array(directory)
            if array.is_array:
                return array, key[len(directory) + 1 :] if directory else key
        return None

    def _array(self, directory: str, zarray: Reference | None = None) -> _ArrayView:
        """What the view makes of ``directory``, read from its ``.zarray`` the first time it is asked."""
        return self._arrays.get(directory, lambda: self._read_array(directory, zarray))

    def _read_array(self, directory: str, ref: Reference | None) -> _ArrayView:
        key = f"{directory}/.zarray" if directory else ".zarray"
        if ref is None:
            try:
                node = self.raw.lookup(key)
            except (NotFound, NotADirectory):
                return _NOT_AN_ARRAY
            if isinstance(node, Dir):
                return _NOT_AN_ARRAY
            ref = node.ref
        name = directory or "/"
        try:
            meta = json.loads(ref.data if isinstance(ref, Inline) else self._read_meta(key, ref))
            if is_object_dtype(meta):
                ids = "+".join(str(c.get("id")) for c in codec_configs(meta)) or "none"
                log.info("decoded view: %s: object dtype %r keeps codecs %s", name, meta.get("dtype"), ids)
                return _PRESENTED_RAW
            codec = ArrayCodec.from_meta(directory, meta)
        except Exception as exc:  # noqa: BLE001 - an array the view cannot model stays raw, said loudly
            log.warning("decoded view: %s presented raw: cannot read its .zarray: %s", key, exc)
            return _PRESENTED_RAW
        self._log_array(name, codec)
        presented = decoded_zarray(meta)
        shown: tuple[int, ...] | None = None
        if self._nczarr:
            presented, shown = nczarr_compatible(presented)
        return _ArrayView(True, codec, Inline(json.dumps(presented, indent=4).encode()), shown)

    def _log_array(self, name: str, codec: ArrayCodec) -> None:
        """The one line an array gets in the log, when the view first reads its metadata."""
        if codec.problems:
            log.warning("decoded view: %s: %s; its chunks will read as EIO", name, "; ".join(codec.problems))
            return
        if not codec.configs:
            log.info("decoded view: %s: no codecs; a chunk holding the %d bytes of a full chunk is served as stored",
                     name, codec.chunk_nbytes)
            return
        capacity = self._chunk_cache_capacity
        if capacity is not None and codec.chunk_nbytes > capacity:
            log.warning(
                "decoded view: %s: chunks of %d bytes exceed the decoded chunk cache (%d bytes): each is decoded "
                "again for every read; raise cache_size", name, codec.chunk_nbytes, capacity,
            )
            return
        log.info("decoded view: %s: chunks decoded from %s, %d bytes each", name, codec.label, codec.chunk_nbytes)

    def _rewrite_consolidated(self, ref: Reference) -> Reference:
        """``.zmetadata`` with the decoded ``.zarray`` of every decoded array, so consolidated readers agree."""
        try:
            doc = json.loads(ref.data if isinstance(ref, Inline) else self._read_meta(".zmetadata", ref))
            metadata = doc.get("metadata", {})
            rewritten = 0
            for key in list(metadata):
                parent, _, name = key.rpartition("/")
                if name != ".zarray":
                    continue
                decoded = self._array(parent).decoded_meta  # the tree's own .zarray, as its chunks use
                if decoded is not None:
                    metadata[key] = decoded
                    rewritten += 1
        except Exception as exc:  # noqa: BLE001 - better no consolidated metadata than a wrong one
            log.warning("decoded view: .zmetadata could not be rewritten (%s); it is left out of the tree", exc)
            return Inline(EMPTY_CONSOLIDATED)
        return Inline(json.dumps(doc, indent=4).encode()) if rewritten else ref


# -- decoded chunk cache and reader -----------------------------------------------


class DecodedChunkCache:
    """Decoded chunks under a byte budget, LRU, with one decode per chunk in flight.

    A decode that fails is not remembered: its error goes to every reader
    waiting for it, and the next read tries again. ``decoded_hits`` counts
    reads served from the cache, ``decoded_waits`` reads that waited for
    another reader's decode (a read that arrives just as a decode finishes
    may be counted as a wait).
    """

    def __init__(
        self, capacity: int, metrics: Metrics | None = None, *, max_chunk: int = DEFAULT_MAX_DECODED_CHUNK
    ) -> None:
        self.max_chunk = max_chunk  # the largest chunk decoded at all (option max_decoded_chunk)
        self.metrics = metrics or Metrics()
        self._chunks: OnceCache[tuple[str, str], bytes] = OnceCache(capacity, len)
        self.metrics.gauge("decoded_cache_bytes", lambda: self._chunks.size)

    @property
    def capacity(self) -> int:
        return self._chunks.capacity

    @property
    def size(self) -> int:
        return self._chunks.size

    def get(self, key: tuple[str, str], produce: Callable[[], bytes]) -> bytes:
        cached = self._chunks.peek(key) is not None
        produced = False

        def decode() -> bytes:
            nonlocal produced
            produced = True
            return produce()

        try:
            return self._chunks.get(key, decode)
        finally:
            if not produced:
                self.metrics.add("decoded_hits" if cached else "decoded_waits")


class RawReader(Protocol):
    """What the decoded view needs of the reader of the raw set (:class:`refmount.read.reader.Reader`)."""

    @property
    def cache(self) -> BlockCache: ...
    @property
    def metrics(self) -> Metrics: ...
    def size(self, ref: Reference) -> int: ...
    def listed_size(self, ref: Reference) -> int | None: ...
    def read(self, file: File, offset: int, size: int) -> bytes: ...
    def read_parts(self, file: File, offset: int, size: int) -> list[Part]: ...
    def describe(self, file: File) -> dict[str, str]: ...
    def prefetch(self, refs: Iterable[Reference]) -> None: ...
    def close(self) -> None: ...


class DecodingReader:
    """The reader of the decoded view: decoded chunks from their cache, everything else from the raw reader."""

    def __init__(self, raw: RawReader, chunks: DecodedChunkCache, set_id: str = "") -> None:
        self.raw = raw
        self.chunks = chunks
        self.set_id = set_id

    @property
    def cache(self) -> BlockCache:
        return self.raw.cache

    @property
    def metrics(self) -> Metrics:
        return self.raw.metrics

    def size(self, ref: Reference) -> int:
        if isinstance(ref, DecodedChunk):
            return ref.size
        return self.raw.size(ref)

    def listed_size(self, ref: Reference) -> int | None:
        if isinstance(ref, DecodedChunk):
            return ref.size
        return self.raw.listed_size(ref)

    def read(self, file: File, offset: int, size: int) -> bytes:
        return b"".join(self.read_parts(file, offset, size))

    def read_parts(self, file: File, offset: int, size: int) -> list[Part]:
        ref = file.ref
        if not isinstance(ref, DecodedChunk):
            return self.raw.read_parts(file, offset, size)
        rng = clamp_read(offset, size, ref.size)
        if rng.length == 0:
            return []
        data = self.chunks.get((self.set_id, file.path), lambda: self._decode(file.path, ref))
        self.metrics.add_many((("reads", 1), ("bytes_delivered", rng.length)))
        return [memoryview(data)[rng.start : rng.stop]]

    def describe(self, file: File) -> dict[str, str]:
        """Extended attributes of ``file``: how a decoded chunk is made, or the raw reader's description."""
        ref = file.ref
        if isinstance(ref, DecodedChunk):
            return ref.describe()
        return self.raw.describe(file)

    def close(self) -> None:
        self.raw.close()

    def _decode(self, path: str, ref: DecodedChunk) -> bytes:
        try:
            if ref.array.problems:  # fail before fetching anything
                raise UnsupportedCodec(f"{path}: cannot decode: {'; '.join(ref.array.problems)}")
            limit = self.chunks.max_chunk
            if ref.size > limit:  # from the declared chunk shape: nothing fetched, nothing decoded
                raise DecodeError(
                    f"{path}: a decoded chunk of {ref.size} bytes exceeds max_decoded_chunk ({limit} bytes); "
                    "raise -o max_decoded_chunk to read it"
                )
            raw = self.raw.read(File(path, ref.source), 0, self.raw.size(ref.source))
            compressor = ref.array.configs[-1].get("id") if ref.array.configs else None
            inflated = inflate_within(path, compressor, raw, limit)
            data = ref.trimmed(ref.array.decode(path, raw, ref.coords, decompressed=inflated))
        except Exception:
            self.metrics.add("decode_errors")
            raise
        self.metrics.add_many((("decodes", 1), ("bytes_decoded", len(data))))
        return data

