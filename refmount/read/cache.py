"""The process-wide block cache: one byte budget, LRU, one fetch per block in flight.

Blocks are keyed by ``(url, block index)`` in the byte space of the object,
not of the Zarr key, so neighbouring chunks stored in one HDF5 file share
the blocks they straddle, and a sequential read of many small chunk files
streams the file underneath.

Concurrency: a reader that misses blocks claims them (:class:`refmount.once.Flights`,
under the cache's own lock, so "not cached" and "now mine" are one step)
and fetches all it claimed in as few GETs as the plan allows; any other
reader that needs one of those blocks waits for that fetch instead of
issuing a second GET. Every claim is resolved (with bytes or the backend's
error, handed to every waiter) and released, so a failed fetch is retried by
the next read rather than remembered.

Each cached block is cut at the *extent* the reader vouches for (the end of
the furthest reference into that object), so no GET asks for bytes beyond
what the references describe; a block cached shorter than a later read
needs is treated as missing.

Below the memory cache there may be tiers (:mod:`refmount.read.tiers`: a
disk directory, a shared bucket). The reader that claimed the missing
blocks looks them up there first, keyed by the object's *version* as well
as its URL (``versions``, the store's answer), so a rewritten object is
never answered from a tier; only what no tier holds is fetched from the
store, and what the store sent is then kept in every tier, after the
waiters have their bytes. A URL without a known version bypasses the tiers.

When the shared tier hands out fetch leases, the claimed blocks no tier
holds are leased first: this node fetches those it won, and waits (bounded)
for the others to arrive in the shared bucket from the node fetching them,
so nodes that miss the same blocks at once read the archive once between
them; what does not arrive in time is fetched here after all.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from cachetools import LRUCache

from refmount.byterange import ByteRange
from refmount.errors import BackendError
from refmount.metrics import Metrics
from refmount.once import Flights
from refmount.read.ranges import (
    Part,
    block_parts,
    block_range,
    blocks_covering,
    fetched_blocks,
    plan_fetches,
)
from refmount.read.tiers.base import TierKey
from refmount.read.tiers.stack import TierStack
from refmount.store.base import RangeReader
from refmount.urls import redact_url

log = logging.getLogger("refmount.cache")

BlockKey = tuple[str, int]


class BlockCache:
    """Serve byte ranges of URLs from cached blocks, fetching what is missing."""

    def __init__(
        self,
        backend: RangeReader,
        *,
        capacity: int,
        block_size: int,
        max_request: int,
        metrics: Metrics | None = None,
        tiers: TierStack | None = None,
        versions: Callable[[str], str | None] | None = None,
    ) -> None:
        """``tiers`` are consulted on a miss for URLs ``versions`` names a version of (both or neither)."""
        self.backend = backend
        self.block_size = block_size
        self.max_request = max_request
        self.metrics = metrics or Metrics()
        self._blocks: LRUCache[BlockKey, bytes] = LRUCache(maxsize=capacity, getsizeof=len)
        self._lock = threading.Lock()
        self._flights: Flights[BlockKey, bytes] = Flights(self._lock)
        self.metrics.gauge("cache_bytes", lambda: self._blocks.currsize)
        self.metrics.gauge("cache_capacity", lambda: self._blocks.maxsize)
        self.tiers = tiers if tiers is not None and versions is not None else TierStack(())
        self._versions = versions
        for name in self.tiers.figures():
            self.metrics.gauge(name, functools.partial(self._tier_figure, name))

    @property
    def capacity(self) -> int:
        """The byte budget."""
        return int(self._blocks.maxsize)

    @property
    def size(self) -> int:
        """Bytes currently held."""
        return int(self._blocks.currsize)

    def read(self, url: str, rng: ByteRange, extent: int) -> bytes:
        """The bytes of ``rng`` in ``url``; ``extent`` bounds the object part that may be fetched."""
        return b"".join(self.read_parts(url, rng, extent))

    def read_parts(self, url: str, rng: ByteRange, extent: int) -> list[Part]:
        """:meth:`read` as the cached blocks' parts, in order, uncopied (see :func:`refmount.read.ranges.block_parts`)."""
        if rng.length == 0:
            return []
        extent = self._bounded(url, extent)
        if rng.stop > extent:
            raise BackendError(
                f"{redact_url(url)} [{rng.start}, {rng.stop}): the references reach beyond the end of the object "
                f"({extent} bytes)"
            )
        indices = blocks_covering(rng, self.block_size)
        found, waiting, mine = self._claim(url, indices, rng)
        if mine:
            self._fetch(url, mine, extent)
        blocks: list[tuple[int, bytes]] = []
        for index in indices:
            data = found.get(index)
            if data is None:
                future = waiting.get(index) or mine[index]
                data = future.result()
                if len(data) < self._needed(index, rng):
                    # Another reader fetched this block against a shorter extent.
                    data = self._fetch_now(url, index, extent)
            blocks.append((index, data))
        return block_parts(rng, blocks, self.block_size)

    def prefetch(self, url: str, rng: ByteRange, extent: int) -> None:
        """Fetch the missing blocks of ``rng`` without returning them (readahead)."""
        extent = self._bounded(url, extent)
        rng = ByteRange(rng.start, min(rng.stop, extent))
        if rng.length == 0:
            return
        _, _, mine = self._claim(url, blocks_covering(rng, self.block_size), rng)
        if mine:
            self.metrics.add("prefetches")
            self._fetch(url, mine, extent)

    def contains(self, url: str, index: int) -> bool:
        with self._lock:
            return (url, index) in self._blocks

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()

    def _tier_figure(self, name: str) -> float:
        return self.tiers.figures().get(name, 0)

    def close(self) -> None:
        """Finish the tiers' background writes (bounded) and stop their threads."""
        self.tiers.close()

    # -- internals ---------------------------------------------------------

    def _bounded(self, url: str, extent: int) -> int:
        """Cut ``extent`` at the object's real size, so one reference past the end cannot spoil its neighbours' blocks."""
        size = self.backend.known_size(url)
        return extent if size is None else min(extent, size)

    def _needed(self, index: int, rng: ByteRange) -> int:
        """How many bytes of block ``index`` a read of ``rng`` needs to exist."""
        return min(rng.stop, (index + 1) * self.block_size) - index * self.block_size

    def _claim(
        self, url: str, indices: Iterable[int], rng: ByteRange
    ) -> tuple[dict[int, bytes], dict[int, Future[bytes]], dict[int, Future[bytes]]]:
        """Sort blocks into cached, being fetched by someone else, and to be fetched by us."""
        found: dict[int, bytes] = {}
        absent: list[BlockKey] = []
        with self._lock:
            for index in indices:
                data = self._blocks.get((url, index))
                if data is not None and len(data) >= self._needed(index, rng):
                    found[index] = data
                else:
                    absent.append((url, index))
            claimed_by_others, claimed_by_us = self._flights.claim_locked(absent)
        waiting = {index: future for (_, index), future in claimed_by_others.items()}
        mine = {index: future for (_, index), future in claimed_by_us.items()}
        hits, misses = len(found), len(mine) + len(waiting)
        self.metrics.add_many((("cache_hits", hits), ("cache_misses", misses)))
        if misses and log.isEnabledFor(logging.DEBUG):  # the block list is built only for a debug log
            log.debug("cache miss %s blocks %s", redact_url(url), sorted([*mine, *waiting]))
        return found, waiting, mine

    def _fetch(self, url: str, mine: dict[int, Future[bytes]], extent: int) -> None:
        """Fetch the claimed blocks, publish them, and resolve every claim.

        A failure goes to every waiter of the blocks not yet published (the
        caller meets it in its own futures); only a process-level exit
        (KeyboardInterrupt, SystemExit) propagates from here.
        """
        version: str | None = None
        try:
            version = self._versions(url) if self.tiers and self._versions is not None else None
            if version is None:
                self._from_store(url, None, mine, extent)
                return
            missing, held = self._from_tiers(url, version, mine, extent)
            self._from_store(url, version, {i: f for i, f in missing.items() if i not in held}, extent)
            if held:
                late = self._from_fleet(url, version, {index: missing[index] for index in held}, extent)
                self._from_store(url, version, late, extent)
        except BaseException as exc:
            # Only our own unresolved claims: a block we published may already be claimed anew by another reader.
            unresolved = [index for index, future in mine.items() if not future.done()]
            self._flights.fail([(url, index) for index in unresolved], exc)
            if version is not None:  # other nodes may be waiting on this node's leases of them
                self.tiers.release(TierKey(url, version, self.block_size, index) for index in unresolved)
            if not isinstance(exc, Exception):
                raise

    def _from_store(self, url: str, version: str | None, claims: dict[int, Future[bytes]], extent: int) -> None:
        """Fetch the claimed blocks from the store in as few GETs as the plan allows, publish them, keep them below."""
        if not claims:
            return
        plan = plan_fetches(claims, self.block_size, extent, self.max_request)
        bodies = self.backend.read_pieces(url, [fetch.span for fetch in plan], self.block_size)
        fetched: list[tuple[int, bytes]] = []
        with self._lock:
            for fetch, pieces in zip(plan, bodies, strict=True):
                for index, data in fetched_blocks(fetch, pieces):
                    self._store((url, index), data)
                    self._flights.resolve_locked((url, index), data)
                    fetched.append((index, data))
        if version is not None:  # the waiters have their bytes: keeping them below costs only this reader
            self.tiers.store((TierKey(url, version, self.block_size, index), data) for index, data in fetched)

    def _from_tiers(
        self, url: str, version: str, mine: dict[int, Future[bytes]], extent: int
    ) -> tuple[dict[int, Future[bytes]], set[int]]:
        """Publish the claimed blocks the tiers hold; the claims left, and those of them another node fetches."""
        keys, minimum, publish = self._tier_request(url, version, mine, extent)
        found, held = self.tiers.lookup(keys, minimum, publish)
        return {index: future for index, future in mine.items() if index not in found}, held

    def _from_fleet(
        self, url: str, version: str, held: dict[int, Future[bytes]], extent: int
    ) -> dict[int, Future[bytes]]:
        """Publish the claimed blocks other nodes are fetching as they arrive; the claims left for the store."""
        keys, minimum, publish = self._tier_request(url, version, held, extent)
        found = self.tiers.await_fleet(keys, minimum, publish)
        return {index: future for index, future in held.items() if index not in found}

    def _tier_request(
        self, url: str, version: str, claims: dict[int, Future[bytes]], extent: int
    ) -> tuple[dict[int, TierKey], dict[int, int], Callable[[int, bytes], None]]:
        """The tier keys of the claimed blocks, the bytes each must hold at least, and how to publish a find."""
        keys = {index: TierKey(url, version, self.block_size, index) for index in claims}
        minimum = {index: block_range(index, self.block_size, extent).length for index in claims}

        def publish(index: int, data: bytes) -> None:  # at once: a reader may be waiting for just this block
            with self._lock:
                self._store((url, index), data)
                self._flights.resolve_locked((url, index), data)

        return keys, minimum, publish

    def _fetch_now(self, url: str, index: int, extent: int) -> bytes:
        span = block_range(index, self.block_size, extent)
        data = self.backend.read_ranges(url, [span])[0]
        with self._lock:
            self._store((url, index), data)
        version = self._versions(url) if self.tiers and self._versions is not None else None
        if version is not None:
            self.tiers.store([(TierKey(url, version, self.block_size, index), data)])
        return data

    def _store(self, key: BlockKey, data: bytes) -> None:
        try:
            self._blocks[key] = data
        except ValueError:  # a block larger than the whole budget: serve it, do not keep it
            pass
