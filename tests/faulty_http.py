"""A real HTTP object server on loopback that misbehaves on request.

It serves byte strings with Range, ETag, Last-Modified and If-Match like an
object store, and applies *faults* to the requests it receives: a fault is
a name from :data:`FAULTS`, queued for the next N requests (``inject``) or
applied to every request until healed (``always``). It can also be stopped
while answering and restarted on the same port, like a store that crashes.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

FAULTS = (
    "503",  # 503 SlowDown with a small XML body, like S3 throttling
    "500",  # internal error
    "reset",  # close the connection without answering
    "stall",  # answer nothing for `stall_seconds`
    "short",  # correct headers, body cut short, connection closed
    "wrong_length",  # Content-Length larger than the body that follows
    "oversized",  # 206 with more bytes than the range asked for
    "ignore_range",  # 200 with the whole object
    "slow",  # the right answer, sent in small pieces with pauses
)


@dataclass
class _State:
    objects: dict[str, bytes] = field(default_factory=dict)
    mtimes: dict[str, float] = field(default_factory=dict)
    queued: deque = field(default_factory=deque)
    persistent: str | None = None
    stall_seconds: float = 30.0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, range)
    lock: threading.Lock = field(default_factory=threading.Lock)


def etag_of(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _fault(self) -> str | None:
        with self.state.lock:
            self.state.requests.append((self.command, self.path, self.headers.get("Range")))
            if self.state.queued:
                return self.state.queued.popleft()
            return self.state.persistent

    def _serve(self, head: bool) -> None:
        fault = self._fault()
        data = self.state.objects.get(self.path)
        if fault in ("503", "500"):
            body = b"<Error><Code>SlowDown</Code></Error>" if fault == "503" else b"<Error><Code>InternalError</Code></Error>"
            self.send_response(int(fault))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Retry-After", "0")
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if fault == "stall":
            time.sleep(self.state.stall_seconds)
            self.close_connection = True
            return
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = etag_of(data)
        if self.headers.get("If-Match") not in (None, "*", etag):
            self.send_response(412)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, stop, status = 0, len(data), 200
        requested = self.headers.get("Range")
        if requested and fault != "ignore_range":
            first, _, last = requested.removeprefix("bytes=").partition("-")
            start = int(first)
            stop = min(len(data), int(last) + 1) if last else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:stop]
        if fault == "oversized":
            body = data[start : stop + 100] + b"\0" * 100
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(self.state.mtimes[self.path], usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        declared = len(body) + (1000 if fault == "wrong_length" else 0)
        self.send_header("Content-Length", str(declared if not head else len(data)))
        self.end_headers()
        if head:
            return
        if fault in ("short", "wrong_length"):
            self.wfile.write(body[: len(body) // 2] if fault == "short" else body)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "slow":
            for i in range(0, len(body), 16384):
                self.wfile.write(body[i : i + 16384])
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()

    def get_request(self):
        sock, address = super().get_request()
        self.connections.add(sock)
        return sock, address


class FaultyHTTPServer:
    """Serve ``objects`` at ``http://127.0.0.1:PORT/<name>``; inject faults; crash and restart."""

    def __init__(self) -> None:
        self.state = _State()
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "FaultyHTTPServer":
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def kill(self) -> None:
        """Stop answering at once: listening socket closed, open connections reset."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for sock in list(server.connections):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self._server = None

    def restart(self) -> None:
        self.kill()
        self.start()

    # -- content and faults ----------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def put(self, name: str, data: bytes, mtime: float | None = None) -> str:
        self.state.objects["/" + name] = data
        self.state.mtimes["/" + name] = time.time() if mtime is None else mtime
        return self.url(name)

    def inject(self, *faults: str) -> None:
        """Apply these faults, in order, to the next requests."""
        assert all(f in FAULTS for f in faults), faults
        with self.state.lock:
            self.state.queued.extend(faults)

    def always(self, fault: str | None, stall_seconds: float | None = None) -> None:
        """Apply ``fault`` to every request from now on (None heals the server)."""
        assert fault is None or fault in FAULTS
        with self.state.lock:
            self.state.persistent = fault
            if fault is None:
                self.state.queued.clear()
            if stall_seconds is not None:
                self.state.stall_seconds = stall_seconds

    def heal(self) -> None:
        self.always(None)

    def requests(self, method: str = "GET") -> list[tuple[str, str, str | None]]:
        with self.state.lock:
            return [r for r in self.state.requests if r[0] == method]
