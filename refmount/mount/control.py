"""The client end of the channel to a running mount: ``refmount stats`` and ``refmount reload``.

The daemon answers on an abstract Unix socket named after the mountpoint's
real path (server: :mod:`refmount.mount.controlserver`). Why a socket
rather than an attribute or a file in the tree: the tree stays exactly the
reference set (and xattrs can stay off, which keeps ``ls -l`` from costing a
daemon round trip per file). Who may ask follows who may see the mount: the
mounting user and root, and everyone when the mount has ``allow_other``.
Abstract sockets belong to a network namespace, so the commands must run in
the daemon's.

Any local user can bind an abstract name, so the client authenticates the
server before believing a word: the kernel's mount table names the user
that made the mount (``user_id=``), the daemon's record in a directory only
root or that user can write (:mod:`refmount.mount.runfile`) names its pid
and the channel's address, and the server end's SO_PEERCRED must match both
(uid root or the owner; pid the recorded one, when the record is readable).
Reload is a request on the channel answered with its outcome; nothing is
ever signalled on the strength of what a channel said.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from refmount.errors import ConfigError
from refmount.mount.mountpoint import is_stale, mount_entry
from refmount.mount.runfile import mount_digest, read_record

#: The requests the channel answers, one line each.
STATS_REQUEST = b"stats\n"
RELOAD_REQUEST = b"reload\n"
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
    ("attr_requests", "attribute requests"),
    ("listed_with_attrs", "entries listed with attributes"),
    ("cache_bytes", "cache bytes"),
    ("cache_capacity", "cache capacity"),
    ("disk_cache_hits", "disk cache hits"),
    ("disk_cache_misses", "disk cache misses"),
    ("disk_cache_bytes_read", "disk cache bytes read"),
    ("disk_cache_bytes_written", "disk cache bytes written"),
    ("disk_cache_corrupt", "disk cache corrupt blocks"),
    ("disk_cache_errors", "disk cache errors"),
    ("disk_cache_stored_bytes", "disk cache bytes"),
    ("disk_cache_capacity", "disk cache capacity"),
    ("shared_cache_hits", "shared cache hits"),
    ("shared_cache_misses", "shared cache misses"),
    ("shared_cache_bytes_read", "shared cache bytes read"),
    ("shared_cache_bytes_written", "shared cache bytes written"),
    ("shared_cache_corrupt", "shared cache corrupt blocks"),
    ("shared_cache_errors", "shared cache errors"),
    ("shared_cache_dropped", "shared cache uploads dropped"),
    ("shared_cache_queued", "shared cache uploads queued"),
    ("shared_cache_leases_won", "shared cache fetch leases taken"),
    ("shared_cache_leases_held", "shared cache blocks waited for"),
    ("shared_cache_lease_timeouts", "shared cache waits timed out"),
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
    """The usual abstract socket name of the mount at ``mountpoint`` (one per real path)."""
    return f"\0refmount/{mount_digest(mountpoint)}"


def peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """pid, uid and gid of the other end of a connected Unix socket, as the kernel recorded them."""
    pid, uid, gid = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def _open_channel(mountpoint: str, timeout: float) -> socket.socket:
    """A connection to the daemon of ``mountpoint``, whose server end has been authenticated."""
    entry = mount_entry(mountpoint)
    owner = entry.owner_uid if entry is not None else None
    if entry is None or entry.fstype != "fuse.refmount" or owner is None:
        raise ConfigError(f"{mountpoint} is not a running refmount mount")
    if is_stale(mountpoint):
        raise ConfigError(f"{mountpoint} is a stale mount: its daemon died (refmount umount {mountpoint})")
    if os.geteuid() not in (0, owner) and "allow_other" not in entry.super_options:
        raise ConfigError(f"cannot reach the daemon of {mountpoint}: not allowed: the mount is private to its owner")
    record = read_record(mountpoint, owner)
    address = "\0" + record.address if record is not None else control_address(mountpoint)
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    try:
        channel.connect(address)
        pid, uid, _ = peer_credentials(channel)
    except OSError as exc:
        channel.close()
        if isinstance(exc, (ConnectionRefusedError, FileNotFoundError)):
            raise ConfigError(f"{mountpoint} is a refmount mount, but its daemon serves no control channel") from None
        raise ConfigError(f"cannot reach the daemon of {mountpoint}: {exc.strerror or exc}") from None
    if uid not in (0, owner) or (record is not None and pid != record.pid):
        channel.close()
        expected = f"pid {record.pid}" if record is not None else f"uid 0 or {owner}"
        raise ConfigError(f"refusing the control channel of {mountpoint}: it is served by pid {pid} (uid {uid}), "
                          f"not by the mount's daemon ({expected}); another process holds its name")
    return channel


def _request(mountpoint: str, request: bytes, timeout: float) -> dict[str, Any]:
    """Send ``request`` to the authenticated daemon of ``mountpoint`` and decode its answer."""
    with _open_channel(mountpoint, timeout) as channel:
        chunks: list[bytes] = []
        try:
            channel.sendall(request)
        except BrokenPipeError:
            pass  # refused and closed at once; its refusal may still be waiting to be read
        try:
            while chunk := channel.recv(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # closed with our request unread: what arrived before is the answer
        except OSError as exc:
            raise ConfigError(f"no answer from the daemon of {mountpoint}: {exc.strerror or exc}") from None
    if not chunks:
        raise ConfigError(f"the daemon of {mountpoint} closed the channel without answering")
    try:
        answer: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise ConfigError(f"the daemon of {mountpoint} sent an answer that is not JSON") from None
    if "error" in answer:
        raise ConfigError(f"the daemon of {mountpoint} answered: {answer['error']}")
    return answer


def read_stats(mountpoint: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The figures of the refmount mount at ``mountpoint``."""
    return _request(mountpoint, STATS_REQUEST, timeout)


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
    """Ask the daemon of ``mountpoint`` to reload over the channel and print the outcome it answers."""
    answer = _request(mountpoint, RELOAD_REQUEST, timeout)
    print(answer.get("message", "reloaded"))
    return 0 if answer.get("ok") else 1


__all__ = ["RELOAD_REQUEST", "STATS_REQUEST", "control_address", "peer_credentials", "read_stats", "run_reload",
           "run_stats"]
