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
fetches it through a lease object per block (:mod:`~refmount.read.tiers.lease`):
the others wait, for at most ``lease_wait`` seconds, for the block to
appear in the bucket, so even a fleet started at once reads the archive
about once per block. ``lease_wait=0`` takes no leases.

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
from refmount.read.tiers.lease import WaitSchedule, held_elsewhere, lease_body, lease_object
from refmount.store.options import single_attempt
from refmount.urls import protocol_of, redact_url

log = logging.getLogger("refmount.cache.shared")

#: Seconds the tier is skipped after a lookup failed for another reason than a missing object.
PAUSE_AFTER_FAILURE = 30.0
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
                 queue_bytes: int = 32 << 20, writers: int = 4, lease_wait: float = LEASE_WAIT) -> None:
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
        #: Leases to delete once their block is put: this node's own, and others' it stopped waiting on.
        self._to_clear: set[TierKey] = set()
        #: (key, block or None for a lease deletion only, whether to delete the lease after the upload)
        self._queue: deque[tuple[TierKey, bytes | None, bool]] = deque()
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
        before (a lease re-check, a waiter's poll), whose misses and damaged objects were counted and logged then."""
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
        with self._changed:
            clear = key in self._to_clear
            self._to_clear.discard(key)
            if self._closed or self._queued_bytes + len(data) > self.queue_bytes:
                self._figures.add("dropped")
                if clear and not self._closed:  # the block is not kept, but its waiters need not wait on
                    self._queue.append((key, None, True))
                    self._changed.notify()
                return
            self._queue.append((key, data, clear))
            self._queued_bytes += len(data)
            self._changed.notify()

    # -- LeasingTier ---------------------------------------------------------

    def lease_many(self, keys: Iterable[TierKey]) -> tuple[set[TierKey], dict[TierKey, bytes]]:
        """One conditional create per key, concurrently; any failure but "exists" leaves the key to the caller.

        A holder uploads its block before it deletes its lease, so a lease won
        after the caller's lookup may be one just ended: the won blocks are
        looked up once more, and those found are answered (their fresh leases
        deleted) instead of being fetched a second time.
        """
        wanted = list(keys)
        now = time.monotonic()
        if not wanted or self.lease_wait <= 0 or self._closed or now < self._paused_until \
                or now < self._leases_paused_until:
            return set(), {}
        try:
            answers = fsspec.asyn.sync(self._fs.loop, self._lease_all, wanted, timeout=self.timeout + 1)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every block is fetched by this node
            answers = [exc] * len(wanted)
        held: set[TierKey] = set()
        won: list[TierKey] = []
        failure: BaseException | None = None
        for key, answer in zip(wanted, answers, strict=True):
            if answer is None:
                won.append(key)
            elif held_elsewhere(answer):
                held.add(key)
            else:
                failure = answer
        arrived = self._lookup(won, again=True)
        with self._changed:
            self._to_clear.update(key for key in won if key not in arrived)
            self._queue.extend((key, None, True) for key in arrived)
            self._changed.notify_all()
        self._figures.add("leases_won", len(won) - len(arrived))
        self._figures.add("leases_held", len(held))
        if failure is not None:
            self._figures.add("errors")
            self._leases_paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("shared cache %s: cannot take fetch leases (%s); fetching without them for the next %.0f s",
                        redact_url(self.url), type(failure).__name__ if not str(failure) else failure,
                        PAUSE_AFTER_FAILURE)
        return held, arrived

    def await_blocks(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """Look for the blocks at growing intervals; stop waiting for one whose lease is gone without it.

        A holder deletes its lease after the upload, or without one when it
        could not fetch or keep the block (its upload queue full): a block
        still missing whose lease is gone is looked up once more (it may have
        landed between the two looks) and is otherwise the caller's to fetch.
        """
        pending = list(keys)
        schedule = WaitSchedule(self.lease_wait, time.monotonic())
        while pending:
            pause = schedule.pause(time.monotonic())
            if pause is None:
                break
            time.sleep(pause)
            found = self._lookup(pending, again=True)
            yield from found.items()
            pending = [key for key in pending if key not in found]
            ended = self._leases_gone(pending)
            if ended:
                found = self._lookup(ended, again=True)
                yield from found.items()
                pending = [key for key in pending if key not in ended]
        if pending:
            self._figures.add("lease_timeouts", len(pending))
            with self._changed:
                self._to_clear.update(pending)  # the caller fetches and puts them, which ends the leases
            log.info("shared cache: %d block(s) leased by another node did not arrive within %.1f s; fetching them "
                     "from the archive", len(pending), self.lease_wait)

    def release(self, keys: Iterable[TierKey]) -> None:
        with self._changed:
            for key in keys:
                if key in self._to_clear and not self._closed:
                    self._to_clear.discard(key)
                    self._queue.append((key, None, True))
            self._changed.notify_all()

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
            left = sum(1 for _, data, _ in self._queue if data is not None)
            self._queue.clear()
            self._to_clear.clear()
            self._queued_bytes = 0
            self._changed.notify_all()
        if left:
            self._figures.add("dropped", left)

    # -- internals -----------------------------------------------------------

    def _path(self, key: TierKey) -> str:
        name = key.name
        return f"{self._base}/{name[:2]}/{name}"

    async def _lease_all(self, keys: list[TierKey]) -> list[BaseException | None]:
        body = lease_body(self._holder, time.time())

        async def one(key: TierKey) -> None:
            _, object_key = lease_object(self._base, key).split("/", 1)
            await asyncio.wait_for(self._fs._call_s3("put_object", Bucket=self._bucket, Key=object_key, Body=body,
                                                     IfNoneMatch="*"), self.timeout)

        return list(await asyncio.gather(*(one(key) for key in keys), return_exceptions=True))

    def _leases_gone(self, keys: list[TierKey]) -> list[TierKey]:
        """Those of ``keys`` whose lease object no longer exists (one HEAD each, concurrently; a failure: still there)."""
        if not keys:
            return []

        async def gone(key: TierKey) -> bool:
            _, object_key = lease_object(self._base, key).split("/", 1)
            try:
                await asyncio.wait_for(self._fs._call_s3("head_object", Bucket=self._bucket, Key=object_key),
                                       self.timeout)
            except FileNotFoundError:
                return True
            return False

        async def all_gone() -> list[bool | BaseException]:
            return list(await asyncio.gather(*(gone(key) for key in keys), return_exceptions=True))

        try:
            answers = fsspec.asyn.sync(self._fs.loop, all_gone, timeout=self.timeout + 1)
        except Exception:  # noqa: BLE001 - unknown: keep waiting, bounded by the schedule
            return []
        return [key for key, answer in zip(keys, answers, strict=True) if answer is True]

    def _clear_lease(self, key: TierKey) -> None:
        try:
            self._fs.rm_file(lease_object(self._base, key))
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - a lease left behind costs its waiters one bounded wait
            self._figures.add("errors")

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
                key, data, clear = self._queue.popleft()
                self._queued_bytes -= len(data) if data is not None else 0
                self._busy += 1
            try:
                if data is not None:
                    self._upload(key, data)
                if clear:  # after the upload: a waiter that then finds no lease finds the block
                    self._clear_lease(key)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
