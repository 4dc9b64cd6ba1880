"""Ranged reads of local files that open each file once, where the policy allows it.

Checking a path and then opening it again is a race: between the two, a
user who owns a directory below an allowed prefix can swap a symbolic link
from a harmless file to ``/etc/shadow``, and the daemon (root) opens the
new target. So the file is opened once, and what was opened is what is
checked and read:

* below an allowed local prefix, every path component is opened relative
  to the previous directory's descriptor with ``O_NOFOLLOW``, starting from
  the prefix's directory: a symbolic link anywhere below the prefix is
  refused, whatever it points at, and nothing can be swapped in between;
* the opened descriptor must be a regular file (``fstat``; FIFOs and
  devices are refused, and ``O_NONBLOCK`` keeps a FIFO from hanging the open);
* with ``allow_other``, a file its owner did not make world-readable is
  refused unless the operator set ``allow_private_files``;
* the range is read from that descriptor with ``pread``, and the size and
  mtime returned are the descriptor's own, taken after the read.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from typing import Any

from refmount.errors import ForbiddenURL
from refmount.store.policy import UrlPolicy

log = logging.getLogger("refmount.policy")

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC

_logged: set[str] = set()
_logged_lock = threading.Lock()


def _refuse(path: str, reason: str) -> ForbiddenURL:
    """The EACCES error for ``path``; the first refusal of each path is logged."""
    with _logged_lock:
        first = path not in _logged and len(_logged) < 10_000
        _logged.add(path)
    if first:
        log.warning("refused local file %s: %s", path, reason)
    return ForbiddenURL(f"{path}: {reason}")


def _open_beneath(root: str, path: str) -> int:
    """Open ``path`` (below directory ``root``) component by component, following no symbolic link."""
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    if relative.startswith("..") or any(part in ("", ".", "..") for part in parts):
        raise _refuse(path, f"not below the allowed directory {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's prefix itself may be a link
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                child = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                    os.lstat(part, dir_fd=fd).st_mode
                ):
                    raise _refuse(path, f"symbolic link below the allowed directory {root}") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_checked(path: str, policy: UrlPolicy) -> int:
    """A descriptor of the regular file ``path``, opened once under ``policy``'s rules."""
    reason = policy.reason(path)
    if reason is not None:
        raise _refuse(path, reason)
    root = policy.local_root(path)
    fd = _open_beneath(root, path) if root is not None else os.open(path, _FILE_FLAGS & ~os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "not a regular file")
        if not policy.private_files and not info.st_mode & stat.S_IROTH:
            raise _refuse(path, "not world-readable, and the mount is shared with allow_other "
                                "(serve it anyway with -o allow_private_files)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_range(path: str, start: int, stop: int, policy: UrlPolicy) -> tuple[bytes, dict[str, Any]]:
    """Bytes ``[start, stop)`` of local ``path`` and the opened file's ``{"size", "mtime"}`` after the read.

    A file shorter than ``stop`` gives fewer bytes (the caller checks the length).
    """
    fd = open_checked(path, policy)
    try:
        chunks: list[bytes] = []
        offset = start
        while offset < stop:
            chunk = os.pread(fd, stop - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return b"".join(chunks), {"size": info.st_size, "mtime": info.st_mtime, "type": "file"}
