"""The mountpoint questions everyone asks: is something mounted, is it stale, does it answer; and unmounting.

The daemon (before mounting and on a signal), ``refmount mount`` in
background mode, the systemd readiness hook, ``refmount stats``, the tests
and the benchmarks all ask the same questions of a FUSE mountpoint, and the
answers hinge on kernel details that are easy to get subtly wrong, so they
live here once:

* ``os.path.ismount`` lstat()s the path, which fails for a mount whose
  daemon died (the kernel answers ENOTCONN), so such a *stale* mount looks
  like "not mounted" to it; :func:`is_mounted` counts it.
* ``stat`` may be answered from attributes the kernel cached, even for a
  dead daemon; ``statvfs`` always asks the daemon. A mount *answers* only
  when it is listed in ``/proc/self/mountinfo``, statvfs succeeds and a
  readdir of its root (a real round trip to the daemon) succeeds.
* "The mount answers" must mean *the new* mount: a mountpoint that already
  had a live mount (another daemon, or the same tree mounted twice) answers
  before the new daemon has even failed. Callers that start a daemon note
  :func:`live_mount_id` first and pass it as ``replacing``; a mount with that
  id does not count. A stale mount never answers a readdir, so its id need
  not be excluded (the kernel may hand the same id to the mount replacing it).
* Unmounting tries one order of tools everywhere: ``fusermount3`` (libfuse
  3), ``fusermount`` (libfuse 2), then ``umount`` (root, and mounts made by
  mount(8)); lazily (``-z``/``-l``) when asked, which also detaches a busy
  or stale mount.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from refmount.errors import ConfigError, RefmountError

log = logging.getLogger("refmount.daemon")

#: A mountpoint as the callers hold it: a string or a ``pathlib.Path``.
MountPath = str | os.PathLike[str]

#: What the kernel answers for a FUSE mount whose daemon died.
STALE_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)

#: Unmount tools in the order they are tried, each with its lazy flag.
UNMOUNT_TOOLS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("fusermount3", ("-u",), "-z"),
    ("fusermount", ("-u",), "-z"),
    ("umount", (), "-l"),
)

#: Seconds one unmount tool may take before the next one is tried.
UNMOUNT_TOOL_TIMEOUT = 20.0


class MountNotAnswering(RefmountError):
    """:func:`wait_until_answers` gave up: the mount did not answer in time, or its daemon exited."""


class MountTimedOut(MountNotAnswering):
    """The mount did not answer within the timeout (its daemon may still be starting)."""


class DaemonExited(MountNotAnswering):
    """The daemon exited before its mount answered; ``returncode`` is its exit status when known."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``: the kernel's own record of a mount."""

    mount_id: int
    mount_point: str
    fstype: str
    super_options: dict[str, str]

    @property
    def owner_uid(self) -> int | None:
        """The uid that made a FUSE mount (the kernel's ``user_id=``), None for other filesystems."""
        value = self.super_options.get("user_id")
        return int(value) if value is not None and value.isdigit() else None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as three-digit octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mount_entry(path: MountPath) -> MountEntry | None:
    """The topmost mount whose mount point is ``path`` (resolved), or None when ``path`` is no mountpoint."""
    target = os.path.realpath(path)
    found: MountEntry | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or _unescape(fields[4]) != target:
            continue
        options = dict(item.partition("=")[::2] for item in tail[2].split(","))
        found = MountEntry(int(fields[0]), target, tail[0], options)  # later lines are mounted on top
    return found


def live_mount_id(path: MountPath) -> int | None:
    """The id of a mount at ``path`` that answers now (None for none, or a stale one): see ``replacing``."""
    entry = mount_entry(path)
    if entry is None or is_stale(path):
        return None
    return entry.mount_id


def is_stale(path: MountPath) -> bool:
    """Whether ``path`` is a mount whose daemon died (statfs asks the daemon; stat may be cached)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in STALE_MOUNT_ERRNOS
    return False


def is_mounted(path: MountPath) -> bool:
    """Whether something is mounted at ``path``, answering or stale."""
    return os.path.ismount(path) or is_stale(path)


def answers(path: MountPath, probe: str | None = None, *, replacing: int | None = None) -> bool:
    """Whether ``path`` is a mount that really answers: listed, statvfs and a readdir of its root succeed.

    ``probe``, a path relative to the mount, must be found too: some FUSE
    daemons answer for their root before the tree below it is served.
    ``replacing``: the id of a live mount that was there before the daemon
    started (:func:`live_mount_id`); that mount does not count as an answer.
    """
    entry = mount_entry(path)
    if entry is None or (replacing is not None and entry.mount_id == replacing):
        return False
    try:
        os.statvfs(path)
        with os.scandir(path) as listing:  # readdir: never answered from cached attributes
            next(listing, None)
        os.stat(os.path.join(path, probe) if probe else path)
    except OSError:
        return False
    return True


def wait_until_answers(
    path: MountPath,
    timeout: float,
    *,
    process: subprocess.Popen[Any] | Callable[[], bool] | None = None,
    probe: str | None = None,
    replacing: int | None = None,
    interval: float = 0.05,
) -> None:
    """Return once ``path`` answers; raise :class:`MountTimedOut` or :class:`DaemonExited` otherwise.

    ``process`` is the daemon (a ``Popen``, whose exit status the error then
    carries) or a predicate that is true once the daemon died, so a daemon
    that failed is reported at once rather than after the whole timeout.
    ``probe`` and ``replacing``: see :func:`answers`.
    """
    deadline = time.monotonic() + timeout
    while not answers(path, probe, replacing=replacing):
        if isinstance(process, subprocess.Popen):
            if process.poll() is not None:
                raise DaemonExited(f"the daemon exited with status {process.returncode} before {path} answered",
                                   process.returncode)
        elif process is not None and process():
            raise DaemonExited(f"the daemon died before {path} answered", None)
        if time.monotonic() > deadline:
            raise MountTimedOut(f"mount at {path} did not answer within {timeout:.0f} s")
        time.sleep(interval)


def unmount(path: MountPath, *, lazy: bool = False) -> None:
    """Unmount a refmount tree, also one whose daemon died; raise ConfigError naming each tool's failure."""
    mountpoint = os.path.abspath(path)
    errors: list[str] = []
    for tool, arguments, lazy_flag in UNMOUNT_TOOLS:
        if not shutil.which(tool):
            continue
        command = [tool, *arguments, *([lazy_flag] if lazy else []), mountpoint]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=UNMOUNT_TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            errors.append(f"{tool}: no answer within {UNMOUNT_TOOL_TIMEOUT:.0f} s")
            continue
        except OSError as exc:
            errors.append(f"{tool}: {exc.strerror or exc}")
            continue
        if result.returncode == 0:
            return
        detail = result.stderr.strip().removeprefix(f"{tool}: ")  # the tools name themselves already
        errors.append(f"{tool}: {detail or result.returncode}")
    raise ConfigError(f"could not unmount {mountpoint}: " + "; ".join(errors or ["no unmount tool found"]))


def check_mountpoint(path: str, *, nonempty: bool, force: bool) -> None:
    """Refuse a mountpoint that is missing, in use, stale or (unless asked) not empty.

    With ``force`` a stale mount is detached lazily first (``--force``), but
    only when it is a refmount mount (``fuse.refmount``): the kernel says its
    daemon is gone (ENOTCONN), and nothing else's mount is ever removed.
    """
    try:
        st = os.stat(path)
        if os.path.ismount(path):
            # The kernel answers stat from cached attributes even for a dead daemon; statfs always asks it.
            os.statvfs(path)
    except OSError as exc:
        if exc.errno in STALE_MOUNT_ERRNOS:
            entry = mount_entry(path)
            if force and entry is not None and entry.fstype != "fuse.refmount":
                raise ConfigError(f"{path} is a stale {entry.fstype} mount, not a refmount one: "
                                  "--force leaves it alone; unmount it with the tool that made it") from None
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
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mountpoint (unmount it first)")
    if not nonempty and os.listdir(path):
        raise ConfigError(f"mountpoint {path} is not empty (use -o nonempty to mount over it)")
