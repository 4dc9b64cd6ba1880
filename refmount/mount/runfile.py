"""The daemon's record of itself: which process serves a mount, and where its control channel listens.

``refmount stats`` and ``refmount reload`` talk to the daemon over an abstract
Unix socket, a name any local user can bind first. The client therefore has
to learn who the daemon is from somewhere a squatter cannot write: this
record, a small JSON file ``{"pid": ..., "address": ...}`` that the daemon
writes when it starts and removes when it stops, in

* ``/run/refmount/`` for a daemon run by root (fstab, systemd), and
* ``$XDG_RUNTIME_DIR/refmount/`` (normally ``/run/user/UID/refmount/``) for
  any other user,

named after the mountpoint's real path. A record counts only when the file
and its directory belong to root or to the user the kernel says made the
mount (``user_id=`` in mountinfo) and nobody else may write them; the
client then requires the channel's server (SO_PEERCRED) to be exactly that
pid. Other users cannot read a private runtime directory; for them
(``allow_other`` mounts of a non-root user) the channel is authenticated by
uid alone, which still excludes every user but the owner and root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass

log = logging.getLogger("refmount.control")

#: Where root's daemons keep their records.
SYSTEM_RUN_DIR = "/run/refmount"


@dataclass(frozen=True)
class DaemonRecord:
    """What a daemon says about itself: its pid and its control channel's abstract name (without the NUL)."""

    pid: int
    address: str


def mount_digest(mountpoint: str) -> str:
    """A fixed-length name for a mountpoint's real path (socket names and record files)."""
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:32]


def run_directories(owner_uid: int) -> list[str]:
    """Where the daemon of a mount made by ``owner_uid`` keeps its record, most likely first."""
    if owner_uid == 0:
        return [SYSTEM_RUN_DIR]
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.getuid() == owner_uid:
        candidates.append(os.path.join(runtime, "refmount"))
    candidates.append(f"/run/user/{owner_uid}/refmount")
    return list(dict.fromkeys(candidates))


def _own_run_directory() -> str | None:
    """The directory this process writes its record to, created if missing; None when there is none."""
    uid = os.geteuid()
    if uid == 0:
        directory = SYSTEM_RUN_DIR
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if not runtime:
            return None
        directory = os.path.join(runtime, "refmount")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create %s: %s; clients authenticate this daemon by uid only", directory, exc.strerror)
        return None
    if not _trusted(directory, uid, want_dir=True):
        log.warning("%s is not owned by uid %d or is writable by others; not writing the daemon's record there",
                    directory, uid)
        return None
    return directory


def _trusted(path: str, owner_uid: int, *, want_dir: bool) -> bool:
    """Whether ``path`` belongs to root or ``owner_uid``, is of the right kind and only its owner may write it."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(info.st_mode) if want_dir else stat.S_ISREG(info.st_mode)
    return kind_ok and info.st_uid in (0, owner_uid) and not info.st_mode & 0o022


def write_record(mountpoint: str, record: DaemonRecord) -> str | None:
    """Publish ``record`` for ``mountpoint`` (atomically); the path written, or None when it could not be."""
    directory = _own_run_directory()
    if directory is None:
        return None
    path = os.path.join(directory, mount_digest(mountpoint) + ".json")
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".record-")
        with os.fdopen(handle, "w") as out:
            json.dump({"pid": record.pid, "address": record.address}, out)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot write %s: %s; clients authenticate this daemon by uid only", path, exc.strerror)
        return None
    return path


def remove_record(path: str | None, pid: int) -> None:
    """Remove the record at ``path`` if it is still this daemon's (a later mount may have replaced it)."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as handle:
            if json.load(handle).get("pid") != pid:
                return
        os.unlink(path)


def read_record(mountpoint: str, owner_uid: int) -> DaemonRecord | None:
    """The trusted record of the daemon serving ``mountpoint`` (a mount made by ``owner_uid``), if readable."""
    name = mount_digest(mountpoint) + ".json"
    for directory in run_directories(owner_uid):
        path = os.path.join(directory, name)
        if not (_trusted(directory, owner_uid, want_dir=True) and _trusted(path, owner_uid, want_dir=False)):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            return DaemonRecord(int(data["pid"]), str(data["address"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
