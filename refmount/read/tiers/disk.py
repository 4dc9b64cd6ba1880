"""The disk tier: blocks kept in a local directory, across unmounts and reboots, within a byte budget.

Layout: blocks live in *segment files*, one per run of ``slots`` consecutive
blocks of one version of one object (:func:`segment_shape`: 8 MiB of the
object, at most :data:`MAX_SLOTS` blocks), at
``DIR/refmount-segments-v1/XY/NAME`` where NAME is a hash of the URL, the
version, the block size, the slot count and the run's number, and XY its
first two characters. A segment is::

    segment header | one block header per slot | padding to 4 KiB | slot 0 | slot 1 | ...

Each slot sits at a fixed offset, ``block_size`` bytes apart; a block header
is the frame header of :mod:`~refmount.read.tiers.base` (the block's key
digest, its length, a CRC-32 of its bytes), all zeros while the slot is
empty. Slots never written are holes and cost no disk. Why segments: a
sequential read is then one open and a few large reads of contiguous bytes
per 8 MiB, which the disk and the kernel's readahead serve at their
streaming rate, where one file per block paid an open (a directory and
inode lookup when the page cache is cold) and a separate small I/O per
256 KiB.

Reading: a lookup of several blocks groups them by segment, opens each
segment once, asks the kernel to start reading its table and the span of
wanted slots and as much again after it within the segment
(``posix_fadvise(WILLNEED)``: the disk works on all of it at once, and a
sequential reader's next lookup, which the readahead makes about 1 MiB, is
already on its way), then reads block by block (``pread``), verifying each
and handing it over as soon as it is read. No thread pool: the parallelism is the
kernel's.

Writing: a block's bytes go into its slot first, then its header (no
rename), so a reader in between sees the previous header or none. A new
segment is made whole (header, empty table) in ``tmp`` and linked into
place, so a segment found under its name always has its header: a shorter
file was cut short (a crash, a full disk) and is removed. Several daemons
may share one directory: a block's bytes are fixed by its key (the same
version of the same object; a block cut at an earlier extent is a prefix of
the longer one), so interleaved writes by two daemons cannot assemble a
header and bytes that verify but are wrong; a segment another daemon evicts
while it is being read stays readable through the open descriptor, and
writes into it are merely lost. (What sharing does not give: one budget.
Each daemon sweeps the directory down to its own ``disk_cache_size``; give
them the same size.)

Recency and eviction: whole segments, least recently used first. A write
sets a segment's modification time, a hit sets it to now (at most once per
``touch_interval``), so eviction works whether or not the filesystem keeps
access times. Eviction runs on a background thread (:class:`_Sweeper`),
never under a reader: when the bytes written push the estimate of the
directory's size over the budget, the sweeper lists the directory and
removes the least recently used segments until the allocated bytes are back
under :data:`LOW_WATER` of the budget.

Failure: a block that does not verify (a flipped bit, a slot cut short by a
truncated file, another key's header) is dropped (its header cleared) and
read as a miss, so it is fetched again and rewritten; a segment whose
header does not verify, or that is shorter than its table, is removed
whole. A directory that cannot be created or written, or a full disk,
switches writes off with one warning: the mount goes on with the memory
cache (and whatever the directory already holds), never with EIO.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from refmount.read.tiers.base import (
    HEADER_SIZE,
    TierFigures,
    TierKey,
    announced_length,
    frame_header,
    verifies,
)

log = logging.getLogger("refmount.cache.disk")

#: The sweeper brings the directory down to this share of the budget, so it does not run on every write.
LOW_WATER = 0.9
#: Temporary files older than this are left over from a crash and removed by the sweeper.
STALE_TEMPORARY = 3600.0
LAYOUT = "refmount-segments-v1"
#: Layouts earlier versions wrote into DIR: their files count against no budget, so they are removed.
EARLIER_LAYOUTS = ("refmount-blocks-v1",)
#: Bytes of an object one segment covers (fewer when the block size does not divide it).
SEGMENT_BYTES = 8 << 20
#: Most blocks in one segment, which bounds its table (52 bytes a slot) for small block sizes.
MAX_SLOTS = 1024
#: The data slots start on a page boundary, so a block of whole pages reads whole pages.
PAGE = 4096

_SEGMENT_MAGIC = b"RMSEGMT1"
_SEGMENT_HEADER = struct.Struct(">8s32sQI")  # magic, segment digest, block size, slots
_EMPTY = bytes(HEADER_SIZE)
#: Errors of os.link that mean "this filesystem has no hard links", not "cannot write".
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


@dataclass(frozen=True, slots=True)
class SegmentShape:
    """Where things are in a segment of blocks of ``block_size``: a pure function of it and the slot count."""

    block_size: int
    slots: int

    @property
    def table_end(self) -> int:
        """The end of the block headers: a segment file shorter than this was cut short."""
        return _SEGMENT_HEADER.size + self.slots * HEADER_SIZE

    @property
    def data_start(self) -> int:
        """The offset of slot 0's bytes."""
        return -(-self.table_end // PAGE) * PAGE

    def header_at(self, slot: int) -> int:
        """The offset of slot ``slot``'s block header."""
        return _SEGMENT_HEADER.size + slot * HEADER_SIZE

    def data_at(self, slot: int) -> int:
        """The offset of slot ``slot``'s bytes."""
        return self.data_start + slot * self.block_size


def segment_shape(block_size: int, segment_bytes: int = SEGMENT_BYTES) -> SegmentShape:
    """The shape of the segments of a directory's blocks of ``block_size`` (at least one slot)."""
    return SegmentShape(block_size, max(1, min(MAX_SLOTS, segment_bytes // block_size)))


@dataclass(frozen=True, slots=True)
class Location:
    """Where one block lives: its segment file and the offsets of its header and of its bytes in it."""

    path: Path
    header: int
    data: int


@functools.lru_cache(maxsize=4096)
def _segment_digest(url: str, version: str, block_size: int, slots: int, number: int) -> bytes:
    """32 bytes naming one segment; a different shape (block size, slots) is a different segment."""
    identity = "\0".join(("segment", url, version, str(block_size), str(slots), str(number)))
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=32).digest()


class DiskTier:
    """:class:`~refmount.read.tiers.base.CacheTier` over a local directory."""

    name = "disk"

    def __init__(self, directory: str | os.PathLike[str], capacity: int, *, touch_interval: float = 10.0,
                 sweep_interval: float = 300.0, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.root = self.directory / LAYOUT
        self.capacity = capacity
        self.touch_interval = touch_interval
        self.segment_bytes = segment_bytes
        self._figures = TierFigures()
        self._lock = threading.Lock()
        self._used = 0
        self._writable = self._prepare()
        self._sweeper = _Sweeper(self, sweep_interval)
        self._sweeper.start()

    # -- CacheTier -----------------------------------------------------------

    def get(self, key: TierKey) -> bytes | None:
        for _, data in self.get_many([key]):
            return data
        return None

    def get_many(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """Open each segment once, start the kernel reading all wanted bytes, then yield block by block."""
        by_segment: dict[bytes, list[tuple[int, TierKey]]] = {}
        for key in keys:
            digest, slot = self._place(key)
            by_segment.setdefault(digest, []).append((slot, key))
        with contextlib.ExitStack() as opened:
            segments: list[tuple[bytes, int, SegmentShape, list[tuple[int, TierKey]]]] = []
            for digest, wanted in by_segment.items():
                try:
                    descriptor = os.open(self._path(digest), os.O_RDONLY)
                except OSError as exc:
                    if not isinstance(exc, FileNotFoundError):
                        self._figures.add("errors")
                        log.debug("disk cache: cannot open %s: %s", self._path(digest), exc)
                    self._figures.add("misses", len(wanted))
                    continue
                opened.callback(os.close, descriptor)
                shape = self._shape(wanted[0][1].block_size)
                wanted.sort(key=lambda pair: pair[0])
                _advise(descriptor, 0, shape.table_end)
                first, last = shape.data_at(wanted[0][0]), shape.data_at(wanted[-1][0]) + shape.block_size
                # As much again beyond, within the segment: a sequential reader's next lookup is then on its way.
                _advise(descriptor, first, min(2 * last - first, shape.data_at(shape.slots)) - first)
                segments.append((digest, descriptor, shape, wanted))
            for digest, descriptor, shape, wanted in segments:
                yield from self._read_segment(digest, descriptor, shape, wanted)

    def put(self, key: TierKey, data: bytes) -> None:
        if not self._writable:
            self._figures.add("dropped")
            return
        digest, slot = self._place(key)
        shape = self._shape(key.block_size)
        if len(data) > shape.block_size:  # not a block of this size: nowhere to keep it
            self._figures.add("dropped")
            return
        try:
            opened = self._open_for_writing(digest, shape)
            if opened is None:
                self._figures.add("dropped")
                return
            descriptor, created = opened
            try:
                _write_all(descriptor, data, shape.data_at(slot))
                _write_all(descriptor, frame_header(key, data), shape.header_at(slot))  # last: the block is whole
            finally:
                os.close(descriptor)
        except OSError as exc:
            self._figures.add("errors")
            self._stop_writing(exc)
            return
        self._figures.add("bytes_written", len(data))
        with self._lock:
            self._used += len(data) + (shape.data_start if created else 0)
            over = self._used > self.capacity
        if over:
            self._sweeper.wake()

    def figures(self) -> dict[str, int]:
        figures = self._figures.snapshot()
        with self._lock:
            figures["stored_bytes"] = self._used
        figures["capacity"] = self.capacity
        return figures

    def flush(self, timeout: float) -> bool:
        return True  # writes are done by the time put returns

    def close(self) -> None:
        self._sweeper.stop()

    # -- for tools and tests that look at the directory ---------------------

    def location(self, key: TierKey) -> Location:
        """Where ``key``'s block is (or would be) kept."""
        digest, slot = self._place(key)
        shape = self._shape(key.block_size)
        return Location(self._path(digest), shape.header_at(slot), shape.data_at(slot))

    # -- eviction (called by the sweeper) ----------------------------------

    def sweep(self) -> int:
        """List the directory, remove the least recently used segments down to the low water mark; bytes removed."""
        entries: list[tuple[float, int, str]] = []
        total = 0
        now = time.time()
        for folder, _, names in os.walk(self.root):
            temporary = os.path.basename(folder) == "tmp"
            for name in names:
                path = os.path.join(folder, name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                if temporary:
                    if now - info.st_mtime > STALE_TEMPORARY:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                    continue
                allocated = _allocated(info)
                entries.append((max(info.st_mtime, info.st_atime), allocated, path))
                total += allocated
        removed = 0
        if total > self.capacity:
            target = int(self.capacity * LOW_WATER)
            entries.sort()
            for _, size, path in entries:
                if total - removed <= target:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += size
        with self._lock:
            self._used = total - removed
        if removed:
            log.debug("disk cache: evicted %d bytes, %d bytes kept", removed, total - removed)
        return removed

    # -- internals -----------------------------------------------------------

    def _shape(self, block_size: int) -> SegmentShape:
        return segment_shape(block_size, self.segment_bytes)

    def _place(self, key: TierKey) -> tuple[bytes, int]:
        """The digest of the segment holding ``key``'s block, and its slot there."""
        slots = self._shape(key.block_size).slots
        number, slot = divmod(key.index, slots)
        return _segment_digest(key.url, key.version, key.block_size, slots, number), slot

    def _path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / name[:2] / name

    def _segment_header(self, digest: bytes, shape: SegmentShape) -> bytes:
        return _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, digest, shape.block_size, shape.slots)

    def _read_segment(self, digest: bytes, descriptor: int, shape: SegmentShape,
                      wanted: list[tuple[int, TierKey]]) -> Iterator[tuple[TierKey, bytes]]:
        path = self._path(digest)
        try:
            info = os.fstat(descriptor)
            table = os.pread(descriptor, shape.table_end, 0)
        except OSError as exc:
            self._figures.add("errors")
            self._figures.add("misses", len(wanted))
            log.debug("disk cache: cannot read %s: %s", path, exc)
            return
        if len(table) < shape.table_end or not table.startswith(self._segment_header(digest, shape)):
            self._figures.add("corrupt")
            self._figures.add("misses", len(wanted))
            log.warning("disk cache: segment %s does not verify (corrupt or cut short); removed, its blocks are "
                        "fetched again", path)
            self._remove_segment(path, info)
            return
        if time.time() - info.st_mtime > self.touch_interval:
            try:
                os.utime(descriptor)
            except OSError:
                pass  # a read-only directory: the data is still good
        for slot, key in wanted:
            at = shape.header_at(slot)
            header = table[at : at + HEADER_SIZE]
            if header == _EMPTY:
                self._figures.add("misses")
                continue
            length = announced_length(header)
            data = b""
            if length is not None and length <= shape.block_size:
                try:
                    data = os.pread(descriptor, length, shape.data_at(slot))
                except OSError as exc:
                    self._figures.add("errors")
                    self._figures.add("misses")
                    log.debug("disk cache: cannot read %s: %s", path, exc)
                    continue
            if not verifies(key, header, data):
                self._figures.add("corrupt")
                self._figures.add("misses")
                log.warning("disk cache: block %d of %s does not verify (corrupt or cut short); dropped, the block "
                            "is fetched again", slot, path)
                self._clear_slot(path, at)
                continue
            self._figures.add("hits")
            self._figures.add("bytes_read", len(data))
            yield key, data

    def _open_for_writing(self, digest: bytes, shape: SegmentShape) -> tuple[int, bool] | None:
        """A descriptor of the segment open for writing (made if absent) and whether it was made here.

        None if the sweeper of some daemon removed it each time it was made (keep nothing this time).
        """
        path = self._path(digest)
        created = False
        for _ in range(3):
            try:
                return os.open(path, os.O_WRONLY), created
            except FileNotFoundError:
                created = self._create(path, digest, shape) or created
        return None

    def _create(self, path: Path, digest: bytes, shape: SegmentShape) -> bool:
        """Make an empty segment at ``path`` unless one is there: whether this call made it."""
        path.parent.mkdir(exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{digest.hex()[:16]}.")
        try:
            try:
                _write_all(descriptor, self._segment_header(digest, shape), 0)
                os.ftruncate(descriptor, shape.data_start)  # the empty table and padding: a hole
            finally:
                os.close(descriptor)
            try:
                os.link(temporary, path)  # never over another daemon's segment
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                os.replace(temporary, path)  # no hard links here: a race may cost the other daemon its blocks
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _clear_slot(self, path: Path, at: int) -> None:
        """Mark a slot empty (its block is fetched again and rewritten); a read-only directory keeps it."""
        with contextlib.suppress(OSError):
            descriptor = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(descriptor, _EMPTY, at)
            finally:
                os.close(descriptor)

    def _remove_segment(self, path: Path, info: os.stat_result) -> None:
        """Remove the damaged segment read through ``info``, not one made since under the same name."""
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == info.st_ino:
                path.unlink()
                with self._lock:
                    self._used = max(0, self._used - _allocated(info))

    def _prepare(self) -> bool:
        """Create the layout; whether blocks can be written there (one warning if not)."""
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.TemporaryFile(dir=self.root / "tmp"):
                pass
        except OSError as exc:
            self._warn(exc)
            return False
        self._remove_earlier_layouts()
        return True

    def _remove_earlier_layouts(self) -> None:
        """Move an earlier version's layout out of the way at once and delete it in the background."""
        for name in EARLIER_LAYOUTS:
            old = self.directory / name
            if not old.is_dir() or old.is_symlink():
                continue
            doomed = self.directory / f".{name}.removing.{os.getpid()}"  # outside the layout: never swept as segments
            try:
                old.rename(doomed)
            except OSError as exc:
                log.warning("disk cache %s: cannot remove the earlier layout %s: %s", self.directory, name,
                            exc.strerror or exc)
                continue
            log.info("disk cache %s: removing blocks stored in the earlier layout %s", self.directory, name)
            threading.Thread(target=shutil.rmtree, args=(doomed,), kwargs={"ignore_errors": True},
                             name="refmount-disk-cleanup", daemon=True).start()

    def _stop_writing(self, exc: OSError) -> None:
        with self._lock:
            was_writable, self._writable = self._writable, False
        if was_writable:
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        log.warning("disk cache %s: cannot write blocks (%s); continuing with the memory cache only",
                    self.directory, reason)


def _write_all(descriptor: int, data: bytes, offset: int) -> None:
    """``pwrite`` until every byte is written (a nearly full disk may take part of a write, then refuse)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "the disk took no bytes of a write")
        view = view[written:]
        offset += written


def _advise(descriptor: int, offset: int, length: int) -> None:
    """Ask the kernel to start reading a span now; only a hint (not every platform has it)."""
    if length > 0 and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(descriptor, offset, length, os.POSIX_FADV_WILLNEED)


def _allocated(info: os.stat_result) -> int:
    """Bytes a file takes on disk (holes excluded); its length where the platform does not say."""
    blocks = getattr(info, "st_blocks", None)
    return info.st_size if blocks is None else blocks * 512


class _Sweeper:
    """The thread that keeps a disk tier within its budget: woken when over it, and every ``interval`` seconds."""

    def __init__(self, tier: DiskTier, interval: float) -> None:
        self._tier = tier
        self._interval = interval
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refmount-disk-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._tier.sweep()  # the first pass also learns how much an earlier mount left
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried; reads must not notice
                log.warning("disk cache: sweep of %s failed: %s", self._tier.directory, exc)
            self._wake.wait(self._interval)
            self._wake.clear()
