"""Turning a read of a key into bytes: clamp once, slice inline data, or go through the cache.

:class:`Reader` is the raw :class:`~refmount.read.base.FileReader`.
What to fetch ahead of the reader is decided by :mod:`refmount.read.readahead`
(pure planning); this module runs the plan on a small thread pool, through
the same cache and the same one-fetch-per-block rule as demand reads, so a
reader that catches up with its readahead simply waits for the GET already
in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from refmount.byterange import ByteRange
from refmount.metrics import Metrics
from refmount.read.cache import BlockCache
from refmount.read.ranges import Part, clamp_read, parts_length
from refmount.read.readahead import ReadaheadPlanner
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.tree import File, ReferenceTree
from refmount.store.base import RangeReader
from refmount.urls import redact_url

log = logging.getLogger("refmount.reader")


class Reader:
    """Read bytes of files of one namespace through a shared block cache."""

    def __init__(
        self,
        namespace: ReferenceTree,
        cache: BlockCache,
        backend: RangeReader,
        *,
        readahead: int,
        metrics: Metrics | None = None,
        prefetch_workers: int = 8,
    ) -> None:
        self.namespace = namespace
        self.cache = cache
        self.backend = backend
        self.metrics = metrics or cache.metrics
        # Readahead beyond a fraction of the cache would evict itself (and other readers' blocks)
        # before it is read: a small cache gets a small window.
        self.planner = ReadaheadPlanner(cache.block_size, min(readahead, cache.capacity // 8), step=cache.max_request)
        self._prefetcher = ThreadPoolExecutor(max_workers=prefetch_workers, thread_name_prefix="refmount-ahead")
        self._prefetch_slots = threading.BoundedSemaphore(prefetch_workers * 2)

    @property
    def block_size(self) -> int:
        """The block cache's unit of fetching and caching."""
        return self.cache.block_size

    def size(self, ref: Reference) -> int:
        """Exact size of a file; asks the store once for a whole-object reference."""
        if isinstance(ref, Whole):
            return self.backend.size(ref.url)
        return ref.size

    def listed_size(self, ref: Reference) -> int | None:
        return None if isinstance(ref, Whole) else ref.size

    def read(self, file: File, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``file`` at ``offset``; empty at or past the end."""
        return b"".join(self.read_parts(file, offset, size))

    def read_parts(self, file: File, offset: int, size: int) -> list[Part]:
        """:meth:`read` as parts of cached blocks, uncopied, for a caller that copies them where they go."""
        ref = file.ref
        # Range first: it is almost every read of a cold stream, and this runs once per kernel request.
        if isinstance(ref, Range):
            rng = clamp_read(offset, size, ref.length)
            if rng.length == 0:
                return []
            chunk = ByteRange(ref.offset, ref.offset + ref.length) if rng.start == 0 else None
            parts = self._read_object(ref.url, rng.shift(ref.offset), self.namespace.extent(ref.url), chunk)
        elif isinstance(ref, Inline):
            rng = clamp_read(offset, size, len(ref.data))
            if rng.length == 0:
                return []
            parts = [ref.data if rng.length == len(ref.data) else memoryview(ref.data)[rng.start : rng.stop]]
        elif isinstance(ref, Whole):
            extent = self.backend.size(ref.url)
            rng = clamp_read(offset, size, extent)
            if rng.length == 0:
                return []
            parts = self._read_object(ref.url, rng, extent)
        else:  # pragma: no cover - the model has three shapes
            raise TypeError(f"unknown reference {ref!r}")
        self.metrics.add_many((("reads", 1), ("bytes_delivered", parts_length(parts))))
        return parts

    def prefetch(self, refs: Iterable[Reference]) -> None:
        """Start fetching the bytes of ``refs`` in the background, references that touch or nearly touch joined.

        For a view that knows which keys it will read next (the netCDF view's chunk readahead): one
        coalesced background fetch per run of neighbouring references instead of one GET per key as each
        is read. Only ranged references; a full prefetch pool drops the rest, as readahead does.
        """
        by_url: dict[str, list[ByteRange]] = {}
        for ref in refs:
            if isinstance(ref, Range) and ref.length > 0:
                by_url.setdefault(ref.url, []).append(ByteRange(ref.offset, ref.offset + ref.length))
        for url, ranges in by_url.items():
            extent = self.namespace.extent(url)
            ranges.sort(key=lambda r: r.start)
            start, stop = ranges[0].start, ranges[0].stop
            for rng in ranges[1:]:
                if rng.start - stop > self.block_size:  # a gap of more than a block: fetch apart
                    self._submit_prefetch(url, ByteRange(start, stop), extent)
                    start = rng.start
                stop = max(stop, rng.stop)
            self._submit_prefetch(url, ByteRange(start, stop), extent)

    def describe(self, file: File) -> dict[str, str]:
        """Where ``file``'s bytes come from, for its extended attributes (URLs without credentials)."""
        ref = file.ref
        if isinstance(ref, Inline):
            return {"kind": "inline", "length": str(len(ref.data))}
        if isinstance(ref, Range):
            return {"kind": "range", "url": redact_url(ref.url), "offset": str(ref.offset), "length": str(ref.length)}
        if isinstance(ref, Whole):
            return {"kind": "whole", "url": redact_url(ref.url)}
        return {}

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------

    def _read_object(self, url: str, rng: ByteRange, extent: int, chunk: ByteRange | None = None) -> list[Part]:
        # Plan and start the readahead first: it runs while the demand read waits for its blocks.
        for ahead in self.planner.plan(url, rng, extent, chunk):
            self._submit_prefetch(url, ahead, extent)
        return self.cache.read_parts(url, rng, extent)

    def _submit_prefetch(self, url: str, ahead: ByteRange, extent: int) -> None:
        if not self._prefetch_slots.acquire(blocking=False):
            return
        try:
            self._prefetcher.submit(self._prefetch, url, ahead, extent)
        except RuntimeError:  # shutting down
            self._prefetch_slots.release()

    def _prefetch(self, url: str, ahead: ByteRange, extent: int) -> None:
        try:
            self.cache.prefetch(url, ahead, extent)
        except Exception as exc:  # noqa: BLE001 - a failed readahead is retried by the demand read
            log.debug("readahead of %s %s failed: %s", url, ahead, exc)
        finally:
            self._prefetch_slots.release()
