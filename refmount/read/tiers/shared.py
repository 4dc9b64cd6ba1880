"""The shared tier: blocks kept in an S3 bucket that every node of a fleet reads and fills.

A block is stored as one object, ``PREFIX/XY/NAME``, NAME being the hash of
(URL, version, block size, block index) (:class:`~refmount.read.tiers.base.TierKey`):
every node computes the same name for the same bytes, so nodes agree
without talking to each other, and the archive is read about once per block
for the whole fleet.

Lookups are made on the read path, concurrently for all the blocks of one
fetch and bounded by ``timeout``; a missing object is a miss, and any other
failure is a miss too, after which the tier is left alone for
:data:`PAUSE_AFTER_FAILURE` seconds so an unreachable bucket does not cost
every read a timeout. Uploads of blocks fetched from the archive happen in
the background on a few threads, from a queue bounded in bytes; a block
that does not fit is dropped, and a failed upload is counted, never raised.

Nodes that miss the same block at the same moment agree on which of them
fetches it through lease objects, one per 8 MiB stretch of an object
(:mod:`~refmount.read.tiers.lease`): the others wait, for at most
``lease_wait`` seconds, for the block to appear in the bucket, so even a
fleet started at once reads the archive about once per block.
``lease_wait=0`` takes no leases.

Each object is framed and checksummed like a disk block
(:func:`~refmount.read.tiers.base.frame`); one that does not verify is
ignored (and replaced by the next node that fetches the block).

The tier has its own storage options: the archive's S3 options, overridden
by ``-o shared.NAME=VALUE`` (``shared.endpoint_url``, ``shared.region``,
``shared.key``, ``shared.secret``, ``shared.profile``, ``shared.anon`` ...;
see :func:`shared_storage_options`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem

from refmount.errors import ConfigError
from refmount.read.tiers.base import TierFigures, TierKey, frame, unframe
from refmount.read.tiers.lease import WaitSchedule, held_elsewhere, lease_body, lease_object, stretch_of
from refmount.store.options import single_attempt
from refmount.urls import protocol_of, redact_url

log = logging.getLogger("refmount.cache.shared")

#: Seconds the tier is skipped after a lookup failed for another reason than a missing object.
PAUSE_AFTER_FAILURE = 30.0
#: Upload threads: with 4, a node reading 256 MiB at full speed dropped 43-133 uploads (its queue full), each
#: later fetched from the archive again by a waiting node; with 8, none (bench_tiers, docs/benchmarks.md).
UPLOAD_THREADS = 8
#: Seconds a node waits, by default, for a block another node holds the fetch lease of.
LEASE_WAIT = 10.0
#: The counters only this tier keeps: leases taken, blocks waited for, waits that ran out.
LEASE_FIGURES = ("leases_won", "leases_held", "lease_timeouts")
#: Options under ``shared.`` that s3fs takes inside ``client_kwargs``.
_CLIENT_OPTIONS = {"endpoint_url": "endpoint_url", "region": "region_name", "region_name": "region_name"}


def shared_storage_options(archive: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """s3fs options for the shared bucket: the archive's ``archive``, with ``shared.*`` ``overrides`` on top."""
    options = {name: value for name, value in archive.items() if name != "client_kwargs"}
    client = dict(archive.get("client_kwargs") or {})
    for name, value in overrides.items():
        if name in _CLIENT_OPTIONS:
            client[_CLIENT_OPTIONS[name]] = value
        elif name == "client_kwargs" and isinstance(value, Mapping):
            client.update(value)
        else:
            options[name] = value
    if client:
        options["client_kwargs"] = client
    options["skip_instance_cache"] = True
    return options


def split_shared_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (``BUCKET``, ``PREFIX`` without slashes at its ends); ConfigError otherwise."""
    if protocol_of(url) != "s3" or "://" not in url:
        raise ConfigError(f"option shared_cache: {redact_url(url)} is not an s3://BUCKET/PREFIX URL")
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    if not bucket:
        raise ConfigError(f"option shared_cache: {redact_url(url)} names no bucket")
    return bucket, prefix.strip("/")


class SharedTier:
    """:class:`~refmount.read.tiers.base.CacheTier` over an S3 bucket (any S3-compatible store)."""

    name = "shared"

    def __init__(self, url: str, storage_options: Mapping[str, Any], *, timeout: float = 10.0,
                 queue_bytes: int = 32 << 20, writers: int = UPLOAD_THREADS, lease_wait: float = LEASE_WAIT) -> None:
        bucket, prefix = split_shared_url(url)
        self.url = url
        self._bucket = bucket
        self._base = f"{bucket}/{prefix}" if prefix else bucket
        self.timeout = timeout
        self.queue_bytes = queue_bytes
        self._fs: AsyncFileSystem = fsspec.filesystem("s3", **dict(storage_options))
        single_attempt(self._fs)
        self._figures = TierFigures(LEASE_FIGURES)
        self._paused_until = 0.0
        self._warned = False
        self.lease_wait = lease_wait
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._leases_paused_until = 0.0
        #: This node's leases (by stretch) and their blocks not yet uploaded, found, dropped or released.
        self._owned: dict[TierKey, set[TierKey]] = {}
        #: Other nodes' leases this node stopped waiting on: deleted after its own upload of a block in them,
        #: whatever this node's own claim on the stretch meanwhile.
        self._stale: set[TierKey] = set()
        #: This node's leases whose DELETE is on its way: a fetch in one of them waits for it, then leases anew.
        self._ending: set[TierKey] = set()
        #: A block to upload, or (a stretch, None): delete that lease.
        self._queue: deque[tuple[TierKey, bytes | None]] = deque()
        self._queued_bytes = 0
        self._busy = 0
        self._closed = False
        self._changed = threading.Condition()
        self._writers = [threading.Thread(target=self._write_loop, name=f"refmount-shared-put-{n}", daemon=True)
                         for n in range(writers)]
        for thread in self._writers:
            thread.start()

    # -- CacheTier -----------------------------------------------------------

    def get(self, key: TierKey) -> bytes | None:
        return self._lookup([key]).get(key)

    def get_many(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """All of ``keys`` looked up at once (one GET each, concurrently), answered when the last is in."""
        yield from self._lookup(list(keys)).items()

    def _lookup(self, wanted: list[TierKey], *, again: bool = False) -> dict[TierKey, bytes]:
        """The blocks of ``wanted`` that are stored and verify. ``again``: a further look at blocks looked up
        before (by a node that waited on their lease), whose misses and damaged objects were counted and logged then."""
        if not wanted:
            return {}
        if self._closed or time.monotonic() < self._paused_until:
            if not again:
                self._figures.add("misses", len(wanted))
            return {}
        try:
            stored = fsspec.asyn.sync(self._fs.loop, self._fetch_all, wanted, timeout=self.timeout + 1)
        except Exception as exc:  # noqa: BLE001 - any failure of the whole batch is a miss of every block
            stored = [exc] * len(wanted)
        found: dict[TierKey, bytes] = {}
        failure: BaseException | None = None
        for key, answer in zip(wanted, stored, strict=True):
            if isinstance(answer, bytes):
                data = unframe(key, answer)
                if data is not None:
                    found[key] = data
                    self._figures.add("bytes_read", len(data))
                    self._dealt_with(key)  # one of this node's leased blocks that is there already
                    continue
                if not again:
                    self._figures.add("corrupt")
                    log.warning("shared cache: %s does not verify (corrupt or cut short); ignored, fetched from the "
                                "archive", self._path(key))
            elif not isinstance(answer, FileNotFoundError):
                failure = answer
            if not again:
                self._figures.add("misses")
        self._figures.add("hits", len(found))
        if failure is not None:
            self._lookup_failed(failure)
        return found

    def put(self, key: TierKey, data: bytes) -> None:
        """Queue the upload; a block other nodes may be waiting for (under this node's lease) may use the
        queue's bound twice over before it is dropped, since dropping it sends those nodes to the archive."""
        with self._changed:
            bound = self.queue_bytes * (2 if stretch_of(key) in self._owned else 1)
            if self._closed or self._queued_bytes + len(data) > bound:
                self._figures.add("dropped")
                ended = self._done_locked(key)  # not kept: its waiters must not wait on for it
                if ended is not None and not self._closed:
                    self._queue.append((ended, None))
                    self._changed.notify()
                return
            self._queue.append((key, data))
            self._queued_bytes += len(data)
            self._changed.notify()

    # -- LeasingTier ---------------------------------------------------------

    def lease_many(self, keys: Iterable[TierKey]) -> set[TierKey]:
        """One conditional create per stretch of the keys, concurrently; any failure but "exists" leaves the
        stretch's blocks to the caller, without a lease. Stretches this node holds already are extended."""
        wanted = list(keys)
        now = time.monotonic()
        if not wanted or self.lease_wait <= 0 or self._closed or now < self._paused_until \
                or now < self._leases_paused_until:
            return set()
        groups: dict[TierKey, list[TierKey]] = {}
        for key in wanted:
            groups.setdefault(stretch_of(key), []).append(key)
        with self._changed:
            deadline = time.monotonic() + self.timeout
            while any(stretch in self._ending for stretch in groups) and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            for stretch in [stretch for stretch in groups if stretch in self._owned]:
                self._owned[stretch].update(groups.pop(stretch))
            # Marked as this node's before the request, so a concurrent fetch of this node in the same
            # stretch (a reader and its readahead) extends it instead of meeting it as another node's.
            for stretch, blocks in groups.items():
                self._owned[stretch] = set(blocks)
        stretches = list(groups)
        if not stretches:
            return set()
        try:
            answers = fsspec.asyn.sync(self._fs.loop, self._lease_all, stretches, timeout=self.timeout + 1)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every block is fetched by this node
            answers = [exc] * len(stretches)
        held: set[TierKey] = set()
        failure: BaseException | None = None
        with self._changed:
            for stretch, answer in zip(stretches, answers, strict=True):
                if answer is None:
                    continue
                self._owned.pop(stretch, None)  # not this node's after all
                if held_elsewhere(answer):
                    held.update(groups[stretch])
                else:
                    failure = answer
        self._figures.add("leases_won", sum(1 for answer in answers if answer is None))
        self._figures.add("leases_held", len(held))
        if failure is not None:
            self._figures.add("errors")
            self._leases_paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("shared cache %s: cannot take fetch leases (%s); fetching without them for the next %.0f s",
                        redact_url(self.url), type(failure).__name__ if not str(failure) else failure,
                        PAUSE_AFTER_FAILURE)
        return held

    def await_blocks(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """Watch the leases at growing intervals (one HEAD per stretch); when one is gone, look its blocks up.

        A holder deletes its lease once it has uploaded (or could not fetch,
        or could not keep) the blocks it fetched of the stretch, which need
        not be all the caller waits for: the blocks still pending are then
        leased anew and looked up, so that again one node fetches those
        missing; those this node wins are the caller's to fetch, the others
        are waited for in turn. At the end of the wait the blocks still
        pending are looked up once more, and what is missing then is fetched
        by the caller, without a lease.
        """
        pending = list(keys)
        schedule = WaitSchedule(self.lease_wait, time.monotonic())
        while pending:
            pause = schedule.pause(time.monotonic())
            if pause is None:
                found = self._lookup(pending, again=True)
                yield from found.items()
                pending = [key for key in pending if key not in found]
                break
            time.sleep(pause)
            ended = self._leases_gone(pending)
            if ended:
                held = self.lease_many(ended)
                found = self._lookup(ended, again=True)
                yield from found.items()
                pending = [key for key in pending if key not in found and (key not in ended or key in held)]
        if pending:
            self._figures.add("lease_timeouts", len(pending))
            with self._changed:
                self._stale.update(stretch_of(key) for key in pending)  # cleared once the caller has put one
            log.info("shared cache: %d block(s) leased by another node did not arrive within %.1f s; fetching them "
                     "from the archive", len(pending), self.lease_wait)

    def release(self, keys: Iterable[TierKey]) -> None:
        for key in keys:
            self._dealt_with(key)

    def figures(self) -> dict[str, int]:
        figures = self._figures.snapshot()
        with self._changed:
            figures["queued"] = len(self._queue) + self._busy
        return figures

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Finish the uploads queued so far (up to ``timeout`` seconds), then stop the writers."""
        self.flush(timeout)
        with self._changed:
            self._closed = True
            left = sum(1 for _, data in self._queue if data is not None)
            self._queue.clear()
            self._owned.clear()
            self._stale.clear()
            self._queued_bytes = 0
            self._changed.notify_all()
        if left:
            self._figures.add("dropped", left)

    # -- internals -----------------------------------------------------------

    def _path(self, key: TierKey) -> str:
        name = key.name
        return f"{self._base}/{name[:2]}/{name}"

    def _done_locked(self, key: TierKey) -> TierKey | None:
        """Note that ``key``'s block needs this node no more; the stretch whose lease is to be deleted now, if any."""
        stretch = stretch_of(key)
        if stretch in self._stale:  # left in it until the deletion runs (:meth:`_clear_lease`)
            return stretch
        blocks = self._owned.get(stretch)
        if blocks is None or key not in blocks:
            return None
        blocks.discard(key)
        # Kept (empty) until the lease is deleted: a fetch in the stretch meanwhile extends it instead of
        # meeting this node's own lease as another node's.
        return None if blocks else stretch

    def _dealt_with(self, key: TierKey) -> None:
        """:meth:`_done_locked`, the deletion queued (for callers on the read path)."""
        with self._changed:
            ended = self._done_locked(key)
            if ended is not None and not self._closed:
                self._queue.append((ended, None))
                self._changed.notify()

    async def _lease_all(self, stretches: list[TierKey]) -> list[BaseException | None]:
        body = lease_body(self._holder, time.time())

        async def one(key: TierKey) -> None:
            _, object_key = lease_object(self._base, key).split("/", 1)
            await asyncio.wait_for(self._fs._call_s3("put_object", Bucket=self._bucket, Key=object_key, Body=body,
                                                     IfNoneMatch="*"), self.timeout)

        return list(await asyncio.gather(*(one(key) for key in stretches), return_exceptions=True))

    def _leases_gone(self, keys: list[TierKey]) -> list[TierKey]:
        """Those of ``keys`` whose stretch's lease no longer exists (one HEAD per stretch, concurrently; a failure:
        still there)."""
        if not keys:
            return []
        stretches = list(dict.fromkeys(stretch_of(key) for key in keys))

        async def gone(key: TierKey) -> bool:
            _, object_key = lease_object(self._base, key).split("/", 1)
            try:
                await asyncio.wait_for(self._fs._call_s3("head_object", Bucket=self._bucket, Key=object_key),
                                       self.timeout)
            except FileNotFoundError:
                return True
            return False

        async def all_gone() -> list[bool | BaseException]:
            return list(await asyncio.gather(*(gone(stretch) for stretch in stretches), return_exceptions=True))

        try:
            answers = fsspec.asyn.sync(self._fs.loop, all_gone, timeout=self.timeout + 1)
        except Exception:  # noqa: BLE001 - unknown: keep waiting, bounded by the schedule
            return []
        ended = {stretch for stretch, answer in zip(stretches, answers, strict=True) if answer is True}
        return [key for key in keys if stretch_of(key) in ended]

    def _clear_lease(self, stretch: TierKey) -> None:
        """Delete a lease: this node's once its blocks are dealt with (unless it was extended meanwhile), or a stale one."""
        with self._changed:
            stale = stretch in self._stale
            self._stale.discard(stretch)
            if self._owned.get(stretch) and not stale:
                return
            self._ending.add(stretch)
        try:
            self._fs.rm_file(lease_object(self._base, stretch))
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - a lease left behind costs its waiters one bounded wait
            self._figures.add("errors")
        finally:
            with self._changed:
                self._ending.discard(stretch)
                if stretch in self._owned and not self._owned[stretch]:
                    del self._owned[stretch]
                self._changed.notify_all()

    async def _fetch_all(self, keys: list[TierKey]) -> list[bytes | BaseException]:
        async def one(key: TierKey) -> bytes:
            return await asyncio.wait_for(self._get_object(key), self.timeout)

        return list(await asyncio.gather(*(one(key) for key in keys), return_exceptions=True))

    async def _get_object(self, key: TierKey) -> bytes:
        """One ``GetObject`` (a missing one is FileNotFoundError; ``cat_file`` would also list the prefix)."""
        _, object_key = self._path(key).split("/", 1)
        response = await self._fs._call_s3("get_object", Bucket=self._bucket, Key=object_key)
        try:
            data: bytes = await response["Body"].read()
        finally:
            response["Body"].close()
        return data

    def _upload(self, key: TierKey, data: bytes) -> None:
        try:
            self._fs.pipe_file(self._path(key), frame(key, data))
            self._figures.add("bytes_written", len(data))
        except Exception as exc:  # noqa: BLE001 - an upload that fails is counted; the read was served
            self._figures.add("errors")
            if not self._warned:
                self._warned = True
                log.warning("shared cache %s: cannot store blocks (%s); further failures are only counted",
                            redact_url(self.url), exc)

    def _lookup_failed(self, exc: BaseException) -> None:
        self._figures.add("errors")
        self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        log.warning("shared cache %s: lookup failed (%s); reading from the archive for the next %.0f s",
                    redact_url(self.url), type(exc).__name__ if not str(exc) else exc, PAUSE_AFTER_FAILURE)

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                key, data = self._queue.popleft()
                self._queued_bytes -= len(data) if data is not None else 0
                self._busy += 1
            try:
                if data is None:
                    self._clear_lease(key)
                else:
                    self._upload(key, data)
                    with self._changed:
                        ended = self._done_locked(key)
                    if ended is not None:  # after the upload: a waiter that then finds no lease finds the block
                        self._clear_lease(ended)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
