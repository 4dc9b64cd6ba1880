"""The channel to a running mount: live figures through a virtual xattr, reload through SIGHUP.

Why an xattr on the mount root rather than a socket: whoever can see the
mount can read its figures (``refmount stats /mnt/era5``, or plain
``getfattr -n user.refmount.stats /mnt/era5``), with no socket path to
discover, no permissions to keep in step with the mount's, and nothing
left behind when the daemon dies. The attributes are not listed, so tools
that copy xattrs (``cp -a``, ``rsync -X``) do not pick them up.

Reload needs the right to signal the daemon, so ``refmount reload`` reads
the daemon's pid from the same channel, sends SIGHUP (what systemd's
``ExecReload`` does too) and waits until the reload generation moves on,
then prints the outcome the daemon recorded.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from typing import Any, Callable

from .errors import ConfigError, NoAttribute

STATS_XATTR = "user.refmount.stats"

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


class ControlledFilesystem:
    """Wraps the served filesystem and answers the control xattrs on the mount root."""

    def __init__(self, inner: Any, report: Callable[[], dict[str, Any]]) -> None:
        self._inner = inner
        self._report = report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def getxattr(self, path: str, name: str) -> bytes:
        if name == STATS_XATTR and path.strip("/") == "":
            return self._stats_bytes()
        return self._inner.getxattr(path, name)

    def _stats_bytes(self) -> bytes:
        # The kernel asks for the size, then for the value, and figures move in between: padding
        # to a whole number of KiB keeps the size stable (JSON ignores trailing blanks).
        data = json.dumps(self._report(), sort_keys=True).encode()
        return data + b" " * (-len(data) % 1024)


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The figures of the refmount mount at ``mountpoint``."""
    try:
        raw = os.getxattr(mountpoint, STATS_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise ConfigError(f"{mountpoint} is not a running refmount mount") from None
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(f"{mountpoint} is a stale mount: its daemon died (refmount umount {mountpoint})") from None
        raise ConfigError(f"cannot read figures of {mountpoint}: {exc.strerror}") from None
    return json.loads(raw)


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


__all__ = ["ControlledFilesystem", "NoAttribute", "STATS_XATTR", "read_stats", "run_reload", "run_stats"]
