"""A real HTTP/1.1 file server with byte ranges, request counting and misbehaviour switches.

Reference sets may point at ``https://`` URLs as well as ``s3://``; the HTTP
backend must issue one ranged GET per chunk, check ``Content-Length`` and
reject servers that ignore ``Range``. This server lets tests check those
properties over a real socket: it serves a directory, honours
``Range: bytes=a-b`` / ``a-`` / ``-n`` (206 with ``Content-Range``, 416 when
unsatisfiable), sends ``ETag`` / ``Last-Modified`` / ``Accept-Ranges``, counts
requests, and can be told to misbehave the way real servers do.
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import RequestStats

__all__ = ["RangeHTTPServer", "Misbehaviour"]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass
class Misbehaviour:
    """Switches a test flips on purpose; all off by default.

    ``ignore_range``: answer ranged GETs with 200 and the whole body.
    ``content_length_delta``: add this to the advertised ``Content-Length``
    (the body is unchanged, the connection is closed afterwards).
    ``cut_body``: send this many bytes fewer than advertised, then close.
    ``delay``: seconds to sleep before answering each request.
    ``fail_count`` / ``fail_status``: answer the next N requests with this status.
    """

    ignore_range: bool = False
    content_length_delta: int = 0
    cut_body: int = 0
    delay: float = 0.0
    fail_count: int = 0
    fail_status: int = 503


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """Return ``(start, end_inclusive)``, ``None`` to serve the whole body, or ``"416"``.

    Multiple ranges and malformed headers are ignored (served whole), which
    RFC 9110 allows; only a well-formed single range past the end is a 416.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "416"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid, not unsatisfiable: ignore the header
    if start >= size:
        return "416"
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    """Serves files under ``server.root``; behaviour is read from ``server.owner``."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr log; counters carry what tests need."""

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        owner.stats.record(self.command, path)
        owner.log_request_line(self.command, path, self.headers.get("Range"))
        bad = owner._take_behaviour()
        if bad.delay:
            time.sleep(bad.delay)
        if bad.fail_count:
            self._send_simple(bad.fail_status, f"injected failure {bad.fail_status}\n".encode(), head)
            return
        file = owner.resolve(path)
        if file is None:
            self._send_simple(404, b"not found\n", head)
            return
        self._serve_file(file, head, bad)

    def _send_simple(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
            self.server.owner.stats.add_sent(len(body))

    def _serve_file(self, file: Path, head: bool, bad: Misbehaviour) -> None:
        st = file.stat()
        size = st.st_size
        rng = None if bad.ignore_range else _parse_range(self.headers.get("Range"), size)
        if rng == "416":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng is None:
            status, start, length = 200, 0, size
        else:
            assert isinstance(rng, tuple)
            status, start, length = 206, rng[0], rng[1] - rng[0] + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        self.send_header("Content-Length", str(max(0, length + bad.content_length_delta)))
        misbehaving = bool(bad.content_length_delta or bad.cut_body)
        if misbehaving:
            # A lying response poisons the connection; make the client open a new one.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        self._send_body(file, start, max(0, length - bad.cut_body))

    def _send_body(self, file: Path, start: int, length: int) -> None:
        with open(file, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                data = f.read(min(_CHUNK, remaining))
                if not data:
                    break
                self.wfile.write(data)
                self.server.owner.stats.add_sent(len(data))
                remaining -= len(data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 makes bursts of parallel clients wait for SYN retries
    owner: RangeHTTPServer


class RangeHTTPServer:
    """HTTP server on 127.0.0.1 (ephemeral port) serving the files under ``root``.

    Counters: :attr:`stats` (:class:`RequestStats`), :meth:`counts`,
    :meth:`reset`, and :attr:`requests` (method, path, Range header) in order.
    Misbehaviour: set fields of :attr:`bad` (see :class:`Misbehaviour`) or use
    :meth:`fail_next`; :meth:`behave` switches everything off again.
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.stats = RequestStats()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bad = Misbehaviour()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> RangeHTTPServer:
        """Bind an ephemeral port and serve from a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="range-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, relpath: str | os.PathLike[str]) -> str:
        """URL of a file given relative to :attr:`root`."""
        rel = Path(relpath).as_posix().lstrip("/")
        return f"{self.url}/{urllib.parse.quote(rel)}"

    def resolve(self, urlpath: str) -> Path | None:
        """Map a URL path to a regular file under root, refusing anything outside it."""
        candidate = (self.root / urlpath.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    # -- counters

    def counts(self) -> dict[str, Any]:
        """Snapshot of the counters (see :meth:`RequestStats.snapshot`)."""
        return self.stats.snapshot()

    def reset(self) -> None:
        """Zero the counters and forget the request log."""
        self.stats.reset()
        with self._lock:
            self.requests.clear()

    def log_request_line(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    # -- misbehaviour

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` and a short text body."""
        with self._lock:
            self.bad.fail_count = n
            self.bad.fail_status = status

    def behave(self) -> None:
        """Switch every misbehaviour off."""
        with self._lock:
            self.bad = Misbehaviour()

    def _take_behaviour(self) -> Misbehaviour:
        """What to do for this request; consumes one pending injected failure."""
        with self._lock:
            bad = Misbehaviour(**vars(self.bad))
            if self.bad.fail_count > 0:
                self.bad.fail_count -= 1
            return bad
