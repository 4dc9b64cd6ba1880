"""Telling systemd how the mount is doing: sd_notify messages and readiness once the mount answers.

A ``Type=notify`` unit (see ``systemd/``) is ready only when the daemon says
READY=1, and units ordered after the mount must not start before it can be
read. libfuse calls ``init`` when the kernel first talks to the daemon, while
the mount cannot answer yet (the kernel waits for init's reply), so the init
hook from :func:`announce_when_answering` starts a thread that waits until
the mountpoint really answers and only then sends READY=1. The notify
protocol is one datagram to ``$NOTIFY_SOCKET``, written here directly so
there is no dependency on libsystemd; without that variable every message is
a no-op, so the same code runs outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from refmount.mount.mountpoint import MountTimedOut, wait_until_answers

log = logging.getLogger("refmount.daemon")


def notify_systemd(message: str) -> None:
    """Send ``message`` (READY=1, STOPPING=1, STATUS=...) to systemd when it asked for it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def announce_when_answering(mountpoint: str, timeout: float = 60.0) -> Callable[[], None]:
    """A FUSE init hook that signals readiness once the mountpoint really answers."""

    def wait_and_notify() -> None:
        try:
            wait_until_answers(mountpoint, timeout, interval=0.02)
        except MountTimedOut as exc:
            log.error("%s", exc)
            return
        log.info("mounted at %s", mountpoint)
        notify_systemd("READY=1\nSTATUS=serving " + mountpoint)

    def on_init() -> None:
        threading.Thread(target=wait_and_notify, name="refmount-ready", daemon=True).start()

    return on_init
