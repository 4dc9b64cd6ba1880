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

import errno
import logging
import os
import shutil
import subprocess

from refmount.errors import ConfigError

log = logging.getLogger("refmount.mount")


#: What the kernel answers for a FUSE mount whose daemon died.
STALE_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def is_stale_mount(path: str) -> bool:
    """Whether ``path`` is a mount whose daemon died (statfs asks the daemon; stat may be cached)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in STALE_MOUNT_ERRNOS
    return False


def check_mountpoint(path: str, *, nonempty: bool, force: bool) -> None:
    """Refuse a mountpoint that is missing, in use, stale or (unless asked) not empty."""
    try:
        st = os.stat(path)
        if os.path.ismount(path):
            # The kernel answers stat from cached attributes even for a dead daemon; statfs always asks it.
            os.statvfs(path)
    except OSError as exc:
        if exc.errno in STALE_MOUNT_ERRNOS:
            if force:
                log.warning("%s is a stale mount of a daemon that died; unmounting it", path)
                unmount(path, lazy=True)
                return check_mountpoint(path, nonempty=nonempty, force=False)
            raise ConfigError(
                f"{path} is a stale mount (its daemon died): run 'refmount umount {path}' or mount with --force"
            ) from None
        if exc.errno == errno.ENOENT:
            raise ConfigError(f"mountpoint {path} does not exist") from None
        raise ConfigError(f"mountpoint {path}: {exc.strerror}") from None
    import stat as stat_module

    if not stat_module.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mountpoint (unmount it first)")
    if not nonempty and os.listdir(path):
        raise ConfigError(f"mountpoint {path} is not empty (use -o nonempty to mount over it)")


def answers(mountpoint: str) -> bool:
    try:
        if not os.path.ismount(mountpoint):
            return False
        os.stat(mountpoint)
        return True
    except OSError:
        return False


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a refmount tree, also one whose daemon died (a stale mount)."""
    mountpoint = os.path.abspath(mountpoint)
    attempts: list[list[str]] = []
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            attempts.append([tool, "-u", *(["-z"] if lazy else []), mountpoint])
    if shutil.which("umount"):
        attempts.append(["umount", *(["-l"] if lazy else []), mountpoint])
    errors: list[str] = []
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            return
        errors.append(f"{command[0]}: {result.stderr.strip() or result.returncode}")
    raise ConfigError(f"could not unmount {mountpoint}: " + "; ".join(errors or ["no unmount tool found"]))
