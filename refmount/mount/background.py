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

import os
import subprocess
import sys
import tempfile
import time

from refmount.mount.mountpoint import answers


def default_log_path(mountpoint: str) -> str:
    """Where a background daemon logs when no --log-file was given."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = os.path.join(base, f"refmount-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(directory, name + ".log")


def start_background(argv: list[str], mountpoint: str, log_file: str | None, timeout: float = 60.0,
                     env: dict[str, str] | None = None) -> int:
    """Run ``refmount mount ... --foreground`` detached; return once it answers or has failed.

    ``env``: the daemon's environment (credentials travel here, never in ``argv``: see secretargs).
    """
    log_path = log_file or default_log_path(mountpoint)
    command = [sys.executable, "-m", "refmount", *argv, "--foreground"]
    if not log_file:
        command += ["--log-file", log_path]
    with open(log_path, "ab") as sink:
        start_offset = sink.tell()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, close_fds=True,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            sys.stderr.write(_log_since(log_path, start_offset) or f"refmount daemon exited with status {code}\n")
            return code or 1
        if answers(mountpoint):
            return 0
        time.sleep(0.05)
    child.terminate()
    sys.stderr.write(_log_since(log_path, start_offset))
    sys.stderr.write(f"refmount: mount at {mountpoint} did not answer within {timeout:.0f} s; log: {log_path}\n")
    return 1


def _log_since(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
