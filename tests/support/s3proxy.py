"""A counting, fault-injecting reverse proxy in front of the local S3 server.

Tests point an S3 client at this proxy instead of SeaweedFS to (a) count
exactly how many GETs a read caused and how many bytes crossed the wire, and
(b) make the store fail in the ways object stores really fail: 503 SlowDown,
500, connection resets, stalls, short bodies, lying ``Content-Length``, or
refusing connections altogether.

SigV4 signs the ``Host`` header. Clients are configured with the proxy's
endpoint, so they sign ``127.0.0.1:<proxy port>``; the proxy forwards every
header byte for byte (``Host`` included) with ``http.client`` so nothing the
client signed changes, and SeaweedFS verifies against the Host it receives.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.support import RequestStats
from tests.support.loopback import LoopbackServer, TrackedHandler

__all__ = ["S3Proxy", "Fault", "FAULT_KINDS"]

FAULT_KINDS = ("503", "500", "reset", "stall", "cut", "bad_length", "oversized", "slow", "wrong_range", "partial_200")

# Headers that describe one hop, not the message; never relayed as is.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_CHUNK = 64 * 1024
_SLOW_PIECE = 16 * 1024


class _Credentials(Protocol):
    """What the proxy needs from a store: its client options (see ``LocalS3``)."""

    def storage_options(self) -> dict[str, Any]: ...
    def env(self) -> dict[str, str]: ...


@dataclass
class Fault:
    """One injection rule: which requests it hits and what happens to them.

    Exactly one of ``count`` (the next N matching requests) or ``share``
    (each matching request with this probability, from a seeded RNG) selects
    requests; ``methods`` restricts matching (``None`` = all methods).

    Kinds: ``"503"`` (S3 SlowDown XML error), ``"500"`` (InternalError XML),
    ``"reset"`` (TCP RST, nothing sent), ``"stall"`` (hold the request for
    ``seconds``, or until :meth:`S3Proxy.release` when ``seconds`` is None,
    then forward it), ``"cut"`` (relay headers, send ``keep`` fraction of the
    body, close), ``"bad_length"`` (relay the body with ``Content-Length``
    off by ``delta``, close), ``"oversized"`` (relay the body followed by
    ``extra`` bytes of zeros, the ``Content-Length`` counting them, close: a
    store answering more than the range asked), ``"slow"`` (relay the right
    answer in 16 KiB pieces with ``seconds`` (default 0.05) of pause between
    them, so a test can act while a body is on the wire), ``"wrong_range"`` (answer a 206 with a
    ``Content-Range`` naming another offset, 0 or the range's own length, and the bytes stored there,
    fetched from the store with the proxy's own credentials), ``"partial_200"`` (answer a 206 as
    200 without ``Content-Range``: a "whole object" that is only the range).
    """

    kind: str
    count: int | None = None
    share: float | None = None
    methods: frozenset[str] | None = None
    seconds: float | None = None
    keep: float = 0.5
    delta: int = -1
    extra: int = 100
    hits: int = 0

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods


@dataclass
class _Plan:
    """What the handler does with one request."""

    kind: str | None = None
    fault: Fault | None = None


@dataclass
class _Injector:
    """Holds the fault rules and decides, under a lock, which one hits a request."""

    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    applied: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def choose(self, method: str) -> _Plan:
        with self.lock:
            for fault in self.faults:
                if not fault.matches(method):
                    continue
                if fault.count is not None:
                    if fault.count <= 0:
                        continue
                    fault.count -= 1
                elif fault.share is not None:
                    if self.rng.random() >= fault.share:
                        continue
                fault.hits += 1
                self.applied[fault.kind] += 1
                return _Plan(fault.kind, fault)
            return _Plan()


def _s3_error_xml(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>refmount-proxy</RequestId></Error>"
    ).encode()


class _Handler(TrackedHandler):
    """Forwards one client connection's requests over one upstream connection."""

    _upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    # Every S3 verb goes through the same path.
    def do_GET(self) -> None:  # noqa: N802
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_GET  # noqa: N815

    def _proxy(self) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        owner.stats.record(self.command, path)
        owner.clients[(self.client_address[0], self.command)] += 1
        owner._log(self.command, self.path, self.headers.get("Range"))
        body = self._read_request_body()
        plan = owner._injector.choose(self.command)
        if plan.kind in ("503", "500"):
            self._send_error_xml(plan.kind, path)
            return
        if plan.kind == "reset":
            self.reset_connection()
            return
        if plan.kind == "stall":
            assert plan.fault is not None
            owner._released.wait(plan.fault.seconds)
        try:
            resp = self._forward(body)
        except OSError as exc:
            self._send_bad_gateway(exc)
            return
        try:
            self._relay(resp, plan)
        except OSError:
            self.close_connection = True
        finally:
            if not resp.isclosed() and self._upstream is not None:
                self._upstream.close()
                self._upstream = None

    def _read_request_body(self) -> bytes | None:
        """Read the request body whole (S3 request bodies in tests are small)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(parts)
        elif self.headers.get("Content-Length"):
            data = self.rfile.read(int(self.headers["Content-Length"]))
        else:
            return None
        self.server.owner.stats.add_received(len(data))
        return data

    def _forward(self, body: bytes | None) -> http.client.HTTPResponse:
        """Send the request upstream with the client's headers unchanged (Host included)."""
        owner = self.server.owner
        for attempt in range(2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    owner.upstream_host, owner.upstream_port, timeout=owner.upstream_timeout
                )
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                        continue
                    conn.putheader(name, value)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A pooled upstream connection went stale (e.g. SeaweedFS restarted): retry once fresh.
                conn.close()
                self._upstream = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, resp: http.client.HTTPResponse, plan: _Plan) -> None:
        """Relay status, headers and body, applying the body-level faults."""
        owner = self.server.owner
        length_header = resp.getheader("Content-Length")
        misplaced = plan.kind in ("wrong_range", "partial_200") and resp.status == 206
        if not misplaced:  # those rewrite the status line and headers themselves
            self.send_response_only(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                    continue
                self.send_header(name, value)
        has_body = self.command != "HEAD" and resp.status not in (204, 304)
        if plan.kind in ("cut", "bad_length", "oversized") and has_body:
            self._relay_faulty(resp, plan)
            return
        if plan.kind in ("wrong_range", "partial_200") and resp.status == 206:
            self._relay_misplaced(resp, plan.kind)
            return
        if length_header is not None:
            self.send_header("Content-Length", length_header)
            chunked = False
        elif has_body:
            self.send_header("Transfer-Encoding", "chunked")
            chunked = True
        else:
            self.send_header("Content-Length", "0")
            chunked = False
        if resp.will_close:
            self.close_connection = True
            self._upstream = None
        self.end_headers()
        if not has_body:
            resp.read()
            return
        # read(amt), unlike read1(), marks the response closed at its end so the
        # upstream connection can carry the next request.
        slow = plan.kind == "slow"
        while data := resp.read(_SLOW_PIECE if slow else _CHUNK):
            # Counted before it is sent: a client that has its bytes always finds them counted.
            owner.stats.add_sent(len(data))
            if chunked:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                self.wfile.write(data)
            if slow:
                assert plan.fault is not None
                self.wfile.flush()
                time.sleep(0.05 if plan.fault.seconds is None else plan.fault.seconds)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _relay_faulty(self, resp: http.client.HTTPResponse, plan: _Plan) -> None:
        """Cut the body short, announce a wrong length, or pad it; either way close afterwards."""
        assert plan.fault is not None
        data = resp.read()
        if plan.kind == "cut":
            declared, sent = len(data), data[: int(len(data) * plan.fault.keep)]
            if len(sent) == len(data) and data:
                sent = data[:-1]
        elif plan.kind == "oversized":
            sent = data + b"\0" * plan.fault.extra
            declared = len(sent)
        else:
            declared, sent = max(0, len(data) + plan.fault.delta), data
        self.send_header("Content-Length", str(declared))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        self.server.owner.stats.add_sent(len(sent))
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def _relay_misplaced(self, resp: http.client.HTTPResponse, kind: str) -> None:
        """A 206 made into another offset's bytes under a shifted Content-Range, or into a bare 200."""
        data = resp.read()
        content_range = resp.getheader("Content-Range", "")
        first, _, total = content_range.removeprefix("bytes ").replace("/", "-").split("-")
        if kind == "wrong_range":
            other = 0 if int(first) else min(len(data), int(total) - len(data))
            data = self.server.owner.stored_bytes(self.path, other, len(data))
            content_range = f"bytes {other}-{other + len(data) - 1}/{total}"
            self.send_response_only(206)
        else:
            self.send_response_only(200)
        for name, value in resp.getheaders():
            if name.lower() in _HOP_BY_HOP or name.lower() in ("content-length", "content-range"):
                continue
            self.send_header(name, value)
        if kind == "wrong_range":
            self.send_header("Content-Range", content_range)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.server.owner.stats.add_sent(len(data))

    def _send_error_xml(self, kind: str, resource: str) -> None:
        if kind == "503":
            status, code, msg = 503, "SlowDown", "Please reduce your request rate."
        else:
            status, code, msg = 500, "InternalError", "We encountered an internal error. Please try again."
        body = _s3_error_xml(code, msg, resource)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.server.owner.stats.add_sent(len(body))

    def _send_bad_gateway(self, exc: OSError) -> None:
        body = _s3_error_xml("ServiceUnavailable", f"upstream unreachable: {exc}", self.path)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_response_only(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)



class S3Proxy(LoopbackServer):
    """Reverse proxy on 127.0.0.1 (or ``listen``; an ephemeral port) in front of an S3 endpoint.

    ``store`` supplies credentials so :meth:`storage_options` / :meth:`env`
    give clients everything they need, pointed at the proxy.

    Counting: :attr:`stats`, :meth:`counts`, :meth:`reset`, :attr:`requests`
    (method, path with query, Range header) in arrival order.

    Faults: :meth:`inject` adds a :class:`Fault`; :meth:`clear_faults`;
    :meth:`release` frees stalled requests; :meth:`pause` makes the port
    refuse connections (and drops open ones) until :meth:`resume`.
    """

    handler = _Handler
    thread_name = "s3-proxy"

    def __init__(
        self,
        upstream_url: str,
        store: _Credentials | None = None,
        *,
        seed: int = 0,
        upstream_timeout: float = 60.0,
        listen: str = "127.0.0.1",
    ) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the proxy only forwards to plain HTTP on loopback, not {upstream_url!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self.store = store
        self.stats = RequestStats()
        self.requests: list[tuple[str, str, str | None]] = []
        self._injector = _Injector(seed=seed)
        self._released = threading.Event()
        #: (client address, method) of every request: which network namespace asked what.
        self.clients: Counter[tuple[str, str]] = Counter()
        super().__init__(listen)

    # -- lifecycle (start, kill, port: LoopbackServer)

    def stop(self) -> None:
        """Close the listener and every open client connection; release stalls. Idempotent."""
        self._released.set()
        self.kill()

    def pause(self) -> None:
        """Refuse new connections (nothing listens on the port) and drop open ones."""
        self.stop()
        self._released.clear()

    def resume(self) -> None:
        """Listen again on the same port after :meth:`pause`."""
        self.start()

    # -- addresses and client options

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def storage_options(self) -> dict[str, Any]:
        """The store's s3fs options with the endpoint replaced by the proxy's."""
        if self.store is None:
            raise RuntimeError("S3Proxy was created without a store; no credentials to hand out")
        opts = dict(self.store.storage_options())
        opts["client_kwargs"] = {**opts.get("client_kwargs", {}), "endpoint_url": self.endpoint_url}
        return opts

    def env(self) -> dict[str, str]:
        """The store's AWS_* variables with the endpoint replaced by the proxy's."""
        if self.store is None:
            raise RuntimeError("S3Proxy was created without a store; no credentials to hand out")
        env = dict(self.store.env())
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env[name] = self.endpoint_url
        return env

    def stored_bytes(self, request_path: str, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` of the object a request path names, read from the store directly."""
        import boto3

        if self.store is None:
            raise RuntimeError("S3Proxy was created without a store; no credentials to read with")
        bucket, _, key = urllib.parse.unquote(urllib.parse.urlsplit(request_path).path).lstrip("/").partition("/")
        options = self.store.storage_options()
        client = boto3.client("s3", endpoint_url=f"http://{self.upstream_host}:{self.upstream_port}",
                              aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                              region_name="us-east-1")
        body: bytes = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        return body

    def filesystem(self) -> Any:
        """A fresh, uncached ``s3fs.S3FileSystem`` talking through the proxy."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    # -- counting

    def counts(self) -> dict[str, Any]:
        """Snapshot: total, by_method, by_path, bytes_sent (to clients), bytes_received, faults."""
        snap = self.stats.snapshot()
        with self._injector.lock:
            snap["faults"] = dict(self._injector.applied)
        return snap

    def reset(self) -> None:
        """Zero the counters, the request log and the applied-fault tally (rules stay)."""
        self.stats.reset()
        with self._lock:
            self.requests.clear()
            self.clients.clear()
        with self._injector.lock:
            self._injector.applied.clear()

    def gets(self) -> int:
        """Number of GET requests since the last reset; the common assertion."""
        return self.counts()["by_method"].get("GET", 0)

    def _log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    # -- faults

    def inject(
        self,
        kind: str,
        *,
        count: int | None = None,
        share: float | None = None,
        methods: str | set[str] | frozenset[str] | None = None,
        seconds: float | None = None,
        keep: float = 0.5,
        delta: int = -1,
        extra: int = 100,
    ) -> Fault:
        """Add a fault rule; give ``count`` (next N) or ``share`` (probability), not both.

        ``methods`` may be one method name or a set of them, e.g. ``"GET"``.
        Rules are checked in the order they were added; the first that hits wins.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {FAULT_KINDS}")
        if (count is None) == (share is None):
            raise ValueError("give exactly one of count= or share=")
        if isinstance(methods, str):
            methods = {methods}
        fault = Fault(
            kind=kind,
            count=count,
            share=share,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            seconds=seconds,
            keep=keep,
            delta=delta,
            extra=extra,
        )
        with self._injector.lock:
            self._injector.faults.append(fault)
        if kind == "stall":
            self._released.clear()
        return fault

    def clear_faults(self) -> None:
        """Remove every rule and release any stalled request."""
        with self._injector.lock:
            self._injector.faults.clear()
        self.release()

    def release(self) -> None:
        """Let stalled requests (``stall`` with ``seconds=None``) proceed."""
        self._released.set()

    def reseed(self, seed: int) -> None:
        """Restart the share-based selection sequence from ``seed``."""
        with self._injector.lock:
            self._injector.rng = random.Random(seed)

