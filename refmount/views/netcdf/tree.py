"""The netCDF view of one reference set: a directory of ``.nc`` files, one per group, and their reader.

``-o view=netcdf`` shows a set as ``NAME.nc`` (its root group) and
``NAME.GROUP.nc`` for each subgroup (``era5.forecast.nc``; nested groups
join their path with dots). Nothing is converted or stored: a file's plan
(header and layout, :mod:`.plan`) is made from the group's metadata the
first time the file is looked up, and its data is read from the chunks on
demand (:mod:`.reading`). Chunks are decoded by the decoded view's
:class:`~refmount.views.decoded.DecodedTree`/:class:`~refmount.views.decoded.DecodingReader`
(built without its NCZarr adjustments, so chunks keep their stored shape)
and kept in the mount's one decoded-chunk cache.

Readahead is at chunk granularity: a read that continues where the last
read of the file ended starts decoding, on a small thread pool, the chunks
of the next window of the file (their stored bytes fetched first, neighbours
in one GET), so ``cat`` or ``nccopy`` streams while one chunk is being copied
out. The raw reader's own readahead is off under this view (see
:mod:`refmount.mount.assemble`): only the view knows which chunks come next. A random read, and a run shorter than
:data:`READAHEAD_AFTER`, decodes only its own chunks.

Variable-length strings need their longest length for the header; it is
read from the data when the array's stored chunks are at most
:data:`STRING_SCAN_LIMIT` bytes, else the array is left out with that reason.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from refmount.errors import InvalidReferences, NotADirectory, NotFound
from refmount.metrics import Metrics
from refmount.once import OnceCache
from refmount.read.cache import BlockCache
from refmount.read.ranges import Part
from refmount.refs.model import Reference, known_size
from refmount.refs.tree import Dir, File, Node
from refmount.views.decoded import DecodedTree, DecodingReader
from refmount.views.netcdf.plan import ArrayMeta, FilePlan, plan_group
from refmount.views.netcdf.reading import FileData, longest_string
from refmount.views.zarr_meta import ArrayCodec, is_object_dtype

log = logging.getLogger("refmount.netcdf")

#: Stored bytes of a variable-length string array read to find its longest string.
STRING_SCAN_LIMIT = 16 << 20
#: How far from the furthest byte read a read may start and still continue a sequential run.
RUN_SLACK = 1 << 20
#: How long a run must be before chunks are decoded ahead of it: past what one slice and the kernel's own
#: readahead (1 MiB past the reader) span, so ``ncks -d`` of a few steps decodes nothing it was not asked for.
READAHEAD_AFTER = 4 << 20
#: Chunks waiting to be decoded ahead, at most (each waits as a key; decoded, it lives in the chunk cache).
QUEUED_CHUNKS = 256
#: Files (groups) whose plans are kept.
FILES_KEPT = 256


@dataclass(frozen=True, slots=True)
class NetcdfFile:
    """A virtual ``.nc`` file: the group of the set it presents."""

    group: str


def _as_reference(file: NetcdfFile) -> Reference:
    """A virtual file standing where a tree has a reference; only :class:`NetcdfReader` looks inside."""
    return cast(Reference, file)


def file_names(set_name: str, groups: Iterable[str]) -> dict[str, str]:
    """File name -> group: ``NAME.nc`` for the root group, ``NAME.a.b.nc`` for group ``a/b``."""
    return {".".join([set_name, *filter(None, group.split("/"))]) + ".nc": group for group in groups}


class DecodedChunks:
    """Decoded chunks of a set's arrays, through the decoded view's tree and reader (and its chunk cache)."""

    def __init__(self, tree: DecodedTree, reader: DecodingReader) -> None:
        self.tree = tree
        self.reader = reader

    def key(self, array: ArrayCodec, coords: tuple[int, ...]) -> str:
        name = array.separator.join(str(i) for i in coords) if coords else "0"
        return f"{array.path}/{name}" if array.path else name

    def chunk(self, array: ArrayCodec, coords: tuple[int, ...]) -> np.ndarray[Any, Any] | None:
        try:
            node = self.tree.lookup(self.key(array, coords))
        except (NotFound, NotADirectory):
            return None
        if isinstance(node, Dir):
            return None
        data = self.reader.read(node, 0, self.reader.size(node.ref))
        if array.dtype.kind == "O":
            return _decode_objects(array, data)
        return np.frombuffer(data, array.dtype).reshape(array.chunks, order=array.order)

    def source(self, array: ArrayCodec, coords: tuple[int, ...]) -> Reference | None:
        """The stored reference of a chunk (what is fetched to decode it), None if it was never written."""
        try:
            node = self.tree.raw.lookup(self.key(array, coords))
        except (NotFound, NotADirectory):
            return None
        return node.ref if isinstance(node, File) else None

    def stored_bytes(self, array: ArrayCodec, limit: int) -> int | None:
        """Stored size of the chunks of ``array``, counted until it passes ``limit``.

        None when some size is unknown without asking the store.
        """
        total = 0
        for name in self.tree.raw.listdir(array.path):
            if name.startswith("."):
                continue
            node = self.tree.raw.lookup(f"{array.path}/{name}" if array.path else name)
            if isinstance(node, File):
                size = known_size(node.ref)
                if size is None:
                    return None
                total += size
                if total > limit:
                    break
        return total


def _decode_objects(array: ArrayCodec, data: bytes) -> np.ndarray[Any, Any]:
    if array.problems:
        raise InvalidReferences(f"{array.path}: cannot decode: {'; '.join(array.problems)}")
    value: Any = data
    for codec in reversed(array.codecs):
        value = codec.decode(value)
    return np.asarray(value, dtype=object).reshape(array.chunks, order=array.order)


class NetcdfView:
    """The files of one set and how each is planned; shared by its tree and reader."""

    def __init__(self, chunks: DecodedChunks, read_meta: Callable[[File], bytes], set_name: str,
                 netcdf_format: str = "auto") -> None:
        self.chunks = chunks
        self.raw = chunks.tree.raw
        self._read_meta = read_meta
        self.set_name = set_name
        self.netcdf_format = netcdf_format
        self._names: OnceCache[str, dict[str, str]] = OnceCache(1)
        self._files: OnceCache[str, FileData] = OnceCache(FILES_KEPT)

    def names(self) -> dict[str, str]:
        """File name -> group path, found by walking the directories that hold a ``.zgroup``."""
        return self._names.get("", lambda: file_names(self.set_name, self._groups("")))

    def _groups(self, group: str) -> Iterator[str]:
        yield group
        for child in sorted(self.raw.listdir(group)):
            path = f"{group}/{child}" if group else child
            if self._meta_file(f"{path}/.zgroup") is not None:
                yield from self._groups(path)

    def _meta_file(self, key: str) -> File | None:
        try:
            node = self.raw.lookup(key)
        except (NotFound, NotADirectory):
            return None
        return node if isinstance(node, File) else None

    def _json(self, key: str) -> dict[str, Any]:
        node = self._meta_file(key)
        if node is None:
            return {}
        doc = json.loads(self._read_meta(node))
        return doc if isinstance(doc, dict) else {}

    def file(self, group: str) -> FileData:
        """The file of ``group``, planned on first use; InvalidReferences (EIO) if it cannot be planned."""
        return self._files.get(group, lambda: self._planned(group))

    def planned(self, group: str) -> FileData | None:
        """The file of ``group`` if it has been planned already, without planning it."""
        return self._files.peek(group)

    def _planned(self, group: str) -> FileData:
        try:
            return self._build(group)
        except (ValueError, OSError) as exc:  # unreadable group metadata, or data a forced format cannot hold
            log.error("netcdf view: group %s cannot be presented: %s", group or "/", exc)
            raise InvalidReferences(f"netcdf view: group {group or '/'}: {exc}") from None

    def _build(self, group: str) -> FileData:
        metas: list[ArrayMeta] = []
        arrays: dict[str, ArrayCodec] = {}
        left_out: list[tuple[str, str]] = []
        for child in sorted(self.raw.listdir(group)):
            path = f"{group}/{child}" if group else child
            if self._meta_file(f"{path}/.zarray") is None:
                continue
            try:
                zarray = self._json(f"{path}/.zarray")
                zattrs = self._json(f"{path}/.zattrs")
                array = ArrayCodec.from_meta(path, zarray)
            except Exception as exc:  # noqa: BLE001 - one unreadable array is left out, not the whole file
                left_out.append((child, f"metadata cannot be read ({exc})"))
                continue
            length = self._string_length(array) if is_object_dtype(zarray) else None
            metas.append(ArrayMeta(child, zarray, zattrs, length))
            arrays[child] = array
        group_attrs = self._json(f"{group}/.zattrs" if group else ".zattrs")
        plan = plan_group(group_attrs, metas, self.netcdf_format, unreadable=left_out)
        self._log(group, plan)
        return FileData(plan, {source.array: arrays[source.array] for source in plan.sources}, self.chunks)

    def _string_length(self, array: ArrayCodec) -> int | str:
        """The longest string of an object array, read from its data when that is small enough."""
        if array.problems:
            return "; ".join(array.problems)
        stored = self.chunks.stored_bytes(array, STRING_SCAN_LIMIT)
        if stored is None or stored > STRING_SCAN_LIMIT:
            return (f"finding the longest string means reading more than {STRING_SCAN_LIMIT} stored bytes"
                    if stored is not None else "chunk sizes unknown without asking the store")
        longest = 0
        grid = [range(max(1, -(-n // c))) for n, c in zip(array.shape, array.chunks, strict=True)]
        for coords in np.ndindex(*[len(r) for r in grid]) if grid else [()]:
            values = self.chunks.chunk(array, tuple(coords))
            if values is not None:
                longest = max(longest, longest_string(values))
        return longest

    def _log(self, group: str, plan: FilePlan) -> None:
        name = next((n for n, g in self.names().items() if g == group), group or "/")
        log.info("netcdf view: %s: %s, %d variables, %d bytes", name, plan.format_name,
                 len(plan.layout.variables), plan.layout.size)
        for what, reason in plan.left_out:
            log.warning("netcdf view: %s: %s left out: %s", name, what, reason)


class NetcdfTree:
    """The tree of the netCDF view: the set's ``.nc`` files in one directory."""

    def __init__(self, view: NetcdfView) -> None:
        self.view = view

    def lookup(self, path: str) -> Node:
        key = path.strip("/")
        names = self.view.names()
        if not key:
            return Dir("", tuple(sorted(names)))
        group = names.get(key)
        if group is None:
            raise NotFound(path)
        return File(key, _as_reference(NetcdfFile(group)))

    def listdir(self, path: str) -> Iterable[str]:
        node = self.lookup(path)
        if isinstance(node, File):
            raise NotADirectory(path)
        return node.children

    def subdirectory_count(self, path: str) -> int:
        return 0

    def extent(self, url: str) -> int:
        return self.view.raw.extent(url)

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        for name, group in sorted(self.view.names().items()):
            yield name, _as_reference(NetcdfFile(group))

    @property
    def urls(self) -> Iterable[str]:
        return self.view.raw.urls

    @property
    def directory_count(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.view.names())


class NetcdfReader:
    """Reads of the ``.nc`` files: header bytes and data assembled from decoded chunks, with readahead."""

    def __init__(self, view: NetcdfView, decoding: DecodingReader, readahead: int, workers: int = 4) -> None:
        self.view = view
        self.decoding = decoding
        self.readahead = readahead
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refmount-nc-ahead")
        self._slots = threading.BoundedSemaphore(QUEUED_CHUNKS)
        self._lock = threading.Lock()
        self._streams: dict[str, tuple[int, int, int]] = {}  # file -> (start of the run, end of last read, end ahead)

    @property
    def cache(self) -> BlockCache:
        return self.decoding.cache

    @property
    def block_size(self) -> int:
        return self.decoding.cache.block_size

    @property
    def metrics(self) -> Metrics:
        return self.decoding.metrics

    def size(self, ref: Reference) -> int:
        if isinstance(ref, NetcdfFile):
            return self.view.file(ref.group).size
        return self.decoding.size(ref)

    def listed_size(self, ref: Reference) -> int | None:
        """A virtual file's size once it is planned (planning reads metadata, maybe data); else the decoded view's."""
        if isinstance(ref, NetcdfFile):
            planned = self.view.planned(ref.group)
            return None if planned is None else planned.size
        return self.decoding.listed_size(ref)

    def read_parts(self, file: File, offset: int, size: int) -> list[Part]:
        if not isinstance(file.ref, NetcdfFile):
            return self.decoding.read_parts(file, offset, size)
        out = self.read(file, offset, size)
        return [out] if out else []

    def read(self, file: File, offset: int, size: int) -> bytes:
        ref = file.ref
        if not isinstance(ref, NetcdfFile):
            return self.decoding.read(file, offset, size)
        data = self.view.file(ref.group)
        self._read_ahead(file.path, data, offset, offset + size)
        out = data.read(offset, size)
        self.metrics.add_many((("reads", 1), ("bytes_delivered", len(out))))
        return out

    def describe(self, file: File) -> dict[str, str]:
        ref = file.ref
        if not isinstance(ref, NetcdfFile):
            return self.decoding.describe(file)
        plan = self.view.file(ref.group).plan
        info = {"kind": "netcdf", "group": ref.group or "/", "format": plan.format_name,
                "variables": str(len(plan.layout.variables))}
        if plan.left_out:
            info["left-out"] = "; ".join(f"{name}: {reason}" for name, reason in plan.left_out)
        return info

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.decoding.close()

    def _read_ahead(self, path: str, data: FileData, offset: int, end: int) -> None:
        """On a read that continues the run of the last ones, decode the chunks of the next window in the background.

        The kernel sends the reads of one sequential reader a few at a time and
        not always in order, so a read counts as continuing a run when it starts
        within :data:`RUN_SLACK` of the furthest byte read so far. Nothing is
        decoded ahead until the run is :data:`READAHEAD_AFTER` long, so a
        reader that reads the header and then one slice (``ncks -d``) decodes
        only the chunks its reads cover; then the window grows with the run
        (twice what has been read in a row, up to ``readahead``).
        """
        if self.readahead <= 0:
            return
        with self._lock:
            run_start, furthest, ahead = self._streams.get(path, (offset, -RUN_SLACK - 1, 0))
            if abs(offset - furthest) > RUN_SLACK:
                self._streams[path] = (offset, end, 0)
                return
            furthest = max(furthest, end)
            if furthest - run_start < READAHEAD_AFTER:
                self._streams[path] = (run_start, furthest, ahead)
                return
            window = min(self.readahead, 2 * (furthest - run_start))
            if ahead >= furthest + window // 2:
                self._streams[path] = (run_start, furthest, ahead)
                return
            start, stop = max(furthest, ahead), furthest + window
            self._streams[path] = (run_start, furthest, stop)
        if start >= stop:
            return
        chunks = list(dict.fromkeys(data.chunks_in(start, stop)))
        # The stored bytes of the window first, in a few coalesced GETs, so the decoding workers find them
        # fetched (or in flight) instead of each asking the store for one chunk.
        sources = (self.view.chunks.source(array, coords) for array, coords in chunks)
        self.decoding.raw.prefetch(ref for ref in sources if ref is not None)
        submitted = 0
        for array, coords in chunks:
            if not self._slots.acquire(blocking=False):
                break
            try:
                self._pool.submit(self._prefetch, array, coords)
            except RuntimeError:  # shutting down
                self._slots.release()
                break
            submitted += 1
        self.metrics.add("netcdf_readahead_chunks", submitted)

    def _prefetch(self, array: ArrayCodec, coords: tuple[int, ...]) -> None:
        try:
            self.view.chunks.chunk(array, coords)
        except Exception as exc:  # noqa: BLE001 - a failed readahead is retried (and reported) by the demand read
            log.debug("readahead of %s %s failed: %s", array.path, coords, exc)
        finally:
            self._slots.release()
