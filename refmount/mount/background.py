"""Background mode: ``refmount mount`` without ``-f`` runs the foreground daemon detached and waits for it.

The daemon is this same command with ``--foreground``, started with exec as a
new session *before this process has started any thread*: forking a process
that already runs threads (the FUSE loop, cache workers, the event loop of
fsspec) can leave locks held forever in the child, so nothing ever does.
This process then returns only once the *new* mount answers (exit 0), or
prints the daemon's log since it started and fails with its status, which
is what a shell, mount(8) and fstab expect of a mount command. "Answers"
is a readdir through a mount whose id differs from the live mount that was
there before the daemon started (see :func:`~refmount.mount.mountpoint.answers`),
so neither a mount already in place nor a stale one passes for success. Credentials travel in
the daemon's environment, never in its argv (see ``refmount.cli.secretargs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from refmount.mount.mountpoint import DaemonExited, MountTimedOut, live_mount_id, wait_until_answers


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
    replacing = live_mount_id(mountpoint)  # before the daemon starts: what must not count as its mount
    with open(log_path, "ab") as sink:
        start_offset = sink.tell()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, close_fds=True,
            env=env, pass_fds=[int(env["REFMOUNT_SECRET_FD"])] if env and "REFMOUNT_SECRET_FD" in env else (),
        )
    try:
        wait_until_answers(mountpoint, timeout, process=child, replacing=replacing)
    except DaemonExited as exc:
        code = exc.returncode
        sys.stderr.write(_log_since(log_path, start_offset) or f"refmount daemon exited with status {code}\n")
        return code or 1
    except MountTimedOut:
        child.terminate()
        sys.stderr.write(_log_since(log_path, start_offset))
        sys.stderr.write(f"refmount: mount at {mountpoint} did not answer within {timeout:.0f} s; log: {log_path}\n")
        return 1
    return 0


def _log_since(path: str, offset: int) -> str:
    """What the daemon logged since ``offset``: this start's lines only, also when the log is shared."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
