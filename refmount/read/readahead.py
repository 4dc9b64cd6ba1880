"""Deciding what to fetch before it is asked for: pure planning, no I/O.

Two signals, both in the byte space of the object rather than of the key:

- **A chunk file read from its start is read whole.** Zarr, ``cp``, ``cat``
  and netCDF-C all read a chunk file from offset 0 to its end, and the
  kernel hands the daemon such a read in 128 KiB pieces. So the first read
  of a chunk file plans the rest of its referenced bytes (up to the
  readahead window) at once, and the pieces that follow wait for GETs
  already in flight instead of each paying a round trip.
- **Sequential streams, several per object.** Consecutive chunk files of an
  HDF5 file usually sit next to each other in the object, so ``cat temp/*``
  is one sequential stream over the object although it opens hundreds of
  keys; a thread pool reading chunks of one variable is several streams
  over the same object at once. Each object keeps a few cursors; a read that
  starts where one of them stopped (within one block) continues it and
  doubles its window, from one block up to ``readahead`` bytes; a read
  elsewhere starts a new cursor (replacing the least recently used one) with
  no window, so random access plans no readahead at all.
- **Top-ups in large steps.** A stream's window is topped up only once half
  of it (at most ``step``, the largest GET) is free, not after every read:
  each top-up becomes GETs of its own, and every GET costs the store client
  about a millisecond of CPU whatever its size, so topping up after each
  1 MiB kernel read made a GET per MiB. The other half of the window is
  still in flight or cached while the top-up is fetched, so the reader does
  not catch up with it.

Nothing planned crosses the object's extent (the end of the furthest
reference into it), and a cursor never plans the same bytes twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cachetools import LRUCache

from refmount.byterange import ByteRange

#: Cursors kept per object: enough for a zarr/dask thread pool reading one variable.
STREAMS_PER_OBJECT = 16
#: Objects whose cursors are remembered.
OBJECTS_TRACKED = 4096


@dataclass
class _Cursor:
    """Where one sequential reader of an object is, and how far ahead of it was planned."""

    next_offset: int
    window: int = 0
    planned_to: int = 0


class ReadaheadPlanner:
    """Turn each read of an object into the ranges worth fetching before they are asked for."""

    def __init__(
        self, block_size: int, readahead: int, *, step: int | None = None, streams_per_object: int = STREAMS_PER_OBJECT
    ) -> None:
        """``step``: the largest top-up worth waiting for (the largest GET); default the whole ``readahead``."""
        self.block_size = block_size
        self.readahead = readahead
        self.step = readahead if step is None else step
        self.streams_per_object = streams_per_object
        self._cursors: LRUCache[str, list[_Cursor]] = LRUCache(maxsize=OBJECTS_TRACKED)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.readahead > 0

    def plan(self, url: str, read: ByteRange, extent: int, chunk: ByteRange | None = None) -> list[ByteRange]:
        """Ranges of ``url`` to prefetch after a read of ``read``.

        ``chunk`` is the byte range of the key being read when the read
        starts at the key's first byte (the whole-file signal), else None.
        """
        if not self.enabled:
            return []
        with self._lock:
            cursor = self._cursor_for(url, read)
            planned: list[ByteRange] = []
            if chunk is not None and chunk.stop > read.stop:
                start = max(read.stop, cursor.planned_to)
                stop = min(chunk.stop, read.start + self.readahead, extent)
                if stop > start:
                    planned.append(ByteRange(start, stop))
                    cursor.planned_to = stop
            if cursor.window:
                start = max(read.stop, cursor.planned_to)
                stop = min(extent, read.stop + cursor.window)
                # Top up once half the window (at most a step) is free, or the rest of the object is.
                least = max(self.block_size, min(self.step, cursor.window // 2))
                if stop - start >= least or (stop == extent and stop > start):
                    planned.append(ByteRange(start, stop))
                    cursor.planned_to = stop
            # The demand read fetches whole blocks: planning starts at the first block it does not touch,
            # so the readahead runs beside the demand read instead of making it wait for more bytes.
            first_free = -(-read.stop // self.block_size) * self.block_size
            return [rng for rng in (ByteRange(max(r.start, first_free), r.stop) for r in _merged(planned) if r.stop > first_free)]

    def _cursor_for(self, url: str, read: ByteRange) -> _Cursor:
        """The cursor this read continues (its window grown), or a fresh one for a new stream."""
        cursors = self._cursors.get(url)
        if cursors is None:
            cursors = self._cursors[url] = []
        for position, cursor in enumerate(cursors):
            if abs(read.start - cursor.next_offset) <= self.block_size:
                cursor.window = min(self.readahead, max(self.block_size, cursor.window * 2))
                cursor.next_offset = read.stop
                cursor.planned_to = max(cursor.planned_to, read.stop)
                if position:  # most recently used first: the scan above usually stops at once
                    cursors.insert(0, cursors.pop(position))
                return cursor
        cursor = _Cursor(next_offset=read.stop, planned_to=read.stop)
        cursors.insert(0, cursor)
        del cursors[self.streams_per_object :]
        return cursor


def _merged(ranges: list[ByteRange]) -> list[ByteRange]:
    """Adjacent or overlapping ranges joined, in order."""
    out: list[ByteRange] = []
    for rng in sorted(ranges, key=lambda r: r.start):
        if out and rng.start <= out[-1].stop:
            out[-1] = ByteRange(out[-1].start, max(out[-1].stop, rng.stop))
        else:
            out.append(rng)
    return out
