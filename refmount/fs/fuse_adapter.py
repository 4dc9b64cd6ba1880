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

Listings carry attributes (readdirplus). The kernel asks for a directory's
entries with their attributes when INIT enables it; mfusepy passes every
entry without them, so ``ls -l`` or ``find`` of a directory of a million
chunks cost a ``lookup`` upcall per entry. :class:`_Fuse` overrides mfusepy's
readdir to hand libfuse each entry's full ``stat`` with FUSE_FILL_DIR_PLUS
(:meth:`FuseAdapter.fill_directory`), from the filesystem's
:meth:`~refmount.fs.served.ServedTree.listing`. libfuse 3.14 turns such an
entry into a kernel entry with attributes only in its offset mode (in the
zero-offset mode it drops them, libfuse issue 235, fixed in 3.17 by pull
request 896), so entries carry offsets and each open directory keeps its
place (:mod:`refmount.fs.dirstream`). libfuse creates the entry with the
entry and attribute timeouts of a ``lookup``. The adaptive mode
(READDIRPLUS_AUTO) is turned off: it sends attributes for the first buffer
only, and ``ls -l`` lists the whole directory before its first ``stat``.
The price is paid by repeated listings: each kernel request is now a call
into Python, where the zero-offset mode had libfuse answer all but the first
from its own copy. The kernel's readdir cache (FOPEN_CACHE_DIR) would spare
them the daemon, but libfuse 3.14's high-level ``opendir`` does not pass the
flag on (libfuse issue 821, fixed in 3.16 by pull request 822).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
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

from refmount.errors import BackendError, NotADirectory, ReadOnly, errno_for  # noqa: E402
from refmount.fs.dirstream import DirStream  # noqa: E402
from refmount.fs.served import UNKNOWN, Entry, ServedTree, blocks_of  # noqa: E402
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

#: Calls handed to libfuse (and the listing :class:`_Fuse` calls); each passes through :func:`_errno_boundary`.
OPERATIONS = (
    "init_with_config", "destroy", "getattr", "readdir", "fill_directory", "access", "open", "read", "read_into",
    "release", "statfs", "getxattr", "listxattr", "readlink", "opendir", "releasedir", "flush", "fsync", *WRITE_OPERATIONS,
)  # fmt: skip

# libfuse 3 (fuse.h, fuse_common.h): the readdir request flag, the filler flag, the INIT capabilities.
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14

#: The filler libfuse passes to readdir, bound to its buffer: (name, stat or None, offset, flags) -> 1 when full.
Filler = Callable[[bytes, Any, int, int], int]

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
        self._dirs: dict[int, _OpenDir] = {}
        self._dir_ids = itertools.count(1)

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
            if conn.capable & FUSE_CAP_READDIRPLUS:
                conn.want = (conn.want | FUSE_CAP_READDIRPLUS) & ~FUSE_CAP_READDIRPLUS_AUTO
            log.debug("INIT: capable %#x, want %#x", conn.capable, conn.want)
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        log.info("filesystem released by the kernel")

    # -- reads ---------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self.metrics.add("attr_requests")
        if fh is not None:
            # fstat of an open file: answer from what was opened, also after a reload removed the path.
            return self.fs.getattr_of_handle(fh, path)
        return self.fs.getattr(path)

    def readdir(self, path: str, fh: int) -> Iterator[tuple[str, None, int]]:
        """mfusepy's listing, names only: what makes mfusepy register readdir; :class:`_Fuse` answers with
        :meth:`fill_directory` instead."""
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

    def fill_directory(self, path: str, fh: int, offset: int, plus: bool, fill: Filler) -> int:
        """Hand libfuse the entries of the open directory ``fh`` from ``offset`` on, until its buffer is full.

        ``.`` and ``..`` go bare, as before (the kernel takes no attributes for
        them). An entry whose attributes are known goes with its full ``stat``
        and, when libfuse asks for attributes, FUSE_FILL_DIR_PLUS; other entries
        go with their inode and their kind where known (else DT_UNKNOWN), which
        readdir(3) reports, and the kernel looks them up. A failure mid-listing (a Parquet record file that cannot
        be read) ends the listing with its errno, and the next read lists again.
        """
        opened = self._dirs.get(fh) or _OpenDir(self.fs, path)  # no handle of ours: list for this call only
        listed = _fill(opened, offset, FUSE_FILL_DIR_PLUS if plus else 0, fill)
        if plus and listed:
            self.metrics.add("listed_with_attrs", listed)
        return 0

    def access(self, path: str, amode: int) -> int:
        self.fs.access(path, amode)
        return 0

    def open(self, path: str, flags: int) -> int:
        if self.stateless_open:
            raise fuse.FuseOSError(errno.ENOSYS)  # see the module docstring: zero-message open
        return self.fs.open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        """The bytes of a read; what makes mfusepy register ``read``, which :class:`_Fuse` answers with
        :meth:`read_into` instead."""
        return b"".join(self.fs.read_parts(fh, size, offset, path))

    def read_into(self, path: str, address: int, size: int, offset: int, fh: int) -> int:
        """Copy a read's parts into the reply buffer of ``size`` bytes at ``address``; how many bytes were read.

        The parts are views of cached blocks (:meth:`ServedTree.read_parts`): each byte is copied once,
        from the cache into libfuse's buffer. mfusepy's ``read`` would take one ``bytes`` and copy it in,
        which cost the daemon a join of the blocks (a second copy, a fresh allocation) per request.
        """
        started = time.perf_counter()
        parts = self.fs.read_parts(fh, size, offset, path)
        reply = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        filled = 0
        for part in parts:
            end = filled + len(part)
            if end > size:  # never a truncated or overrun reply: an error instead
                raise BackendError(f"{path}: a read of {size} bytes at {offset} produced more than {size} bytes")
            reply[filled:end] = part
            filled = end
        self.metrics.observe_latency(time.perf_counter() - started)
        return filled

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
        # Check the kind only: the listing is made on the first read (a million-entry directory, once).
        if not stat.S_ISDIR(self.fs.getattr(path)["st_mode"]):
            raise NotADirectory(path)
        handle = next(self._dir_ids)
        self._dirs[handle] = _OpenDir(self.fs, path)
        return handle

    def releasedir(self, path: str, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    def flush(self, path: str, fh: int) -> int:
        raise fuse.FuseOSError(errno.ENOSYS)  # nothing to flush; the kernel stops asking

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0


#: Positions 0 and 1 of every listing.
DOTS: tuple[Entry, ...] = ((".", 0, 0, 0), ("..", 0, 0, 0))


class _OpenDir:
    """One open directory: its listing, made on the first read, and the ``c_stat`` buffers its entries are sent in.

    libfuse serialises the reads of one open directory, so the buffers are
    reused without a lock. The file and directory buffers are filled once from
    the listing's ``getattr`` templates with mfusepy's ``set_st_attrs``, the
    function its ``getattr`` uses; each entry then sets only its own fields.
    """

    def __init__(self, fs: ServedTree, path: str) -> None:
        self._fs = fs
        self._path = path
        self.stream: DirStream[Entry] = DirStream(self._produce)
        self.files, self.dirs, self.bare = fuse.c_stat(), fuse.c_stat(), fuse.c_stat()

    def _produce(self) -> Iterator[Entry]:
        listing = self._fs.listing(self._path)
        for buffer, attrs in ((self.files, listing.file_attrs), (self.dirs, listing.dir_attrs)):
            ctypes.memset(ctypes.byref(buffer), 0, ctypes.sizeof(buffer))
            fuse.set_st_attrs(buffer, attrs)
        return itertools.chain(DOTS, listing.entries)


def _fill(opened: _OpenDir, offset: int, with_attrs: int, fill: Filler) -> int:
    """Fill from ``offset`` until the filler says the buffer is full; how many entries went with attributes."""
    listed = 0
    for position, (name, inode, kind, count) in opened.stream.starting_at(offset):
        encoded, known = name.encode("utf-8", "surrogateescape"), False
        if position < len(DOTS):
            full = fill(encoded, None, position + 1, 0)
        elif count == UNKNOWN or not kind:
            bare = opened.bare
            ctypes.memset(ctypes.byref(bare), 0, ctypes.sizeof(bare))
            bare.st_mode, bare.st_ino = kind, inode
            full = fill(encoded, bare, position + 1, 0)
        elif kind == stat.S_IFDIR:
            dirs, known = opened.dirs, True
            dirs.st_ino, dirs.st_nlink = inode, count
            full = fill(encoded, dirs, position + 1, with_attrs)
        else:
            files, known = opened.files, True
            files.st_ino, files.st_size, files.st_blocks = inode, count, blocks_of(count)
            full = fill(encoded, files, position + 1, with_attrs)
        if full:
            return listed
        listed += known
    return listed


class _Fuse(fuse.FUSE):  # type: ignore[misc]  # mfusepy is untyped
    """mfusepy's FUSE whose readdir hands libfuse the entries' attributes (see the module docstring) and whose
    read copies the blocks' parts straight into libfuse's buffer (:meth:`FuseAdapter.read_into`)."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        decoded = "" if path is None else path.decode(self.encoding, self.errors)
        address = ctypes.addressof(buf.contents)
        return cast(int, self.operations.read_into(decoded, address, size, offset, fip.contents.fh))

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        decoded = "" if path is None else path.decode(self.encoding, self.errors)
        return cast(int, self.operations.fill_directory(
            decoded, fip.contents.fh, offset, bool(flags & FUSE_READDIR_PLUS), functools.partial(filler, buf)
        ))


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
        _Fuse(adapter, mountpoint, raw_fi=False, foreground=True, nothreads=not threads, **options)
    except RuntimeError as exc:
        if exc.args != (LOOP_ENDED,):
            raise
        log.info("the FUSE loop of %s ended (libfuse answered %d: a signal or a loop error)", mountpoint, LOOP_ENDED)
