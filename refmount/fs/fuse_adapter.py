"""The only module that imports the FUSE binding: a thin adapter from mfusepy calls to the core.

The binding is mfusepy on libfuse3. libfuse2 answers the kernel's INIT
without FUSE_MAX_PAGES, so no read ever exceeds 128 KiB there; libfuse3 lets
the kernel send 1 MiB reads once the mount's readahead is raised
(:mod:`refmount.mount.serve` does that). mfusepy picks libfuse2 when both
libraries are installed unless ``FUSE_LIBRARY_NAME`` says otherwise, so this
module sets it before the import.

mfusepy turns any exception that is not an OSError into EINVAL and logs a
traceback, so every operation is wrapped (:func:`_errno_boundary`, applied
to every method libfuse is given) to apply the single errno table of
:mod:`refmount.errors` and log the failures worth an operator's attention.
mfusepy registers with libfuse only the operations the adapter defines.

Upcalls the kernel can learn to skip. Every request into this daemon costs
tens of microseconds of Python, more than the kernel needs to serve a page
from its cache, so calls that carry no information are answered ENOSYS: the
kernel then stops sending them for the life of the mount. They must be
defined and answer ENOSYS: left undefined, libfuse3 answers ``open`` with
success itself, and the kernel keeps asking.

- ``open`` on a mount whose tree never changes (one reference set): the
  kernel opens files without asking ("zero-message open"), keeps their pages
  cached and sends no ``release``; reads arrive with handle 0 and are
  resolved by path. A collection keeps real handles, because a file open
  across a reload must keep reading the version it opened.
- ``flush`` on every close: a read-only tree has nothing to flush.
- ``getxattr``/``listxattr`` unless ``xattrs`` is on: ``ls -l`` asks for ACLs
  and security labels of every file, and the kernel caches no answer.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

# Before the import: mfusepy loads libfuse2 when both are installed unless told otherwise.
os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy as fuse  # noqa: E402 - must follow FUSE_LIBRARY_NAME

from refmount.errors import NotADirectory, ReadOnly, errno_for  # noqa: E402
from refmount.fs.served import ServedTree  # noqa: E402
from refmount.metrics import Metrics  # noqa: E402

if TYPE_CHECKING:
    # mfusepy ships no type information; the adapter defines every method it relies on itself.
    _Operations = object
else:
    _Operations = fuse.Operations

# Times are float seconds everywhere in refmount; utimens (the only call that would differ) answers EROFS.
warnings.filterwarnings("ignore", message="Time as floating point seconds", category=DeprecationWarning)

log = logging.getLogger("refmount.fuse")

#: Calls that would change the tree; all answer EROFS.
WRITE_OPERATIONS = (
    "chmod", "chown", "create", "link", "mkdir", "mknod", "removexattr", "rename", "rmdir",
    "setxattr", "symlink", "truncate", "unlink", "utimens", "write",
)  # fmt: skip

#: Calls handed to libfuse; each passes through :func:`_errno_boundary`.
OPERATIONS = (
    "init_with_config", "destroy", "getattr", "readdir", "access", "open", "read", "release", "statfs", "getxattr",
    "listxattr", "readlink", "opendir", "releasedir", "flush", "fsync", *WRITE_OPERATIONS,
)  # fmt: skip

#: The largest read the kernel sends (256 pages, its max_pages limit); offered at INIT as the readahead.
MAX_READ = 1 << 20

QUIET_ERRNOS = frozenset({errno.ENOENT, errno.ENODATA, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EACCES})

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _errno_boundary(op: str, method: _Method) -> _Method:
    """``method`` with every failure turned into the errno of :func:`refmount.errors.errno_for`."""

    @functools.wraps(method)
    def answered(self: FuseAdapter, *args: Any) -> Any:
        try:
            return method(self, *args)
        except fuse.FuseOSError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an errno, never a crash
            raise self.failure(op, _path_of(args), exc) from None

    return cast(_Method, answered)


class FuseAdapter(_Operations):
    """Forward mfusepy operations to a :class:`refmount.fs.served.ServedTree` (one set, or the router)."""

    def __init__(
        self,
        fs: ServedTree,
        metrics: Metrics,
        on_init: Callable[[], None] | None = None,
        *,
        stateless_open: bool = False,
        xattrs: bool = True,
    ) -> None:
        self.fs = fs
        self.metrics = metrics
        self.on_init = on_init
        self.stateless_open = stateless_open
        self.xattrs = xattrs

    def failure(self, op: str, path: str, exc: BaseException) -> fuse.FuseOSError:
        """The errno answer for ``exc``, counted and logged when it is worth an operator's attention."""
        code = errno_for(exc)
        if code not in QUIET_ERRNOS:
            self.metrics.add("errors")
            log.warning("%s %s failed: %s (%s)", op, path, exc, errno.errorcode.get(code, code))
        else:
            log.debug("%s %s: %s", op, path, errno.errorcode.get(code, code))
        return fuse.FuseOSError(code)

    # -- lifecycle -----------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """INIT: offer the kernel a 1 MiB readahead, then run the mount's hook (once the mount exists, before any request).

        The kernel lowers the mount's readahead to what INIT answers, never raises it; the hook
        (:func:`refmount.mount.serve.raise_read_ahead`) raises it, and this answer keeps it raised.
        """
        if conn is not None:
            conn.max_readahead = MAX_READ
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        log.info("filesystem released by the kernel")

    # -- reads ---------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if fh is not None:
            # fstat of an open file: answer from what was opened, also after a reload removed the path.
            return self.fs.getattr_of_handle(fh, path)
        return self.fs.getattr(path)

    def readdir(self, path: str, fh: int) -> Iterator[tuple[str, None, int]]:
        return self._streamed("readdir", path, iter(self.fs.readdir(path)))

    def _streamed(self, op: str, path: str, names: Iterator[str]) -> Iterator[tuple[str, None, int]]:
        """Consumed by mfusepy after this adapter returned: map failures mid-stream here too.

        Entries go without attributes: mfusepy would fill a bare name with a zeroed stat, whose
        inode 0 (under ``use_ino``) makes readdir(3) skip the entry; without one libfuse sends
        "inode unknown" and the kernel looks the name up, as it does anyway.
        """
        try:
            for name in names:
                yield name, None, 0
        except BaseException as exc:  # noqa: BLE001 - same rule as _errno_boundary
            code = errno_for(exc)
            self.metrics.add("errors")
            log.warning("%s %s failed while listing: %s (%s)", op, path, exc, errno.errorcode.get(code, code))
            raise fuse.FuseOSError(code) from None

    def access(self, path: str, amode: int) -> int:
        self.fs.access(path, amode)
        return 0

    def open(self, path: str, flags: int) -> int:
        if self.stateless_open:
            raise fuse.FuseOSError(errno.ENOSYS)  # see the module docstring: zero-message open
        return self.fs.open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        started = time.perf_counter()
        data = self.fs.read(fh, size, offset, path)
        self.metrics.observe_latency(time.perf_counter() - started)
        return data

    def release(self, path: str, fh: int) -> int:
        self.fs.release(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not self.xattrs:
            raise fuse.FuseOSError(errno.ENOSYS)
        return self.fs.getxattr(path, name)

    def listxattr(self, path: str) -> list[str]:
        if not self.xattrs:
            raise fuse.FuseOSError(errno.ENOSYS)
        return self.fs.listxattr(path)

    def readlink(self, path: str) -> str:
        self.fs.getattr(path)  # ENOENT for nothing there
        raise fuse.FuseOSError(errno.EINVAL)  # POSIX: not a symbolic link

    def opendir(self, path: str) -> int:
        # Check the kind only: listing here would build a million-entry directory twice.
        if not stat.S_ISDIR(self.fs.getattr(path)["st_mode"]):
            raise NotADirectory(path)
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def flush(self, path: str, fh: int) -> int:
        raise fuse.FuseOSError(errno.ENOSYS)  # nothing to flush; the kernel stops asking

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0


def _refuse_write(self: FuseAdapter, path: str, *args: Any) -> Any:
    raise ReadOnly(path)


for _name in WRITE_OPERATIONS:
    setattr(FuseAdapter, _name, _refuse_write)
for _name in OPERATIONS:
    setattr(FuseAdapter, _name, _errno_boundary(_name, getattr(FuseAdapter, _name)))


def _path_of(args: tuple[Any, ...]) -> str:
    return args[0] if args and isinstance(args[0], str) else ""


#: What libfuse3's ``fuse_main_real`` answers when its loop ended with an error, which includes its own
#: SIGINT handler ending it: mfusepy restores SIGINT's default just before the loop, so libfuse installs
#: a handler for it, which records the signal as the loop's error. Mount failures have other codes (1-7).
LOOP_ENDED = 8


def run_fuse(adapter: FuseAdapter, mountpoint: str, options: dict[str, Any]) -> None:
    """Serve ``mountpoint`` until it is unmounted (blocks the calling thread).

    Raises RuntimeError (libfuse's code) when libfuse refuses the mount. A loop ended by SIGINT is a
    clean end, as under libfuse2; libfuse reports a real loop failure on stderr itself.
    """
    threads = options.pop("threads", True)
    try:
        fuse.FUSE(adapter, mountpoint, raw_fi=False, foreground=True, nothreads=not threads, **options)
    except RuntimeError as exc:
        if exc.args != (LOOP_ENDED,):
            raise
        log.info("the FUSE loop of %s ended (libfuse answered %d: a signal or a loop error)", mountpoint, LOOP_ENDED)
