"""The only module that imports ``fuse``: a thin adapter from fusepy calls to the core.

fusepy turns any exception that is not an OSError into a meaningless errno
(and can crash on some), so every call passes through :meth:`FuseAdapter.__call__`,
which applies the single errno table of :mod:`refmount.errors` and logs the
failures worth an operator's attention.

Upcalls the kernel can learn to skip. Every request into this daemon costs
tens of microseconds of Python, more than the kernel needs to serve a page
from its cache, so calls that carry no information are answered ENOSYS: the
kernel then stops sending them for the life of the mount.

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
import logging
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import fuse

from refmount.errors import NotADirectory, ReadOnly, errno_for
from refmount.fs.served import ServedTree
from refmount.metrics import Metrics

if TYPE_CHECKING:
    # fusepy has no type information; the adapter defines every method it relies on itself.
    _Operations = object
else:
    _Operations = fuse.Operations

log = logging.getLogger("refmount.fuse")

#: Calls that would change the tree; all answer EROFS.
WRITE_OPERATIONS = (
    "chmod", "chown", "create", "link", "mkdir", "mknod", "removexattr", "rename", "rmdir",
    "setxattr", "symlink", "truncate", "unlink", "utimens", "write",
)  # fmt: skip

QUIET_ERRNOS = frozenset({errno.ENOENT, errno.ENODATA, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EACCES})


class FuseAdapter(_Operations):
    """Forward fusepy operations to a :class:`refmount.fs.served.ServedTree` (one set, or the router)."""

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

    def __call__(self, op: str, *args: Any) -> Any:
        handler = getattr(self, op, None)
        if handler is None:
            raise fuse.FuseOSError(errno.ENOSYS)
        try:
            return handler(*args)
        except fuse.FuseOSError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an errno, never a crash
            code = errno_for(exc)
            if code not in QUIET_ERRNOS:
                self.metrics.add("errors")
                log.warning("%s %s failed: %s (%s)", op, _path_of(args), exc, errno.errorcode.get(code, code))
            else:
                log.debug("%s %s: %s", op, _path_of(args), errno.errorcode.get(code, code))
            raise fuse.FuseOSError(code) from None

    # -- lifecycle -----------------------------------------------------------

    def init(self, path: str) -> None:
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

    def readdir(self, path: str, fh: int) -> Iterator[str]:
        return self._streamed("readdir", path, iter(self.fs.readdir(path)))

    def _streamed(self, op: str, path: str, items: Iterator[str]) -> Iterator[str]:
        """Consumed by fusepy after this adapter returned: map failures mid-stream here too."""
        try:
            yield from items
        except BaseException as exc:  # noqa: BLE001 - same rule as __call__
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


def _path_of(args: tuple[Any, ...]) -> str:
    return args[0] if args and isinstance(args[0], str) else ""


def run_fuse(adapter: FuseAdapter, mountpoint: str, options: dict[str, Any]) -> None:
    """Serve ``mountpoint`` until it is unmounted (blocks the calling thread)."""
    threads = options.pop("threads", True)
    fuse.FUSE(adapter, mountpoint, foreground=True, nothreads=not threads, **options)
