"""Ranged reads from object stores through fsspec, with retries and a time bound.

The rest of refmount sees only :class:`RangeReader`: "give me these byte
ranges of this URL" and "how big is this object". The fsspec implementation
runs the ranges of one call concurrently on fsspec's event loop for
asynchronous filesystems (s3fs, HTTP), or on a small thread pool for
synchronous ones (local files). Each range must come back with exactly the
requested length: a short or oversized body is an error, never data.
Transient failures are retried with jittered exponential backoff; the whole
call is bounded by ``timeout`` so a stalled store yields EIO, not a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import fsspec
from fsspec.asyn import AsyncFileSystem

from .errors import BackendError, ForbiddenURL, NotFound
from .metrics import Metrics
from .policy import UrlPolicy, protocol_of
from .ranges import ByteRange

log = logging.getLogger("refmount.backend")


class RangeReader(Protocol):
    """What the cache needs from an object store."""

    def read_ranges(self, url: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of every range, in order, each exactly ``len(range)`` long."""

    def size(self, url: str) -> int:
        """The size of the object at ``url``."""


@dataclass(frozen=True)
class BackendOptions:
    """The backend's share of the mount options."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    timeout: float = 30.0
    retries: int = 4
    max_concurrency: int = 32
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    policy: UrlPolicy = field(default_factory=UrlPolicy)


class WrongLength(BackendError):
    """A body whose length is not the one asked for (cut short, or range ignored)."""


def filesystem_options(protocol: str, options: BackendOptions) -> dict[str, Any]:
    """fsspec constructor arguments for ``protocol``: the generic options plus ``-o proto.x=y``."""
    kwargs: dict[str, Any] = {}
    if protocol == "s3":
        client_kwargs: dict[str, Any] = {}
        if options.endpoint_url:
            client_kwargs["endpoint_url"] = options.endpoint_url
        if options.region:
            client_kwargs["region_name"] = options.region
        if client_kwargs:
            kwargs["client_kwargs"] = client_kwargs
        if options.profile:
            kwargs["profile"] = options.profile
        if options.anon:
            kwargs["anon"] = True
        # botocore's own retries stay short: the retry loop here owns the time budget.
        kwargs["config_kwargs"] = {
            "connect_timeout": min(10.0, options.timeout),
            "read_timeout": options.timeout,
            "retries": {"max_attempts": 2, "mode": "standard"},
            "max_pool_connections": max(10, options.max_concurrency),
        }
    extra = dict(options.storage_options.get(protocol, {}))
    if protocol == "s3" and "client_kwargs" in extra and "client_kwargs" in kwargs:
        extra["client_kwargs"] = {**kwargs["client_kwargs"], **extra["client_kwargs"]}
    kwargs.update(extra)
    kwargs["skip_instance_cache"] = True
    return kwargs


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt: timeouts, resets, 5xx, throttling, short bodies."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotFound, ForbiddenURL)):
        return False
    if isinstance(exc, (WrongLength, TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        return True
    name = type(exc).__name__
    return any(word in name for word in ("Timeout", "Connection", "Disconnected", "Payload", "Client", "Server"))


class FsspecBackend:
    """:class:`RangeReader` over any fsspec filesystem."""

    def __init__(self, options: BackendOptions, metrics: Metrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or Metrics()
        self._filesystems: dict[str, fsspec.AbstractFileSystem] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(options.max_concurrency, 16), thread_name_prefix="refmount-io"
        )

    # -- filesystems -------------------------------------------------------

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem serving ``url`` and the path it knows the object by."""
        if not self.options.policy.permits(url):
            raise ForbiddenURL(f"{_redact(url)}: {self.options.policy.reason(url)}")
        protocol = protocol_of(url)
        with self._lock:
            fs = self._filesystems.get(protocol)
            if fs is None:
                try:
                    fs = fsspec.filesystem(protocol, **filesystem_options(protocol, self.options))
                except (ImportError, ValueError) as exc:
                    raise BackendError(f"no usable filesystem for protocol {protocol!r}: {exc}") from None
                self._filesystems[protocol] = fs
        return fs, fs._strip_protocol(url)

    # -- RangeReader -------------------------------------------------------

    def read_ranges(self, url: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        if not ranges:
            return []
        fs, path = self.filesystem(url)
        deadline = time.monotonic() + self.options.timeout
        if isinstance(fs, AsyncFileSystem) and fs.asynchronous is False and getattr(fs, "loop", None) is not None:
            future = asyncio.run_coroutine_threadsafe(self._read_async(fs, url, path, ranges, deadline), fs.loop)
            try:
                return future.result(timeout=self.options.timeout + 1)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise BackendError(f"{_redact(url)}: no answer within {self.options.timeout:g} s") from None
        futures = [self._threads.submit(self._read_sync, fs, url, path, r, deadline) for r in ranges]
        return [f.result() for f in futures]

    def size(self, url: str) -> int:
        cached = self._sizes.get(url)
        if cached is not None:
            return cached
        fs, path = self.filesystem(url)
        try:
            size = int(fs.size(path))
        except FileNotFoundError:
            raise BackendError(f"{_redact(url)}: object not found") from None
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes EIO
            raise BackendError(f"{_redact(url)}: size lookup failed: {_describe(exc)}") from None
        self._sizes[url] = size
        return size

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- internals ---------------------------------------------------------

    async def _read_async(
        self, fs: AsyncFileSystem, url: str, path: str, ranges: Sequence[ByteRange], deadline: float
    ) -> list[bytes]:
        semaphore = asyncio.Semaphore(self.options.max_concurrency)

        async def one(rng: ByteRange) -> bytes:
            async with semaphore:
                return await self._attempts_async(fs, url, path, rng, deadline)

        return list(await asyncio.gather(*(one(r) for r in ranges)))

    async def _attempts_async(
        self, fs: AsyncFileSystem, url: str, path: str, rng: ByteRange, deadline: float
    ) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError()
                self.metrics.add("gets")
                data = await asyncio.wait_for(fs._cat_file(path, start=rng.start, end=rng.stop), remaining)
                return self._checked(url, rng, data)
            except Exception as exc:  # noqa: BLE001 - classified below
                delay = self._next_delay(url, rng, exc, attempt, deadline)
            await asyncio.sleep(delay)

    def _read_sync(self, fs: fsspec.AbstractFileSystem, url: str, path: str, rng: ByteRange, deadline: float) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                self.metrics.add("gets")
                data = fs.cat_file(path, start=rng.start, end=rng.stop)
                return self._checked(url, rng, data)
            except Exception as exc:  # noqa: BLE001 - classified below
                delay = self._next_delay(url, rng, exc, attempt, deadline)
            time.sleep(delay)

    def _checked(self, url: str, rng: ByteRange, data: bytes) -> bytes:
        if len(data) != rng.length:
            raise WrongLength(
                f"{_redact(url)} [{rng.start}, {rng.stop}): got {len(data)} bytes instead of {rng.length}"
            )
        self.metrics.add("bytes_fetched", len(data))
        return data

    def _next_delay(self, url: str, rng: ByteRange, exc: BaseException, attempt: int, deadline: float) -> float:
        """Decide whether to retry; raise the final error when not."""
        where = f"{_redact(url)} [{rng.start}, {rng.stop})"
        timed_out = isinstance(exc, (asyncio.TimeoutError, TimeoutError))
        if isinstance(exc, FileNotFoundError):
            raise BackendError(f"{where}: object not found") from None
        if isinstance(exc, PermissionError):
            raise BackendError(f"{where}: access denied") from None
        delay = min(2.0, 0.1 * (2 ** (attempt - 1))) * (0.5 + random.random() / 2)
        if not is_transient(exc) or attempt >= self.options.retries or time.monotonic() + delay >= deadline:
            reason = f"no answer within {self.options.timeout:g} s" if timed_out else _describe(exc)
            raise BackendError(f"{where}: {reason} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
        self.metrics.add("get_retries")
        log.info("retrying GET %s after %s (attempt %d)", where, _describe(exc), attempt + 1)
        return delay


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _redact(url: str) -> str:
    """Drop user:password@ and query strings (presigned signatures) from a URL for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    path = path.split("?", 1)[0]
    return f"{scheme}://{host}{slash}{path}"


redact_url = _redact
