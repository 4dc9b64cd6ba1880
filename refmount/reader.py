"""Turning a read of a key into bytes: clamp once, slice inline data, or go through the cache.

Readahead, as an essay. The kernel asks for at most 128 KiB at a time, and
a reader that walks a chunk file from start to end would otherwise pay one
round trip per block. Sequential access is detected per object URL, not
per open file: consecutive chunk files of one HDF5 file usually sit next to
each other in the object, so a ``cat`` of ``temp/*`` is one sequential stream
over the object even though it opens hundreds of keys. When a read of a
URL starts where the previous read of that URL ended (within one block),
the stream's window doubles, from one block up to ``readahead`` bytes, and
the blocks beyond the read are fetched in the background; a read elsewhere
resets the window, so random access pays for no readahead at all. The
prefetch never crosses the URL's extent (the end of the furthest
reference), and it goes through the same cache and the same one-fetch-per-
block rule as demand reads, so a reader that catches up with its readahead
simply waits for the GET already in flight.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from cachetools import LRUCache

from .backend import RangeReader
from .cache import BlockCache
from .metrics import Metrics
from .namespace import File, Namespace
from .ranges import ByteRange, clamp_read
from .refs.model import Inline, Range, Reference, Whole

log = logging.getLogger("refmount.reader")


class _Stream:
    """Sequential-access state of one URL."""

    __slots__ = ("next_offset", "window", "prefetched_to")

    def __init__(self) -> None:
        self.next_offset = -1
        self.window = 0
        self.prefetched_to = 0


class Reader:
    """Read bytes of files of one namespace through a shared block cache."""

    def __init__(
        self,
        namespace: Namespace,
        cache: BlockCache,
        backend: RangeReader,
        *,
        readahead: int,
        metrics: Metrics | None = None,
        prefetch_workers: int = 4,
    ) -> None:
        self.namespace = namespace
        self.cache = cache
        self.backend = backend
        self.readahead = readahead
        self.metrics = metrics or cache.metrics
        self._streams: LRUCache[str, _Stream] = LRUCache(maxsize=4096)
        self._streams_lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(max_workers=prefetch_workers, thread_name_prefix="refmount-ahead")
        self._prefetch_slots = threading.BoundedSemaphore(prefetch_workers * 2)

    def size(self, ref: Reference) -> int:
        """Exact size of a file; asks the store once for a whole-object reference."""
        known = Namespace.size_if_known(ref)
        return known if known is not None else self.backend.size(ref.url)  # type: ignore[union-attr]

    def read(self, file: File, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``file`` at ``offset``; empty at or past the end."""
        ref = file.ref
        rng = clamp_read(offset, size, self.size(ref))
        if rng.length == 0:
            return b""
        if isinstance(ref, Inline):
            data = ref.data[rng.start : rng.stop]
        elif isinstance(ref, Range):
            data = self._read_object(ref.url, rng.shift(ref.offset), self.namespace.extent(ref.url))
        elif isinstance(ref, Whole):
            data = self._read_object(ref.url, rng, self.backend.size(ref.url))
        else:  # pragma: no cover - the model has three shapes
            raise TypeError(f"unknown reference {ref!r}")
        self.metrics.add_many((("reads", 1), ("bytes_delivered", len(data))))
        return data

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------

    def _read_object(self, url: str, rng: ByteRange, extent: int) -> bytes:
        ahead = self._plan_readahead(url, rng, extent)
        data = self.cache.read(url, rng, extent)
        if ahead is not None:
            self._submit_prefetch(url, ahead, extent)
        return data

    def _plan_readahead(self, url: str, rng: ByteRange, extent: int) -> ByteRange | None:
        """Update the URL's stream and return the range to prefetch, if any."""
        if self.readahead <= 0:
            return None
        block = self.cache.block_size
        with self._streams_lock:
            stream = self._streams.get(url)
            if stream is None:
                stream = self._streams[url] = _Stream()
            sequential = stream.next_offset >= 0 and abs(rng.start - stream.next_offset) <= block
            stream.next_offset = rng.stop
            if not sequential:
                stream.window = 0
                stream.prefetched_to = rng.stop
                return None
            stream.window = min(self.readahead, max(block, stream.window * 2))
            start = max(rng.stop, stream.prefetched_to)
            stop = min(extent, rng.stop + stream.window)
            # Top up only when at least a block of the window is not requested yet.
            if stop - start < min(block, stream.window):
                return None
            stream.prefetched_to = stop
            return ByteRange(start, stop)

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
