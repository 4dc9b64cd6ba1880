"""The shared tier: blocks kept in an S3 bucket that every node of a fleet reads and fills.

A block is stored as one object, ``PREFIX/XY/NAME``, NAME being the hash of
(URL, version, block size, block index) (:class:`~refmount.read.tiers.base.TierKey`):
every node computes the same name for the same bytes, so nodes agree
without talking to each other, and the archive is read about once per block
for the whole fleet (two nodes missing the same block at the same moment
may both fetch it; the second upload replaces the first with the same bytes).

Lookups are made on the read path, concurrently for all the blocks of one
fetch and bounded by ``timeout``; a missing object is a miss, and any other
failure is a miss too, after which the tier is left alone for
:data:`PAUSE_AFTER_FAILURE` seconds so an unreachable bucket does not cost
every read a timeout. Uploads of blocks fetched from the archive happen in
the background on a few threads, from a queue bounded in bytes; a block
that does not fit is dropped, and a failed upload is counted, never raised.

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
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem

from refmount.errors import ConfigError
from refmount.read.tiers.base import TierFigures, TierKey, frame, unframe
from refmount.store.options import single_attempt
from refmount.urls import protocol_of, redact_url

log = logging.getLogger("refmount.cache.shared")

#: Seconds the tier is skipped after a lookup failed for another reason than a missing object.
PAUSE_AFTER_FAILURE = 30.0
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
                 queue_bytes: int = 32 << 20, writers: int = 4) -> None:
        bucket, prefix = split_shared_url(url)
        self.url = url
        self._bucket = bucket
        self._base = f"{bucket}/{prefix}" if prefix else bucket
        self.timeout = timeout
        self.queue_bytes = queue_bytes
        self._fs: AsyncFileSystem = fsspec.filesystem("s3", **dict(storage_options))
        single_attempt(self._fs)
        self._figures = TierFigures()
        self._paused_until = 0.0
        self._warned = False
        self._queue: deque[tuple[TierKey, bytes]] = deque()
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

    def _lookup(self, wanted: list[TierKey]) -> dict[TierKey, bytes]:
        if not wanted:
            return {}
        if self._closed or time.monotonic() < self._paused_until:
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
                self._figures.add("corrupt")
                log.warning("shared cache: %s does not verify (corrupt or cut short); ignored, fetched from the "
                            "archive", self._path(key))
            elif not isinstance(answer, FileNotFoundError):
                failure = answer
            self._figures.add("misses")
        self._figures.add("hits", len(found))
        if failure is not None:
            self._lookup_failed(failure)
        return found

    def put(self, key: TierKey, data: bytes) -> None:
        with self._changed:
            if self._closed or self._queued_bytes + len(data) > self.queue_bytes:
                self._figures.add("dropped")
                return
            self._queue.append((key, data))
            self._queued_bytes += len(data)
            self._changed.notify()

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
            left = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._changed.notify_all()
        if left:
            self._figures.add("dropped", left)

    # -- internals -----------------------------------------------------------

    def _path(self, key: TierKey) -> str:
        name = key.name
        return f"{self._base}/{name[:2]}/{name}"

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
                self._queued_bytes -= len(data)
                self._busy += 1
            try:
                self._fs.pipe_file(self._path(key), frame(key, data))
                self._figures.add("bytes_written", len(data))
            except Exception as exc:  # noqa: BLE001 - an upload that fails is counted; the read was served
                self._figures.add("errors")
                if not self._warned:
                    self._warned = True
                    log.warning("shared cache %s: cannot store blocks (%s); further failures are only counted",
                                redact_url(self.url), exc)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
