"""The disk tier: blocks kept in a local directory, across unmounts and reboots, within a byte budget.

Layout: ``DIR/refmount-blocks-v1/XY/NAME`` where NAME is the block's
:attr:`~refmount.read.tiers.base.TierKey.name` (a hash of URL, version,
block size and index) and XY its first two characters, so no directory
holds more than a small share of the files. Each file is one framed block
(:func:`~refmount.read.tiers.base.frame`).

Writes go to a unique temporary file in ``DIR/refmount-blocks-v1/tmp`` and
are renamed into place, so a reader sees a whole file or none, and several
daemons may share one directory: names are the same on every daemon for the
same bytes, a rename over an existing file replaces it atomically, and a
file another daemon evicts while it is being read stays readable through the
open descriptor. (What sharing does not give: one budget. Each daemon sweeps
the directory down to its own ``disk_cache_size``; give them the same size.)

Recency: a hit sets the file's modification time to now (at most once per
``touch_interval``), so eviction works whether or not the filesystem keeps
access times. Eviction runs on a background thread (:class:`_Sweeper`),
never under a reader: when the bytes written push the estimate of the
directory's size over the budget, the sweeper lists the directory and
removes the least recently used files until it is back under
:data:`LOW_WATER` of the budget.

Failure: a file that does not verify is removed and read as a miss (the
block is fetched again). A directory that cannot be created or written,
or a full disk, switches writes off with one warning: the mount goes on
with the memory cache (and whatever the directory already holds), never
with EIO.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from refmount.read.tiers.base import TierFigures, TierKey, frame, unframe

log = logging.getLogger("refmount.cache.disk")

#: The sweeper brings the directory down to this share of the budget, so it does not run on every write.
LOW_WATER = 0.9
#: Temporary files older than this are left over from a crash and removed by the sweeper.
STALE_TEMPORARY = 3600.0
LAYOUT = "refmount-blocks-v1"
#: Files of one lookup read at once: a cold disk (and the kernel's queue) serves several in parallel.
READERS = 4


class DiskTier:
    """:class:`~refmount.read.tiers.base.CacheTier` over a local directory."""

    name = "disk"

    def __init__(self, directory: str | os.PathLike[str], capacity: int, *, touch_interval: float = 10.0,
                 sweep_interval: float = 300.0) -> None:
        self.directory = Path(directory)
        self.root = self.directory / LAYOUT
        self.capacity = capacity
        self.touch_interval = touch_interval
        self._figures = TierFigures()
        self._lock = threading.Lock()
        self._used = 0
        self._writable = self._prepare()
        self._readers = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="refmount-disk-read")
        self._sweeper = _Sweeper(self, sweep_interval)
        self._sweeper.start()

    # -- CacheTier -----------------------------------------------------------

    def get(self, key: TierKey) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                stored = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            self._figures.add("misses")
            return None
        except OSError as exc:
            self._figures.add("errors")
            self._figures.add("misses")
            log.debug("disk cache: cannot read %s: %s", path, exc)
            return None
        data = unframe(key, stored)
        if data is None:
            self._figures.add("corrupt")
            self._figures.add("misses")
            log.warning("disk cache: %s does not verify (corrupt or cut short); removed, the block is fetched again",
                        path)
            self._remove(path, len(stored))
            return None
        if time.time() - modified > self.touch_interval:
            try:
                os.utime(path)
            except OSError:
                pass  # evicted meanwhile, or a read-only directory: the data is still good
        self._figures.add("hits")
        self._figures.add("bytes_read", len(data))
        return data

    def get_many(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """Read a few files ahead on a small pool (a cold disk serves several at once), yielding in order."""
        wanted = list(keys)
        answers: Iterable[bytes | None] = map(self.get, wanted)
        if len(wanted) > 1:
            with contextlib.suppress(RuntimeError):  # closed: read them one by one
                answers = self._readers.map(self.get, wanted)
        for key, data in zip(wanted, answers, strict=True):
            if data is not None:
                yield key, data

    def put(self, key: TierKey, data: bytes) -> None:
        if not self._writable:
            self._figures.add("dropped")
            return
        path = self._path(key)
        stored = frame(key, data)
        try:
            path.parent.mkdir(exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{key.name[:16]}.")
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(stored)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            self._figures.add("errors")
            self._stop_writing(exc)
            return
        self._figures.add("bytes_written", len(data))
        with self._lock:
            self._used += len(stored)
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
        self._readers.shutdown(wait=False, cancel_futures=True)

    # -- eviction (called by the sweeper) ----------------------------------

    def sweep(self) -> int:
        """List the directory, remove the least recently used files down to the low water mark; bytes removed."""
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
                entries.append((max(info.st_mtime, info.st_atime), info.st_size, path))
                total += info.st_size
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

    def _path(self, key: TierKey) -> Path:
        name = key.name
        return self.root / name[:2] / name

    def _prepare(self) -> bool:
        """Create the layout; whether blocks can be written there (one warning if not)."""
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.TemporaryFile(dir=self.root / "tmp"):
                pass
        except OSError as exc:
            self._warn(exc)
            return False
        return True

    def _stop_writing(self, exc: OSError) -> None:
        with self._lock:
            was_writable, self._writable = self._writable, False
        if was_writable:
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        log.warning("disk cache %s: cannot write blocks (%s); continuing with the memory cache only",
                    self.directory, reason)

    def _remove(self, path: Path, size: int) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
            with self._lock:
                self._used = max(0, self._used - size)


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

