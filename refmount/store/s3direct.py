"""S3 ranged GETs as plain HTTP requests to presigned URLs, read straight into the body.

Why: a ranged ``GetObject`` through s3fs costs botocore's whole request
pipeline per GET (parameter validation, endpoint rules, event hooks, SigV4
signing, response parsing with dateutil) and aiohttp's body handling (its
parser copies every socket read into a new ``bytes``, then they are joined),
plus an event-loop hop each way. Measured on cold sequential reads that was
about half of the daemon's CPU per GiB. A presigned ``GetObject`` URL signs
only the host, so one URL per object serves every ranged GET of it for its
lifetime, with ``Range`` and ``If-Match`` added as ordinary headers: the
per-GET work is then one HTTP request on a kept-alive ``http.client``
connection in the calling thread, and ``HTTPResponse.read(n)`` reads the body
from the socket into one ``bytes`` of ``n`` without another copy.

What this module decides, and what it leaves to botocore:

* **Which filesystems.** :func:`eligible` accepts an s3fs filesystem whose
  requests carry nothing a presigned URL cannot (requester pays, SSE-C keys
  and other per-request arguments, an HTTP proxy in its configuration or in
  the environment, client certificates); the others keep the botocore path.
* **Signatures.** URLs are made by the filesystem's own botocore client
  (its credentials, refreshing ones included, its region and addressing
  style), signed for :data:`SIGNED_FOR` seconds and reused for at most
  :data:`REUSED_FOR`, so a URL is never used near its expiry or beyond the
  temporary credentials it was signed with (botocore refreshes those while
  at least ten minutes remain). SigV4 query signing is asked for; botocore
  would otherwise sign presigned URLs with SigV2 in the older AWS regions,
  which many S3-compatible servers refuse.
* **Answers.** 206/200 come back as an :class:`~refmount.store.responses.Answer`
  for the backend's usual checks (Content-Range, ETag, Last-Modified, size);
  412 is a changed object; 404 a missing one; 5xx, 408 and 429 are
  :class:`StatusError` (transient by :mod:`refmount.store.retry`'s rule);
  a 403 gets one fresh signature, and a 403 after it, a redirect or a 400 means
  the bucket wants something only botocore does (another region, another
  signature version): :class:`UseBotocore` tells the backend to send that
  bucket's GETs through botocore from then on, where the error, if it stays,
  is reported as botocore words it.
* **Time.** Each socket operation waits at most the stall timeout; the
  whole request is bounded by the caller's deadline through one watchdog
  thread that shuts the socket down when the deadline passes
  (:class:`Watchdog`), so a server that drips a byte now and then cannot
  hold a reader beyond ``timeout``.
"""

from __future__ import annotations

import asyncio
import heapq
import http.client
import itertools
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from refmount.byterange import ByteRange
from refmount.store.responses import Answer, Body, body_length
from refmount.store.retry import ChangedObject, WrongLength

log = logging.getLogger("refmount.backend")

#: Seconds a presigned URL is signed for.
SIGNED_FOR = 900
#: Seconds a presigned URL is used for after signing: well inside :data:`SIGNED_FOR`.
REUSED_FOR = 300.0
#: A body this much longer than the range is still read (so the backend reports it as too long);
#: beyond that it is refused unread (a server ignoring Range would send the whole object).
_LONGER_READ = 1 << 20
#: Idle kept-alive connections kept per server.
IDLE_PER_SERVER = 32

#: Client settings (s3fs ``config_kwargs``) a presigned URL cannot carry.
_NOT_PRESIGNABLE_CONFIG = ("proxies", "client_cert")

#: Statuses meaning the bucket wants what only botocore does (a region redirect, another signature).
_BOTOCORE_ONLY = frozenset({301, 302, 307, 308, 400})


class StatusError(Exception):
    """An HTTP status that is not an answer to the GET; ``status`` classifies it for the retry rule."""

    def __init__(self, status: int, where: str) -> None:
        super().__init__(f"{where}: HTTP {status}")
        self.status = status


class UseBotocore(Exception):
    """This bucket's GETs must go through botocore (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class ObjectName:
    """An object as S3 names it."""

    bucket: str
    key: str
    version: str | None = None


class Watchdog:
    """Calls a function when its deadline passes unless disarmed first: one thread for every request.

    A thread per request would cost more than a short GET; this costs a
    lock, a heap push and a notify per request.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, fire: Callable[[], None]) -> int:
        """Call ``fire`` at ``deadline`` (``time.monotonic()``); returns the token :meth:`disarm` takes."""
        token = next(self._ids)
        with self._cond:
            self._armed[token] = fire
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refmount-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                fire = self._armed.pop(token)
            try:
                fire()
            except OSError:
                pass  # the socket is already closed: nothing left to stop


class Connections:
    """Kept-alive ``http.client`` connections per server, handed to one request at a time."""

    def __init__(self, context: ssl.SSLContext | None, connect_timeout: float) -> None:
        self._context = context or ssl.create_default_context()  # used only for https
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, scheme: str, host: str, port: int, *, new: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to the server (``new``: not a kept one), and whether it was used before.

        A kept connection may have been closed by the server meanwhile; the
        caller retries once on a new one when its first use fails that way.
        """
        if not new:
            with self._lock:
                idle = self._idle.get((scheme, host, port))
                if idle:
                    return idle.pop(), True
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._context), False
        return http.client.HTTPConnection(host, port, timeout=self._connect_timeout), False

    def give(self, scheme: str, host: str, port: int, connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose last answer was read to its end."""
        with self._lock:
            idle = self._idle.setdefault((scheme, host, port), [])
            if len(idle) < IDLE_PER_SERVER:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def eligible(fs: Any) -> bool:
    """Whether ``fs`` (an s3fs filesystem) reads objects with nothing a presigned URL cannot carry."""
    if not (hasattr(fs, "_call_s3") and hasattr(fs, "split_path")):
        return False
    if getattr(fs, "req_kw", None):
        return False  # requester pays, SSE-C keys: per-request arguments
    config = dict(getattr(fs, "config_kwargs", None) or {})
    if any(config.get(name) for name in _NOT_PRESIGNABLE_CONFIG):
        return False
    proxies = urllib.request.getproxies()  # HTTP(S)_PROXY: botocore goes through it, http.client would not
    if not (proxies.get("http") or proxies.get("https")):
        return True
    endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url") or getattr(fs, "endpoint_url", None)
    host = urlsplit(str(endpoint)).hostname if endpoint else None
    return host is not None and bool(urllib.request.proxy_bypass(host))  # NO_PROXY names the endpoint


def ssl_context(fs: Any) -> ssl.SSLContext | None:
    """The TLS settings the filesystem's client uses (``verify``: False, a CA bundle, or the default)."""
    verify = (getattr(fs, "client_kwargs", None) or {}).get("verify")
    if verify is None:
        verify = os.environ.get("AWS_CA_BUNDLE") or None
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return None


def _sign_with_v4(signature_version: str, **_: Any) -> str | None:
    """``choose-signer`` hook: presigned URLs signed with SigV4 where botocore would pick SigV2."""
    if signature_version in ("s3-query", "s3v4-query", "v4-query"):
        return "s3v4-query"
    return None


class PresignedUrls:
    """One presigned ``GetObject`` URL per object, made by the filesystem's own client and reused for a while."""

    def __init__(self, fs: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._fs = fs
        self._clock = clock
        self._urls: dict[ObjectName, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._hooked = False

    def url(self, name: ObjectName, timeout: float, *, fresh: bool = False) -> str:
        """A URL for ``name`` signed within :data:`REUSED_FOR` seconds (``fresh``: signed now)."""
        now = self._clock()
        if not fresh:
            with self._lock:
                held = self._urls.get(name)
            if held is not None and now - held[1] < REUSED_FOR:
                return held[0]
        url = asyncio.run_coroutine_threadsafe(self._presign(name), self._fs.loop).result(timeout=timeout)
        with self._lock:
            self._urls[name] = (url, now)
            if len(self._urls) > 100_000:  # a bound, not a cache policy: old signatures are only dropped
                self._urls = {k: v for k, v in self._urls.items() if now - v[1] < REUSED_FOR}
        return url

    async def _presign(self, name: ObjectName) -> str:
        await self._fs.set_session()
        client = self._fs.s3
        if not self._hooked:
            client.meta.events.register_first("choose-signer.s3.GetObject", _sign_with_v4)
            self._hooked = True
        params: dict[str, Any] = {"Bucket": name.bucket, "Key": name.key}
        if name.version:
            params["VersionId"] = name.version
        url: str = await client.generate_presigned_url("get_object", Params=params, ExpiresIn=SIGNED_FOR)
        return url


class DirectS3:
    """Ranged GETs of one s3fs filesystem's objects through presigned URLs (see the module docstring)."""

    def __init__(self, fs: Any, *, connect_timeout: float, stall_timeout: float) -> None:
        self.urls = PresignedUrls(fs)
        self.connections = Connections(ssl_context(fs), connect_timeout)
        self.stall_timeout = stall_timeout
        self.watchdog = Watchdog()
        self._botocore_buckets: set[str] = set()

    def serves(self, bucket: str) -> bool:
        """False once the bucket turned out to need botocore."""
        return bucket not in self._botocore_buckets

    def get(
        self, name: ObjectName, rng: ByteRange, etag: str | None, deadline: float, where: str, piece_size: int = 0,
    ) -> Answer:
        """One ranged GET of ``name``, its body read in pieces of ``piece_size`` (0: one); raises as the module says."""
        signed_anew = False
        while True:
            url = self.urls.url(name, max(0.1, deadline - time.monotonic()), fresh=signed_anew)
            try:
                return self._get(url, rng, etag, deadline, where, piece_size)
            except StatusError as exc:
                if exc.status == 403 and not signed_anew:
                    signed_anew = True  # the signature's credentials may have been replaced
                    continue
                if exc.status in _BOTOCORE_ONLY or exc.status == 403:
                    self._botocore_buckets.add(name.bucket)
                    log.info("s3://%s: HTTP %d to a presigned GET; its reads go through botocore from now on",
                             name.bucket, exc.status)
                    raise UseBotocore(str(exc)) from None
                raise

    def _get(self, url: str, rng: ByteRange, etag: str | None, deadline: float, where: str, piece_size: int) -> Answer:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path + ("?" + parts.query if parts.query else "")
        headers = {"Range": f"bytes={rng.start}-{rng.stop - 1}", "Accept-Encoding": "identity"}
        if etag is not None:
            headers["If-Match"] = etag
        for new in (False, True):
            connection, reused = self.connections.take(scheme, host, port, new=new)
            try:
                return self._exchange(connection, (scheme, host, port), target, headers, rng, etag, deadline, where,
                                      piece_size)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if not reused or time.monotonic() >= deadline:
                    raise
                # A kept-alive connection the server had closed meanwhile: once more on a new one.
        raise AssertionError("unreachable")

    def _exchange(
        self, connection: http.client.HTTPConnection, server: tuple[str, str, int], target: str,
        headers: dict[str, str], rng: ByteRange, etag: str | None, deadline: float, where: str, piece_size: int,
    ) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError()
        connection.timeout = min(self.stall_timeout, remaining)
        if connection.sock is not None:
            connection.sock.settimeout(connection.timeout)
        token = self.watchdog.arm(deadline, lambda: _cut(connection))
        keep = False
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            status = response.status
            if status in (200, 206):
                declared = response.length  # None: no Content-Length (chunked)
                if declared is not None and declared > rng.length + _LONGER_READ:
                    raise WrongLength(
                        f"{where}: got {declared} bytes instead of {rng.length} (the server ignores Range requests)",
                        oversized=True,
                    )
                body = _read_body(response, rng.length + 1 if declared is None else declared, piece_size)
                if declared is not None and (got := body_length(body)) < declared:
                    raise http.client.IncompleteRead(b"", declared - got)  # cut short: worth a retry
                keep = response.isclosed()
                return Answer(status, body, response.getheader("Content-Range"), response.getheader("ETag"),
                              response.getheader("Last-Modified"))
            response.read(64 << 10)  # an error document: small; read so the connection can be kept
            keep = response.isclosed()
            if status == 412 and etag is not None:
                raise ChangedObject(f"the store refused If-Match {etag}")
            if status == 404:
                raise FileNotFoundError(where)
            if 200 <= status < 300:
                return Answer(status, b"", response.getheader("Content-Range"), response.getheader("ETag"),
                              response.getheader("Last-Modified"))
            raise StatusError(status, where)
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError() from None  # the watchdog cut it
            raise
        finally:
            self.watchdog.disarm(token)
            if keep:
                self.connections.give(*server, connection)
            else:
                connection.close()

    def close(self) -> None:
        self.connections.close()


def _read_body(response: http.client.HTTPResponse, length: int, piece_size: int) -> Body:
    """Up to ``length`` bytes of the body: each ``read`` fills one new ``bytes`` straight from the socket."""
    if piece_size <= 0 or length <= piece_size:
        return response.read(length)
    pieces = []
    while length > 0:
        piece = response.read(min(piece_size, length))
        if not piece:
            break
        pieces.append(piece)
        length -= len(piece)
    return tuple(pieces)


def _cut(connection: http.client.HTTPConnection) -> None:
    """Make a blocked request on ``connection`` return at once (its deadline passed)."""
    sock = connection.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
