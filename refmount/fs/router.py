"""Many reference sets under one mount, loaded lazily, unloaded when idle, reloaded atomically.

A mount serves either one reference set at its root, or a *collection*: a
directory or URL prefix holding many sets (kerchunk JSON files, possibly
compressed, and Parquet reference directories), each shown as a
subdirectory named after it (``era5.json`` -> ``era5/``).

Lifecycle of a set in a collection. Listing the mount root never loads a
set: its subdirectories are synthesised from the listing of the source.
The first lookup inside a set loads it (once, whoever asks at the same
time waits for the same load) and builds a :class:`RefFilesystem` over the
process-wide cache and backend, so there is still one memory budget for the
whole mount. A set nobody has touched for ``idle_unload`` seconds and that
has no open file is dropped again. A set that fails to load is shown as a
directory whose contents answer EIO, with the reason logged once; its
neighbours are unaffected and the load is retried after a pause or a reload.

Reload (SIGHUP, ``refmount reload``) lists the source again: new sets
appear, removed sets disappear, and a set whose fingerprint (size, ETag or
mtime) changed is rebuilt and swapped in with one reference assignment.
Open files hold the filesystem generation they were opened on, so they keep
reading the data they opened; new opens see the new generation. A changed
set that fails to load keeps serving its previous version (an operator's
bad upload must not take data away from running jobs) and the failure is
logged and counted.

Every set, JSON or Parquet, is opened by :func:`refmount.refs.open.open_reference_set`,
the same entry point ``refmount inspect`` uses; it detects the format itself.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from refmount.errors import (
    InvalidReferences,
    IsADirectory,
    NoAttribute,
    NotFound,
    ReadOnly,
    RefmountError,
)
from refmount.fs.filesystem import RefFilesystem
from refmount.fs.served import UNKNOWN, Entry, Listing, TreeOwner, statfs_figures
from refmount.metrics import Metrics
from refmount.read.ranges import Part
from refmount.refs.collection import SetSource
from refmount.refs.tree import inode_of
from refmount.urls import redact_url

log = logging.getLogger("refmount.sets")

#: Seconds before a set that failed to load is tried again on access.
RETRY_FAILED_AFTER = 30.0


# -- one set -------------------------------------------------------------------


class SetSlot:
    """One reference set's current generation (or failure), loaded on demand."""

    def __init__(self, source: SetSource, build: Callable[[SetSource], RefFilesystem]) -> None:
        self.source = source
        self._build = build
        self._lock = threading.Lock()
        self.fs: RefFilesystem | None = None
        self.error: str | None = None
        self._failed_at = 0.0
        self.last_used = time.monotonic()
        self.open_files = 0

    def get(self) -> RefFilesystem:
        """The loaded set, loading it first if needed; InvalidReferences (EIO) if it cannot load."""
        self.last_used = time.monotonic()
        fs = self.fs
        if fs is not None:
            return fs
        with self._lock:
            if self.fs is not None:
                return self.fs
            if self.error is not None and time.monotonic() - self._failed_at < RETRY_FAILED_AFTER:
                raise InvalidReferences(f"reference set {self.source.label} is unavailable: {self.error}")
            try:
                self.fs = self._build(self.source)
            except Exception as exc:  # noqa: BLE001 - one broken set must not affect the others
                self.error = str(exc) if isinstance(exc, RefmountError) else f"{type(exc).__name__}: {exc}"
                self._failed_at = time.monotonic()
                log.error("reference set %s failed to load: %s", self.source.label, self.error)
                raise InvalidReferences(f"reference set {self.source.label} is unavailable: {self.error}") from None
            self.error = None
            return self.fs

    def unload(self) -> None:
        with self._lock:
            fs, self.fs = self.fs, None
        if fs is not None:
            fs.close()

    @property
    def loaded(self) -> bool:
        return self.fs is not None


# -- the tree the kernel sees -----------------------------------------------------


@dataclass
class ReloadResult:
    ok: bool
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    message: str = ""

    def describe(self) -> str:
        if not self.ok:
            return f"reload failed: {self.message}"
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed),
                  ("kept old version of", self.failed)) if names]
        return "reloaded: " + ("; ".join(parts) if parts else "no changes")


@dataclass(frozen=True)
class _OpenFile:
    """What a router handle stands for: the generation it was opened on and its handle there."""

    slot: SetSlot
    fs: RefFilesystem
    handle: int
    path: str  # inside the set


class SetRouter:
    """A :class:`refmount.fs.served.ServedTree` over one set at the root or many sets as subdirectories.

    Handles are numbered here and remember the generation they were opened
    on, which is what keeps open files reading their data across a reload.
    """

    def __init__(
        self,
        source: str,
        *,
        collection: bool,
        build: Callable[[SetSource], RefFilesystem],
        owner: TreeOwner,
        metrics: Metrics,
        list_sets: Callable[[], dict[str, SetSource]],
        idle_unload: float = 0.0,
    ) -> None:
        self.source = source
        self.collection = collection
        self.owner = owner
        self.metrics = metrics
        self._build = build
        self._list_sets = list_sets
        self.idle_unload = idle_unload
        self._slots: dict[str, SetSlot] = {}
        self._handles: dict[int, _OpenFile] = {}
        self._handle_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.mtime = time.time()
        self.generation = 0
        self.last_reload: ReloadResult | None = None
        self._stop = threading.Event()
        metrics.gauge("open_handles", lambda: len(self._handles))
        metrics.gauge("sets", lambda: len(self._slots))
        metrics.gauge("sets_loaded", lambda: sum(1 for slot in list(self._slots.values()) if slot.loaded))

    # -- start, reload, idle ---------------------------------------------------

    def start(self) -> None:
        """List (collection) or load (single set) once; a single set that fails fails the mount."""
        sets = self._list_sets()
        self._slots = {name: SetSlot(entry, self._build) for name, entry in sets.items()}
        if not self.collection:
            self._slots[""].get()
        elif self.idle_unload > 0:
            threading.Thread(target=self._unload_idle, name="refmount-idle", daemon=True).start()

    def reload(self) -> ReloadResult:
        """Re-read the source and swap what changed; never leaves the tree half-updated."""
        with self._reload_lock:
            started = time.monotonic()
            try:
                listed = self._list_sets()
            except Exception as exc:  # noqa: BLE001 - a failed listing keeps the current tree
                result = ReloadResult(False, message=f"cannot list {redact_url(self.source)}: {type(exc).__name__}: {exc}")
                return self._finish(result, started)
            result = ReloadResult(True)
            slots = dict(self._slots)
            retired: list[SetSlot] = []
            for name in sorted(set(slots) - set(listed)):
                result.removed.append(name)
                retired.append(slots.pop(name))
            for name, entry in listed.items():
                slot = slots.get(name)
                if slot is None:
                    slots[name] = SetSlot(entry, self._build)
                    result.added.append(name)
                    continue
                if entry.fingerprint == slot.source.fingerprint and self.collection:
                    if slot.error is not None:
                        slots[name] = SetSlot(entry, self._build)  # retry a broken set on reload
                    continue
                if not slot.loaded:
                    slots[name] = SetSlot(entry, self._build)
                    if entry.fingerprint != slot.source.fingerprint:
                        result.changed.append(name)
                    continue
                try:
                    fresh = self._build(entry)
                except Exception as exc:  # noqa: BLE001 - keep serving the previous version
                    log.error("reload of reference set %s failed, keeping the previous version: %s", entry.label, exc)
                    result.failed.append(name or "/")
                    continue
                if entry.fingerprint != slot.source.fingerprint or not self.collection:
                    replacement = SetSlot(entry, self._build)
                    replacement.fs = fresh
                    retired.append(slot)
                    slots[name] = replacement
                    result.changed.append(name or "/")
            if result.failed and not self.collection:
                result.ok = False
                result.message = "the reference set could not be loaded; the previous version is still served"
            self._slots = slots  # one assignment: lookups see the old tree or the new one
            self.mtime = time.time()
            for slot in retired:
                # Open files keep their generation: a closed Reader still serves demand reads,
                # it only stops starting readahead.
                slot.unload()
            return self._finish(result, started)

    def _finish(self, result: ReloadResult, started: float) -> ReloadResult:
        self.generation += 1
        self.last_reload = result
        self.metrics.add("reloads" if result.ok else "reload_failures")
        level = logging.INFO if result.ok else logging.ERROR
        log.log(level, "%s (%.2f s)", result.describe(), time.monotonic() - started)
        return result

    def _unload_idle(self) -> None:
        interval = max(0.2, min(30.0, self.idle_unload / 4))
        while not self._stop.wait(interval):
            now = time.monotonic()
            for name, slot in list(self._slots.items()):
                if slot.loaded and slot.open_files == 0 and now - slot.last_used > self.idle_unload:
                    slot.unload()
                    log.info("unloaded idle reference set %s", name)

    def close(self) -> None:
        self._stop.set()
        for slot in list(self._slots.values()):
            slot.unload()

    # -- routing ---------------------------------------------------------------

    def _route(self, path: str) -> tuple[SetSlot | None, str]:
        """The set serving ``path`` and the path inside it; (None, '') for a collection's root."""
        if not self.collection:
            return self._slots[""], path
        parts = path.strip("/").split("/", 1)
        if not parts[0]:
            return None, ""
        slot = self._slots.get(parts[0])
        if slot is None:
            raise NotFound(path)
        return slot, "/" + (parts[1] if len(parts) > 1 else "")

    def _dir_attrs(self, path: str, nlink: int) -> dict[str, Any]:
        return self.owner.dir_attrs(inode_of(path.strip("/")), nlink, self.mtime)

    def _shown(self, attrs: dict[str, Any], path: str) -> dict[str, Any]:
        """A set's attributes as the mount shows them: keys repeat across sets, inode numbers must not."""
        return {**attrs, "st_ino": inode_of(path.strip("/"))} if self.collection else attrs

    def getattr(self, path: str) -> dict[str, Any]:
        slot, inner = self._route(path)
        if slot is None:
            return self._dir_attrs("", 2 + len(self._slots))
        if self.collection and inner == "/" and not slot.loaded:
            return self._dir_attrs(path, 2)  # listing the root must not load every set
        return self._shown(slot.get().getattr(inner), path)

    def getattr_of_handle(self, handle: int, path: str) -> dict[str, Any]:
        """Attributes of an open file from the generation it was opened on, also after a reload removed it."""
        opened = self._handles.get(handle)
        if opened is None:
            return self.getattr(path)
        return self._shown(opened.fs.getattr_of_handle(opened.handle, opened.path), path)

    def readdir(self, path: str) -> Iterable[str]:
        slot, inner = self._route(path)
        if slot is None:
            return [".", "..", *sorted(self._slots)]
        return slot.get().readdir(inner)

    def listing(self, path: str) -> Listing:
        """A set's listing, its inode numbers those of the mount; a collection's root lists its sets bare.

        The root must not load the sets, so its entries go without attributes
        (the kernel looks up the few set directories it needs).
        """
        slot, inner = self._route(path)
        if slot is None:
            root = self._dir_attrs("", 2 + len(self._slots))
            entries = ((name, inode_of(name), stat.S_IFDIR, UNKNOWN) for name in sorted(self._slots))
            return Listing(root, root, entries)
        listing = slot.get().listing(inner)
        if not self.collection:
            return listing
        return Listing(listing.file_attrs, listing.dir_attrs, _renumbered(path.strip("/"), listing.entries))

    def statfs(self) -> dict[str, int]:
        """One set's figures as its own filesystem gives them; a collection adds its root, and counts a
        set not loaded yet as the one directory it shows."""
        files = sum(_node_count(slot.fs) for slot in list(self._slots.values()))
        return statfs_figures(files + 1 if self.collection else files)

    def access(self, path: str, mode: int) -> None:
        slot, inner = self._route(path)
        if slot is None or (self.collection and inner == "/" and not slot.loaded):
            if mode & os.W_OK:
                raise ReadOnly(path)
            return
        slot.get().access(inner, mode)

    def open(self, path: str, flags: int) -> int:
        slot, inner = self._route(path)
        if slot is None:
            raise IsADirectory(path)
        fs = slot.get()
        inner_handle = fs.open(inner, flags)
        with self._lock:
            handle = next(self._handle_ids)
            self._handles[handle] = _OpenFile(slot, fs, inner_handle, inner)
            slot.open_files += 1
        return handle

    def read(self, handle: int, size: int, offset: int, path: str | None = None) -> bytes:
        return b"".join(self.read_parts(handle, size, offset, path))

    def read_parts(self, handle: int, size: int, offset: int, path: str | None = None) -> list[Part]:
        opened = self._handles.get(handle)
        if opened is None:
            slot, inner = self._route(path or "")
            if slot is None:
                raise IsADirectory(path or "/")
            return slot.get().read_parts(-1, size, offset, inner)
        opened.slot.last_used = time.monotonic()
        return opened.fs.read_parts(opened.handle, size, offset, opened.path)

    def release(self, handle: int) -> None:
        with self._lock:
            opened = self._handles.pop(handle, None)
            if opened is not None:
                opened.slot.open_files -= 1
        if opened is not None:
            opened.fs.release(opened.handle)

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    def listxattr(self, path: str) -> list[str]:
        slot, inner = self._route(path)
        if slot is None or (self.collection and inner == "/"):
            return []
        return slot.get().listxattr(inner)

    def getxattr(self, path: str, name: str) -> bytes:
        slot, inner = self._route(path)
        if slot is None or (self.collection and inner == "/"):
            raise NoAttribute(f"{path}: {name}")
        return slot.get().getxattr(inner, name)

    # -- figures -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``refmount stats`` shows about the sets."""
        slots = dict(self._slots)
        broken = {name or "/": slot.error for name, slot in slots.items() if slot.error}
        figures: dict[str, Any] = {"generation": self.generation, "broken_sets": broken}
        if self.last_reload is not None:
            figures["last_reload"] = self.last_reload.describe()
        return figures


def _renumbered(directory: str, entries: Iterator[Entry]) -> Iterator[Entry]:
    """Entries of a set in a collection with the inode numbers :meth:`SetRouter.getattr` gives them."""
    for name, _, kind, count in entries:
        yield name, inode_of(f"{directory}/{name}"), kind, count


def _node_count(fs: RefFilesystem | None) -> int:
    return 1 if fs is None else fs.statfs()["f_files"]
