"""Mount lifecycle: assemble the layers, serve FUSE, signal readiness, unmount.

Foreground is the primitive: ``serve`` loads the reference set, checks the
mountpoint and blocks in the FUSE loop until unmounted. Background mode
(``refmount mount`` without ``-f``) starts the same command with
``--foreground`` as a new session via exec, before any thread exists, and
returns once the mount answers, or prints the daemon's error and fails;
nothing ever forks a process that already runs threads.

Signals. Python runs its signal handlers only in the main thread between
bytecodes, and the main thread sits in libfuse's C loop for the whole
mount, so handlers would never run. Instead, every signal we handle gets a
no-op Python handler (which also keeps libfuse from installing its own: it
only does where the disposition is SIG_DFL), and ``signal.set_wakeup_fd``
makes the C-level handler write the signal number to a pipe that a watcher
thread reads. SIGTERM/SIGINT: tell systemd STOPPING=1 and unmount with
fusermount, which ends the FUSE loop; ``serve`` then closes everything and
returns 0. SIGHUP: reload the reference set(s). SIGUSR1 dumps every thread's
stack to the log through faulthandler, which works at C level even when
the interpreter is stuck. (fusepy resets SIGINT to the default just before
entering libfuse, so for SIGINT libfuse's own handler ends the loop and
unmounts: the same outcome, exit 0.)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.path.ismount(mountpoint):
                    os.stat(mountpoint)
                    log.info("mounted at %s", mountpoint)
                    notify_systemd("READY=1\nSTATUS=serving " + mountpoint)
                    return
            except OSError:
                pass
            time.sleep(0.02)
        log.error("mount at %s did not answer within %.0f s", mountpoint, timeout)

    def on_init() -> None:
        threading.Thread(target=wait_and_notify, name="refmount-ready", daemon=True).start()

    return on_init
