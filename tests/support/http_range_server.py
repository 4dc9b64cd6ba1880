"""A real HTTP/1.1 file server with byte ranges, request counting and misbehaviour switches.

Reference sets may point at ``https://`` URLs as well as ``s3://``; the HTTP
backend must issue one ranged GET per chunk, check ``Content-Length`` and
reject servers that ignore ``Range``. This server lets tests check those
properties over a real socket: it serves a directory, honours
``Range: bytes=a-b`` / ``a-`` / ``-n`` (206 with ``Content-Range``, 416 when
unsatisfiable), sends ``ETag`` / ``Last-Modified`` / ``Accept-Ranges``, counts
requests, and can be told to misbehave the way real servers and object
stores do: fail, reset, stall, cut or pad bodies, lie about lengths, ignore
Range, trickle, or die mid-body and come back on the same port; it can answer
chosen paths with a redirect (:meth:`RangeHTTPServer.redirect`). Like an
object store it refuses a GET whose ``If-Match`` names another ETag (412),
so tests of changed objects run against it too.
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.support import RequestStats
from tests.support.loopback import LoopbackServer, TrackedHandler

__all__ = ["RangeHTTPServer", "Misbehaviour"]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024
_SLOW_PIECE = 16 * 1024


@dataclass
class Misbehaviour:
    """Switches a test flips on purpose; all off by default.

    ``ignore_range``: answer ranged GETs with 200 and the whole body.
    ``content_length_delta``: add this to the advertised ``Content-Length``
    (the body is unchanged, the connection is closed afterwards).
    ``cut_body``: send this many bytes fewer than advertised, then close.
    ``delay``: seconds to sleep before answering each request.
    ``fail_count`` / ``fail_status``: answer the next N requests with this status.
    ``fail``: answer every request with ``fail_status``.
    ``fail_prefix``: answer requests for paths starting with this with ``fail_status``.
    ``reset``: abort the connection with a TCP RST, answering nothing.
    ``stall``: say nothing for this many seconds (or until :meth:`RangeHTTPServer.behave`), then close.
    ``extra_bytes``: send this many zero bytes after the body, counted in ``Content-Length``
    (more than the range asked for).
    ``slow``: send the body in 16 KiB pieces with this many seconds between them.
    ``wrong_range``: answer a ranged GET with 206 whose ``Content-Range`` names another offset
    (0, or the range's own length when it starts at 0) and the bytes of that offset.
    ``partial_200``: answer a ranged GET with 200, no ``Content-Range``, and only the range's bytes.
    ``ignore_if_match``: serve whatever ``If-Match`` says (like servers that do not implement it).
    ``no_etag``: send no ``ETag`` (nor honour ``If-Match``), only ``Last-Modified``.
    ``count``: the switches (other than ``fail_count``) apply to the next ``count``
    requests only, then the server behaves again; ``None``: until :meth:`RangeHTTPServer.behave`.
    """

    ignore_range: bool = False
    content_length_delta: int = 0
    cut_body: int = 0
    delay: float = 0.0
    fail_count: int = 0
    fail_status: int = 503
    fail: bool = False
    fail_prefix: str = ""
    reset: bool = False
    stall: float = 0.0
    extra_bytes: int = 0
    slow: float = 0.0
    wrong_range: bool = False
    partial_200: bool = False
    ignore_if_match: bool = False
    no_etag: bool = False
    count: int | None = None


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


class _Handler(TrackedHandler):
    """Serves files under ``server.owner.root``; behaviour is read from ``server.owner``."""

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        owner.stats.record(self.command, path)
        owner.log_request_line(self.command, path, self.headers.get("Range"))
        location = owner.redirects.get(path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        bad = owner._take_behaviour()
        if bad.delay:
            time.sleep(bad.delay)
        if bad.fail_count or bad.fail or (bad.fail_prefix and path.startswith(bad.fail_prefix)):
            self._send_simple(bad.fail_status, f"injected failure {bad.fail_status}\n".encode(), head)
            return
        if bad.reset:
            self.reset_connection()
            return
        if bad.stall:
            owner._released.wait(bad.stall)
            self.close_connection = True
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
        etag = etag_of_stat(st)
        checks_if_match = not (bad.ignore_if_match or bad.no_etag)
        if checks_if_match and self.headers.get("If-Match") not in (None, "*", etag):
            self._send_simple(412, b"precondition failed: the object has another ETag\n", head)
            return
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
            if bad.partial_200:
                status = 200
            elif bad.wrong_range:
                start = 0 if start else min(length, size - length)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if not bad.no_etag:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        self.send_header("Content-Length", str(max(0, length + bad.extra_bytes + bad.content_length_delta)))
        misbehaving = bool(bad.content_length_delta or bad.cut_body or bad.extra_bytes)
        if misbehaving:
            # A lying response poisons the connection; make the client open a new one.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        self._send_body(file, start, max(0, length - bad.cut_body), bad.slow)
        if bad.extra_bytes:
            self.wfile.write(b"\0" * bad.extra_bytes)
            self.server.owner.stats.add_sent(bad.extra_bytes)
            self.wfile.flush()

    def _send_body(self, file: Path, start: int, length: int, pause: float = 0.0) -> None:
        with open(file, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                data = f.read(min(_SLOW_PIECE if pause else _CHUNK, remaining))
                if not data:
                    break
                self.wfile.write(data)
                self.server.owner.stats.add_sent(len(data))
                remaining -= len(data)
                if pause:
                    self.wfile.flush()
                    time.sleep(pause)
        self.wfile.flush()


def etag_of_stat(st: os.stat_result) -> str:
    """The ETag the server gives a file: changes whenever its size or modification time does."""
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


class RangeHTTPServer(LoopbackServer):
    """HTTP server on 127.0.0.1 (ephemeral port) serving the files under ``root``.

    Counters: :attr:`stats` (:class:`RequestStats`), :meth:`counts`,
    :meth:`reset`, and :attr:`requests` (method, path, Range header) in order.
    Misbehaviour: set fields of :attr:`bad` (see :class:`Misbehaviour`), or use
    :meth:`misbehave` (for the next N requests or until further notice) or
    :meth:`fail_next`; :meth:`behave` switches everything off again and lets
    stalled requests go. :meth:`kill` stops the server mid-answer; :meth:`start`
    brings it back on the same port.
    """

    handler = _Handler
    thread_name = "range-http"

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.root = Path(root).resolve()
        self.stats = RequestStats()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bad = Misbehaviour()
        self.redirects: dict[str, str] = {}
        self._released = threading.Event()

    # -- addresses

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, relpath: str | os.PathLike[str]) -> str:
        """URL of a file given relative to :attr:`root`."""
        rel = Path(relpath).as_posix().lstrip("/")
        return f"{self.url}/{urllib.parse.quote(rel)}"

    def put(self, relpath: str, data: bytes, mtime: float | None = None) -> str:
        """Write ``data`` as the file ``relpath`` under root (optionally with this mtime); return its URL."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return self.url_for(relpath)

    def redirect(self, relpath: str, location: str) -> str:
        """Answer requests for ``relpath`` with ``302 Location: location``; return the URL that redirects."""
        with self._lock:
            self.redirects["/" + relpath.lstrip("/")] = location
        return self.url_for(relpath)

    def etag_for(self, relpath: str) -> str:
        """The ETag the file ``relpath`` is served with now."""
        return etag_of_stat((self.root / relpath).stat())

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

    def misbehave(self, count: int | None = None, **switches: object) -> None:
        """Replace the misbehaviour with these :class:`Misbehaviour` switches, for ``count`` requests or until told."""
        with self._lock:
            self.bad = Misbehaviour(**switches, count=count)  # type: ignore[arg-type]
            if self.bad.stall:
                self._released.clear()

    def behave(self) -> None:
        """Switch every misbehaviour off and let stalled requests end."""
        with self._lock:
            self.bad = Misbehaviour()
            self._released.set()

    def _take_behaviour(self) -> Misbehaviour:
        """What to do for this request; consumes one pending injected failure or counted misbehaviour."""
        with self._lock:
            bad = replace(self.bad)
            if self.bad.fail_count > 0:
                self.bad.fail_count -= 1
            if self.bad.count is not None:
                self.bad.count -= 1
                if self.bad.count <= 0:
                    self.bad = Misbehaviour(fail_count=self.bad.fail_count, fail_status=self.bad.fail_status)
            return bad
