"""What the test servers share: serving on loopback from a thread, restarting on the same port, dying on demand.

Both the HTTP range server and the S3 proxy must be able to vanish in the
middle of a response (to test a store that crashes) and come back at the
same address (so a mounted daemon can carry on without being told), and
both must be able to abort a connection with a TCP reset.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LoopbackServer", "TrackedHandler"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 makes bursts of parallel clients wait for SYN retries
    allow_reuse_address = True  # listen again on the same port after kill()
    owner: Any


class TrackedHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler whose connection its server can drop (see :meth:`LoopbackServer.kill`)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr log; counters carry what tests need."""

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, add=False)

    def reset_connection(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), sending nothing."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class LoopbackServer:
    """Serves ``handler`` on ``host`` (an ephemeral port, kept across restarts) from a daemon thread."""

    handler: type[TrackedHandler]
    thread_name = "test-server"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def start(self) -> Any:
        """Listen (on the same port as before after :meth:`stop` or :meth:`kill`) and serve. Idempotent."""
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self._port or 0), self.handler)
        httpd.owner = self
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; answers already under way finish. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def kill(self) -> None:
        """Die like a crashed server: stop listening and drop every open connection, mid-body or not."""
        LoopbackServer.stop(self)
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._port

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(sock)
