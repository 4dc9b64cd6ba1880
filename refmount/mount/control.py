"""The channel to a running mount: live figures through a local socket, reload through SIGHUP.

The figures are served on an abstract Unix socket named after the
mountpoint's real path. Why a socket rather than an attribute or a file in
the tree: the tree stays exactly the reference set (and xattrs can stay off,
which keeps ``ls -l`` from costing a daemon round trip per file); an
abstract name needs no directory to agree on and leaves nothing behind when
the daemon dies. Who may ask follows who may see the mount: the mounting
user and root, and everyone when the mount has ``allow_other``, checked
with the caller's credentials (SO_PEERCRED). Abstract sockets belong to a
network namespace, so ``refmount stats`` must run in the daemon's.

Reload needs the right to signal the daemon, so ``refmount reload`` reads
the daemon's pid from the same channel, sends SIGHUP (what systemd's
``ExecReload`` does too) and waits until the reload generation moves on,
then prints the outcome the daemon recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from refmount.errors import ConfigError
from refmount.mount.mountpoint import is_stale

log = logging.getLogger("refmount.control")

#: The one request the channel answers.
STATS_REQUEST = b"stats\n"
_UCRED = struct.Struct("3i")  # pid, uid, gid of the connected peer

#: Order and labels of ``refmount stats``.
DISPLAY = (
    ("reads", "reads"),
    ("bytes_delivered", "bytes delivered"),
    ("bytes_fetched", "bytes fetched"),
    ("gets", "GET requests"),
    ("get_retries", "GET retries"),
    ("cache_hits", "cache hits"),
    ("cache_misses", "cache misses"),
    ("cache_bytes", "cache bytes"),
    ("cache_capacity", "cache capacity"),
    ("errors", "errors"),
    ("read_latency_p50_ms", "read latency p50 (ms)"),
    ("read_latency_p90_ms", "read latency p90 (ms)"),
    ("read_latency_p99_ms", "read latency p99 (ms)"),
    ("open_handles", "open handles"),
    ("sets", "reference sets"),
    ("sets_loaded", "reference sets loaded"),
    ("reloads", "reloads"),
    ("reload_failures", "failed reloads"),
)


def control_address(mountpoint: str) -> str:
    """The abstract socket name of the mount at ``mountpoint`` (one per real path)."""
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:32]
    return f"\0refmount/{digest}"


class ControlServer:
    """Answer ``stats`` requests for one mount from a background thread."""

    def __init__(self, mountpoint: str, report: Callable[[], dict[str, Any]], *, allow_other: bool) -> None:
        self.mountpoint = mountpoint
        self._report = report
        self._allow_other = allow_other
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> ControlServer:
        """Bind and serve; a channel that cannot be bound is logged, the mount goes on without it."""
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._answer(self.request)

        try:
            server = socketserver.ThreadingUnixStreamServer(control_address(self.mountpoint), Handler)
        except OSError as exc:
            log.warning("no stats channel for %s: %s", self.mountpoint, exc.strerror)
            return self
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="refmount-control", daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, connection: socket.socket) -> None:
        connection.settimeout(5)
        try:
            request = connection.recv(64)  # read first: closing on unread data would reset the connection
            _, uid, _ = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if not (self._allow_other or uid in (0, os.geteuid())):
                log.info("stats refused to uid %d: the mount is not allow_other", uid)
                answer: dict[str, Any] = {"error": "not allowed: the mount is private to its owner"}
            elif request != STATS_REQUEST:
                answer = {"error": "unknown request"}
            else:
                answer = self._report()
            connection.sendall(json.dumps(answer, sort_keys=True).encode())
        except OSError as exc:
            log.debug("stats request dropped: %s", exc)


def read_stats(mountpoint: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The figures of the refmount mount at ``mountpoint``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(timeout)
        try:
            channel.connect(control_address(mountpoint))
            channel.sendall(STATS_REQUEST)
            chunks = []
            while chunk := channel.recv(1 << 16):
                chunks.append(chunk)
        except (ConnectionRefusedError, FileNotFoundError):
            if is_stale(mountpoint):
                raise ConfigError(f"{mountpoint} is a stale mount: its daemon died (refmount umount {mountpoint})") from None
            raise ConfigError(f"{mountpoint} is not a running refmount mount") from None
        except OSError as exc:
            raise ConfigError(f"cannot read figures of {mountpoint}: {exc.strerror or exc}") from None
    figures: dict[str, Any] = json.loads(b"".join(chunks))
    if "error" in figures:
        raise ConfigError(f"cannot read figures of {mountpoint}: {figures['error']}")
    return figures


def format_stats(figures: dict[str, Any]) -> str:
    lines = [f"mount            {figures.get('mountpoint', '?')}",
             f"source           {figures.get('source', '?')}",
             f"pid              {figures.get('pid', '?')}",
             f"uptime (s)       {figures.get('uptime_seconds', 0):.0f}"]
    for key, label in DISPLAY:
        if key in figures:
            value = figures[key]
            shown = f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"
            lines.append(f"{label:<28}{shown:>16}")
    if figures.get("cache_hits") is not None:
        total = figures.get("cache_hits", 0) + figures.get("cache_misses", 0)
        if total:
            lines.append(f"{'cache hit ratio':<28}{figures['cache_hits'] / total:>16.3f}")
    for name, reason in sorted((figures.get("broken_sets") or {}).items()):
        lines.append(f"broken set {name}: {reason}")
    if figures.get("last_reload"):
        lines.append(f"last reload: {figures['last_reload']}")
    return "\n".join(lines)


def run_stats(mountpoint: str, *, as_json: bool = False) -> int:
    figures = read_stats(mountpoint)
    print(json.dumps(figures, indent=2, sort_keys=True) if as_json else format_stats(figures))
    return 0


def run_reload(mountpoint: str, *, timeout: float = 60.0) -> int:
    """Ask the daemon of ``mountpoint`` to reload, wait for it and print what happened."""
    before = read_stats(mountpoint)
    pid = int(before["pid"])
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise ConfigError(f"not allowed to signal the daemon of {mountpoint} (pid {pid}): "
                          "run as the user that mounted it, or root") from None
    except ProcessLookupError:
        raise ConfigError(f"the daemon of {mountpoint} (pid {pid}) is not running here") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        after = read_stats(mountpoint)
        if after.get("generation", 0) != before.get("generation", 0):
            message = after.get("last_reload", "reloaded")
            print(message)
            return 1 if message.startswith("reload failed") else 0
    print(f"refmount reload: {mountpoint} did not finish reloading within {timeout:.0f} s", file=sys.stderr)
    return 1


__all__ = ["ControlServer", "control_address", "read_stats", "run_reload", "run_stats"]
