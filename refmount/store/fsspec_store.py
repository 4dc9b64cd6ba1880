"""Ranged reads from object stores through fsspec, with retries and a time bound.

:class:`FsspecBackend` is the :class:`~refmount.store.base.RangeReader` of
refmount. It runs the ranges of one call concurrently on fsspec's event loop for
asynchronous filesystems (s3fs, HTTP), or on a small thread pool for
synchronous ones (local files). Each range must come back with exactly the
requested length: a short or oversized body is an error, never data.
Transient failures are retried with jittered exponential backoff; the whole
call is bounded by ``timeout`` so a stalled store yields EIO, not a hang.

Every object is checked once, at first access, against the facts recorded
in the reference set (:mod:`refmount.store.staleness`), and every later GET on
HTTP and S3 carries the ETag seen then in ``If-Match``: an object rewritten
since the references were made answers ESTALE instead of other bytes.
Because a server may ignore ``If-Match`` or send no ETag, the GETs on HTTP
and S3 are issued here rather than through ``cat_file`` (which hides the
response's headers), and every answer's status, ``Content-Range``, ETag,
Last-Modified and total size are checked (:mod:`refmount.store.responses`).
Local files are stat'ed after each read and compared to the size, inode,
mtime and ctime seen first.

A range whose read failed for good is remembered for a few seconds
(:class:`~refmount.store.retry.RecentFailures`); a read of it then gets one
short attempt, so the read the kernel re-issues after a failed readahead does
not wait out ``timeout`` again.

Which failures are retried, and after what pause, is decided by
:mod:`refmount.store.retry`; what each filesystem is told (endpoints, time
limits, no retries of its own) by :mod:`refmount.store.options`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.http import HTTPFileSystem

from refmount.byterange import ByteRange
from refmount.errors import BackendError, ForbiddenURL, StaleObject
from refmount.metrics import Metrics
from refmount.store.addresses import check_host
from refmount.store.localfile import read_range
from refmount.store.options import BackendOptions, filesystem_options, single_attempt, stall_timeout
from refmount.store.responses import Answer, Body, answered_facts, body_length, requested_bytes
from refmount.store.retry import (
    ChangedObject,
    GaveUp,
    RecentFailures,
    WrongLength,
    describe,
    http_status,
    probe_budget,
    retry_delay,
    unwrap,
)
from refmount.store.s3direct import DirectS3, ObjectName, UseBotocore, eligible
from refmount.store.staleness import SourceFacts, SourceGuard, differences, local_changes, local_facts, recorded_facts
from refmount.urls import LOCAL_PROTOCOLS, local_path, protocol_of, redact_url

T = TypeVar("T")

log = logging.getLogger("refmount.backend")

#: Longest a failed range is answered from memory (see :class:`~refmount.store.retry.RecentFailures`).
FAILURE_MEMORY_MAX = 10.0


class FsspecBackend:
    """:class:`~refmount.store.base.RangeReader` over any fsspec filesystem."""

    def __init__(
        self,
        options: BackendOptions,
        metrics: Metrics | None = None,
        *,
        recorded: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``recorded``: the reference set's source facts, ``{url: {"size", "etag", "mtime"}}``."""
        self.options = options
        self.metrics = metrics or Metrics()
        self._filesystems: dict[str, fsspec.AbstractFileSystem] = {}
        self._direct: dict[str, DirectS3] = {}  # per protocol: S3 GETs through presigned URLs (store/s3direct)
        self._lock = threading.Lock()
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(options.max_concurrency, 16), thread_name_prefix="refmount-io"
        )
        self.guard = SourceGuard(recorded_facts(recorded or {}), self._info, shown=redact_url)
        self.recent_failures = RecentFailures(min(options.timeout, FAILURE_MEMORY_MAX))

    def remember_sources(self, recorded: Mapping[str, Mapping[str, Any]]) -> None:
        """Add the source facts of another loaded reference set to the staleness checks."""
        self.guard.add_recorded(recorded_facts(recorded))

    # -- filesystems -------------------------------------------------------

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem serving ``url`` and the path it knows the object by."""
        policy = self.options.policy
        if not policy.permits(url):
            raise ForbiddenURL(f"{redact_url(url)}: {policy.reason(url)}")
        check_host(policy, url)
        protocol = protocol_of(url)
        if protocol in LOCAL_PROTOCOLS and policy.allow:
            # A prefix vouches for a place, not for where a symbolic link below it leads.
            real = os.path.realpath(local_path(url))
            if not policy.permits(real):
                raise ForbiddenURL(f"{url}: resolves to {real}: {policy.reason(real)}")
        with self._lock:
            fs = self._filesystems.get(protocol)
            if fs is None:
                try:
                    fs = fsspec.filesystem(protocol, **filesystem_options(protocol, self.options))
                except (ImportError, ValueError) as exc:
                    raise BackendError(f"no usable filesystem for protocol {protocol!r}: {exc}") from None
                single_attempt(fs)
                self._filesystems[protocol] = fs
                if protocol == "s3" and eligible(fs):
                    self._direct[protocol] = DirectS3(fs, connect_timeout=min(10.0, self.options.timeout),
                                                      stall_timeout=stall_timeout(self.options))
        return fs, fs._strip_protocol(url)

    def connect(self, urls: Iterable[str]) -> None:
        """Get each protocol's client ready in the background, before the first read needs it.

        The first request of a fresh S3 client loads botocore's service
        models and builds a TLS context: a few hundred milliseconds that
        would otherwise land on the first read of a fresh mount. So one
        object per protocol is looked up now (the lookup the first read
        would make anyway to learn its size and ETag). It runs beside the
        mount, never delaying it; a failure is left for the first read to
        meet and report.
        """
        first_of: dict[str, str] = {}
        for url in urls:
            first_of.setdefault(protocol_of(url), url)
        if first_of:
            threading.Thread(target=self._connect, args=(list(first_of.values()),), name="refmount-connect",
                             daemon=True).start()

    def _connect(self, urls: list[str]) -> None:
        for url in urls:
            try:
                self.guard.check(url)
            except Exception as exc:  # noqa: BLE001 - see connect()
                log.debug("could not reach %s ahead of the first read: %s", redact_url(url), describe(exc))

    # -- RangeReader -------------------------------------------------------

    def read_ranges(self, url: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        return [_joined(body) for body in self._read_bodies(url, ranges, 0)]

    def read_pieces(self, url: str, ranges: Sequence[ByteRange], piece_size: int) -> list[list[bytes]]:
        if piece_size <= 0:
            raise ValueError(f"piece_size must be positive, not {piece_size}")
        return [_pieces(body, piece_size) for body in self._read_bodies(url, ranges, piece_size)]

    def _read_bodies(self, url: str, ranges: Sequence[ByteRange], piece_size: int) -> list[Body]:
        """Every range's body; read in pieces of ``piece_size`` where the store allows (0: in one)."""
        if not ranges:
            return []
        fs, path = self.filesystem(url)
        facts = self._first_contact(url)
        return self._remembering_failures(
            url, ranges, lambda budget: self._read_ranges(fs, url, path, ranges, facts, budget, piece_size)
        )

    def _first_contact(self, url: str) -> SourceFacts:
        """The guard's facts of ``url``; a lookup that just failed gets one short attempt."""
        return self._remembering_failures(
            url, None, lambda budget: self.guard.check(url, lambda u: self._info(u, budget))
        )

    def _remembering_failures(self, url: str, spans: Sequence[ByteRange] | None, attempt: Callable[[float], T]) -> T:
        """``attempt(budget)`` with the whole ``timeout``, or one short try when the same request just failed.

        The kernel re-issues a failed readahead at once; without this memory a
        read(2) would wait for the store twice (see :class:`refmount.store.retry.RecentFailures`).
        ``spans`` None stands for the object's first lookup.
        """
        earlier = self.recent_failures.find(url, spans)
        budget = self.options.timeout if earlier is None else probe_budget(self.options.timeout)
        try:
            result = attempt(budget)
        except StaleObject:
            raise
        except BackendError as exc:
            self.recent_failures.remember(url, spans, exc)
            if earlier is not None:
                raise GaveUp(f"{exc}; it failed the same way {earlier}") from None
            raise
        self.recent_failures.forget(url, spans)
        return result

    def _read_ranges(
        self, fs: fsspec.AbstractFileSystem, url: str, path: str, ranges: Sequence[ByteRange], facts: SourceFacts,
        budget: float, piece_size: int,
    ) -> list[Body]:
        deadline = time.monotonic() + budget
        direct = self._direct.get(protocol_of(url))
        if direct is not None:
            name = ObjectName(*fs.split_path(path))
            if direct.serves(name.bucket):
                return self._read_direct(direct, fs, url, path, name, ranges, facts, deadline, budget, piece_size)
        if self._is_async(fs):
            future = asyncio.run_coroutine_threadsafe(
                self._read_async(fs, url, path, ranges, deadline, facts), fs.loop
            )
            try:
                return list(future.result(timeout=budget + 1))
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise GaveUp(f"{redact_url(url)}: no answer within {budget:g} s") from None
        futures = [self._threads.submit(self._read_sync, fs, url, path, r, deadline, facts) for r in ranges]
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic()) + 1) for f in futures]
        except concurrent.futures.TimeoutError:
            raise GaveUp(f"{redact_url(url)}: no answer within {budget:g} s") from None

    def size(self, url: str) -> int:
        """The object's size as seen at first access (one lookup per URL, bounded and retried)."""
        self.filesystem(url)
        size = self._first_contact(url).size
        if size is None:
            raise BackendError(f"{redact_url(url)}: the store does not report the object's size")
        return size

    def known_size(self, url: str) -> int | None:
        """The object's size if the store reports one; checks the object at first access.

        Called on every read: after the first, the answer comes from the facts
        seen then (the lookup that found them already enforced the URL policy).
        """
        return self._first_contact(url).size

    def version_of(self, url: str) -> str | None:
        """Text naming the version of ``url`` first seen (its ETag, else size and mtime), or None if nothing does.

        Persistent caches key blocks by it, so a rewritten object is never answered from them.
        A local file's version is its identity (device, inode, size, mtime and ctime in ns).
        """
        facts = self._first_contact(url)
        if facts.identity is not None:
            return "file:" + ":".join(str(part) for part in facts.identity)
        if facts.etag is not None:
            return f"etag:{facts.size}:{facts.etag.strip()}"
        if facts.size is not None and facts.mtime is not None:
            return f"mtime:{facts.size}:{facts.mtime:.0f}"
        return None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for direct in self._direct.values():
            direct.close()

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _is_async(fs: fsspec.AbstractFileSystem) -> bool:
        return isinstance(fs, AsyncFileSystem) and fs.asynchronous is False and getattr(fs, "loop", None) is not None

    def _info(self, url: str, budget: float | None = None) -> Mapping[str, Any]:
        """One object's metadata (size, ETag, mtime), retried like a GET and bounded by ``budget`` (``timeout``)."""
        fs, path = self.filesystem(url)
        deadline = time.monotonic() + (self.options.timeout if budget is None else budget)
        whole = ByteRange(0, 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError()
                self.metrics.add("heads")
                info: Mapping[str, Any]
                if self._is_async(fs):
                    coroutine = asyncio.wait_for(fs._info(path), remaining)
                    info = asyncio.run_coroutine_threadsafe(coroutine, fs.loop).result(timeout=remaining + 1)
                elif protocol_of(url) in LOCAL_PROTOCOLS:
                    info = self._threads.submit(local_facts, path).result(timeout=remaining)
                else:
                    info = self._threads.submit(fs.info, path).result(timeout=remaining)
                if info.get("type") == "directory":
                    raise IsADirectoryError(path)
                return info
            except concurrent.futures.TimeoutError:
                exc: BaseException = TimeoutError()
            except Exception as error:  # noqa: BLE001 - classified below
                exc = error
            time.sleep(self._next_delay(url, whole, exc, attempt, deadline, what="lookup"))

    def _read_direct(
        self, direct: DirectS3, fs: AsyncFileSystem, url: str, path: str, name: ObjectName,
        ranges: Sequence[ByteRange], facts: SourceFacts, deadline: float, budget: float, piece_size: int,
    ) -> list[Body]:
        """The ranges as GETs of a presigned URL: the first in this thread, the others on the I/O pool."""
        def one(rng: ByteRange) -> Body:
            return self._attempts_direct(direct, fs, url, path, name, rng, deadline, facts, piece_size)

        others = [self._threads.submit(one, rng) for rng in ranges[1:]]
        try:
            first = one(ranges[0])
            return [first, *(f.result(timeout=max(0.0, deadline - time.monotonic()) + 1) for f in others)]
        except concurrent.futures.TimeoutError:
            raise GaveUp(f"{redact_url(url)}: no answer within {budget:g} s") from None
        finally:
            for future in others:
                future.cancel()

    def _attempts_direct(
        self, direct: DirectS3, fs: AsyncFileSystem, url: str, path: str, name: ObjectName, rng: ByteRange,
        deadline: float, facts: SourceFacts, piece_size: int,
    ) -> Body:
        if rng.length == 0:
            return b""
        where = f"{redact_url(url)} [{rng.start}, {rng.stop})"
        attempt = 0
        while True:
            attempt += 1
            try:
                if deadline - time.monotonic() <= 0:
                    raise TimeoutError()
                self.metrics.add("gets")
                answer = direct.get(name, rng, facts.strong_etag, deadline, where, piece_size)
                return self._checked(url, rng, self._answered_bytes(url, rng, answer, facts), facts)
            except UseBotocore:
                future = asyncio.run_coroutine_threadsafe(
                    self._attempts_async(fs, url, path, rng, deadline, facts), fs.loop
                )
                return future.result(timeout=max(0.0, deadline - time.monotonic()) + 1)
            except Exception as exc:  # noqa: BLE001 - classified below
                delay = self._next_delay(url, rng, exc, attempt, deadline)
            time.sleep(delay)

    async def _read_async(
        self, fs: AsyncFileSystem, url: str, path: str, ranges: Sequence[ByteRange], deadline: float,
        facts: SourceFacts,
    ) -> list[Body]:
        semaphore = asyncio.Semaphore(self.options.max_concurrency)

        async def one(rng: ByteRange) -> Body:
            async with semaphore:
                return await self._attempts_async(fs, url, path, rng, deadline, facts)

        return list(await asyncio.gather(*(one(r) for r in ranges)))

    async def _attempts_async(
        self, fs: AsyncFileSystem, url: str, path: str, rng: ByteRange, deadline: float, facts: SourceFacts
    ) -> Body:
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError()
                self.metrics.add("gets")
                async with asyncio.timeout(remaining):  # unlike wait_for, no task of its own per GET
                    answer = await self._get_async(fs, path, rng, facts.strong_etag)
                return self._checked(url, rng, self._answered_bytes(url, rng, answer, facts), facts)
            except Exception as exc:  # noqa: BLE001 - classified below
                delay = self._next_delay(url, rng, exc, attempt, deadline)
            await asyncio.sleep(delay)

    async def _get_async(self, fs: AsyncFileSystem, path: str, rng: ByteRange, etag: str | None) -> Answer | bytes:
        """One ranged GET, conditional on the ETag seen at first access where the store supports it.

        HTTP and S3 give the whole answer (status and identifying headers) to be
        checked; other asynchronous filesystems only the body.
        """
        if rng.length == 0:
            return b""
        if isinstance(fs, HTTPFileSystem):
            return await self._http_get(fs, path, rng, etag)
        if hasattr(fs, "_call_s3") and hasattr(fs, "split_path"):
            return await self._s3_get(fs, path, rng, etag)
        data: bytes = await fs._cat_file(path, start=rng.start, end=rng.stop)
        return data

    @staticmethod
    async def _http_get(fs: HTTPFileSystem, url: str, rng: ByteRange, etag: str | None) -> Answer:
        """A ranged GET through the filesystem's own session (its redirect checks and time limits included)."""
        kwargs = dict(fs.kwargs)
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Range"] = f"bytes={rng.start}-{rng.stop - 1}"
        headers["Accept-Encoding"] = "identity"  # a range is of the stored bytes, not of a re-encoding
        if etag is not None:
            headers["If-Match"] = etag
        session = await fs.set_session()
        async with session.get(fs.encode_url(url), headers=headers, **kwargs) as response:
            if response.status == 412 and etag is not None:
                raise ChangedObject(f"the store refused If-Match {etag}")
            body = await response.read()
            fs._raise_not_found_for_status(response, url)
            return Answer(response.status, body, response.headers.get("Content-Range"),
                          response.headers.get("ETag"), response.headers.get("Last-Modified"))

    @staticmethod
    async def _s3_get(fs: AsyncFileSystem, path: str, rng: ByteRange, etag: str | None) -> Answer:
        """``GetObject`` with Range (and If-Match), keeping the answer's status and headers."""
        bucket, key, version = fs.split_path(path)
        extra: dict[str, Any] = {"VersionId": version} if version else {}
        if etag is not None:
            extra["IfMatch"] = etag
        extra.update(getattr(fs, "req_kw", None) or {})
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key,
                                         Range=f"bytes={rng.start}-{rng.stop - 1}", **extra)
        except Exception as exc:
            if etag is not None and (http_status(exc) == 412 or "PreconditionFailed" in str(exc)):
                raise ChangedObject(f"the store refused If-Match {etag}") from None
            raise
        try:
            body: bytes = await response["Body"].read()
        finally:
            response["Body"].close()
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return Answer(status, body, response.get("ContentRange"), response.get("ETag"), response.get("LastModified"))

    def _answered_bytes(self, url: str, rng: ByteRange, answer: Answer | bytes, facts: SourceFacts) -> Body:
        """The body of an answer that is ``rng`` of the version first seen; ChangedObject or an error otherwise."""
        if isinstance(answer, bytes):
            return answer
        changed = differences(facts, answered_facts(answer))
        if changed:
            raise ChangedObject("; ".join(changed))
        return requested_bytes(f"{redact_url(url)} [{rng.start}, {rng.stop})", rng, answer, facts.size)

    def _read_sync(
        self, fs: fsspec.AbstractFileSystem, url: str, path: str, rng: ByteRange, deadline: float, facts: SourceFacts
    ) -> Body:
        attempt = 0
        local = protocol_of(url) in LOCAL_PROTOCOLS
        while True:
            attempt += 1
            try:
                self.metrics.add("gets")
                if local:  # opened once below the allowed prefix and read from that descriptor
                    data, _ = read_range(path, rng.start, rng.stop, self.options.policy)
                    if changed := local_changes(path, facts):  # no conditional reads on a disk
                        raise ChangedObject("; ".join(changed))
                else:
                    data = fs.cat_file(path, start=rng.start, end=rng.stop)
                return self._checked(url, rng, data, facts)
            except Exception as exc:  # noqa: BLE001 - classified below
                delay = self._next_delay(url, rng, exc, attempt, deadline)
            time.sleep(delay)

    def _checked(self, url: str, rng: ByteRange, data: Body, facts: SourceFacts) -> Body:
        length = body_length(data)
        if length != rng.length:
            where = f"{redact_url(url)} [{rng.start}, {rng.stop})"
            if length > rng.length:
                raise WrongLength(
                    f"{where}: got {length} bytes instead of {rng.length} (the server ignores Range requests)",
                    oversized=True,
                )
            if facts.size is not None and rng.stop > facts.size:
                raise WrongLength(
                    f"{where}: the references reach beyond the end of the object ({facts.size} bytes)",
                    oversized=True,
                )
            raise WrongLength(f"{where}: got {length} bytes instead of {rng.length} (body cut short)")
        self.metrics.add("bytes_fetched", length)
        return data

    def _next_delay(
        self, url: str, rng: ByteRange, exc: BaseException, attempt: int, deadline: float, what: str = "GET"
    ) -> float:
        """The pause before the next attempt (counted and logged); raises the final error instead."""
        where = f"{redact_url(url)} [{rng.start}, {rng.stop})" if rng.length else redact_url(url)
        cause = unwrap(exc)
        if isinstance(cause, ChangedObject):
            self.guard.mark_stale(url, str(cause))
            raise StaleObject(f"{redact_url(url)} changed since the references were made") from None
        delay = retry_delay(exc, attempt, where=where, retries=self.options.retries, deadline=deadline,
                            timeout=self.options.timeout)
        self.metrics.add("get_retries")
        log.info("retrying %s %s after %s (attempt %d)", what, where, describe(cause), attempt + 1)
        return delay


def _joined(body: Body) -> bytes:
    """``body`` as one buffer (a copy only when it came in several pieces)."""
    if isinstance(body, bytes):
        return body
    return body[0] if len(body) == 1 else b"".join(body)


def _pieces(body: Body, piece_size: int) -> list[bytes]:
    """``body`` cut into pieces of ``piece_size`` (the last shorter); pieces already that size are kept as they are."""
    if isinstance(body, bytes) and len(body) <= piece_size:
        return [body]
    if not isinstance(body, bytes) and all(len(piece) == piece_size for piece in body[:-1]):
        return list(body)
    whole = memoryview(_joined(body))
    return [bytes(whole[at : at + piece_size]) for at in range(0, len(whole), piece_size)]
