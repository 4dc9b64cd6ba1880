"""Signals while the main thread is inside libfuse: unmount on SIGTERM/SIGINT, reload on SIGHUP.

Python runs its signal handlers only in the main thread, between bytecodes,
and the main thread of a mount sits in libfuse's C loop for the mount's whole
life, so ordinary handlers would never run. Instead every signal handled here
gets a no-op Python handler, which also keeps libfuse from installing its own
(it only does where the disposition is SIG_DFL), and ``signal.set_wakeup_fd``
makes the C-level handler write the signal number to a pipe that a watcher
thread reads and acts on:

* SIGTERM/SIGINT: tell systemd STOPPING=1 and unmount, which ends the FUSE
  loop; ``serve`` then closes everything and returns 0. If files are still
  open the unmount is refused and the tree is detached lazily instead (the
  daemon exits when the last one is closed); a second signal detaches lazily
  at once.
* SIGHUP: reload the reference set(s), what ``refmount reload`` and systemd's
  ``ExecReload`` send.

mfusepy resets SIGINT to the default just before entering libfuse, so for
SIGINT libfuse's own handler ends the loop and unmounts: the same outcome,
exit 0. SIGUSR1 (stack dump) is not handled here: faulthandler does it at C
level, which works even when the interpreter is stuck (see ``serve``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from refmount.errors import ConfigError
from refmount.mount.mountpoint import is_mounted, unmount
from refmount.mount.systemd import notify_systemd

log = logging.getLogger("refmount.daemon")


class SignalWatcher:
    """Act on SIGTERM/SIGINT (unmount) and SIGHUP (reload) while the main thread is inside libfuse."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, mountpoint: str, *, reload: Callable[[], object]) -> None:
        self.mountpoint = mountpoint
        self._reload = reload
        self._stopping = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for signum in self.SIGNALS:
            signal.signal(signum, lambda signum, frame: None)  # run at C level; the watcher acts
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="refmount-signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return  # close()
                try:
                    self._handle(signal.Signals(signum))
                except Exception as exc:  # noqa: BLE001 - the watcher must survive any one action
                    log.error("handling signal %d failed: %s", signum, exc)

    def _handle(self, signum: signal.Signals) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading")
            self._reload()
            return
        if self._stopping:
            if not is_mounted(self.mountpoint):
                return
            log.warning("%s again: detaching %s lazily", signum.name, self.mountpoint)
            unmount(self.mountpoint, lazy=True)
            return
        self._stopping = True
        log.info("%s: unmounting %s", signum.name, self.mountpoint)
        notify_systemd("STOPPING=1\nSTATUS=unmounting")
        try:
            unmount(self.mountpoint)
        except ConfigError as exc:
            log.warning("%s; files are still open, detaching lazily: the daemon exits when they are closed", exc)
            unmount(self.mountpoint, lazy=True)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        try:
            os.write(self._write_fd, b"\0")
        except OSError:
            pass
        self._thread.join(timeout=5)
        os.close(self._write_fd)
        os.close(self._read_fd)
