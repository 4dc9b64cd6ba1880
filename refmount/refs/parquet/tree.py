"""The tree of a Parquet reference set, read lazily: metadata up front, record files on demand.

Mounting reads ``.zmetadata`` only, so a set of any size mounts in the time of
one small GET. A chunk lookup fetches the one record file holding it into an
LRU holding at most ``record_cache`` record files, and reads only its own row
from the file's pages (:class:`.rows.LazyRecord`: 0.1-1 ms, where decoding
all 100,000 rows of a record took ~8 ms); a record that keeps being asked, or
that the row lookup cannot read, is decoded whole (:class:`.records.Record`:
URLs dictionary-encoded and interned, offsets and sizes in numpy arrays). A
stat of one chunk therefore fetches at most one record file, and a record
file is fetched once however many threads ask for it at the same time
(:class:`refmount.once.Flights`). Listing a field walks its record files one
at a time, decoded whole (the next one in the background), and streams the
names of the rows that exist.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import LRUCache

from refmount.errors import BackendError, InvalidReferences, NotADirectory, NotFound
from refmount.once import Flights
from refmount.refs.keys import ZMETADATA, validate_key
from refmount.refs.model import Inline, Range, Reference
from refmount.refs.parquet.layout import (
    DEFAULT_RECORD_CACHE,
    chunk_grid,
    chunk_number,
    metadata_bytes,
    parse_zmetadata,
    record_path,
)
from refmount.refs.parquet.records import MISSING, MissingRecord, Record, read_record, use_system_allocator
from refmount.refs.parquet.rows import DECODE_AFTER, LazyRecord, Unsupported
from refmount.refs.relative import resolve_relative
from refmount.refs.targets import control_character_problem
from refmount.refs.tree import Dir, File, Node, implied_directories

log = logging.getLogger("refmount.refs.parquet")

__all__ = ["ParquetNamespace"]

RecordKey = tuple[str, int]  # (field, record number)
Held = Record | LazyRecord | MissingRecord  # a record file as the cache holds it


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    grid: tuple[int, ...]
    total: int
    records: int


#: Most axis labels (``"0"``, ``"1"``, ...) a listing builds up front for the fast C path; axes
#: beyond it are counted lazily, so a listing never holds a list as long as the grid.
_LABELS_BUILT = 1 << 16


def grid_names(grid: tuple[int, ...]) -> Iterator[str]:
    """Every chunk name of ``grid`` in row-major order (``0.0``, ``0.1``, ...), generated lazily.

    The inner axes whose labels together are few are listed by
    ``itertools.product`` over prebuilt labels (no Python frame per name);
    any outer axis is counted with ``range`` and prefixes the inner names, so
    memory stays bounded by :data:`_LABELS_BUILT` labels whatever the grid.
    """
    inner = len(grid)
    built = 0
    while inner > 0 and built + grid[inner - 1] <= _LABELS_BUILT:
        inner -= 1
        built += grid[inner]
    if inner == len(grid):  # the innermost axis alone is too long: count it
        inner = len(grid) - 1
        tail = grid[inner]

        def innermost() -> Iterator[str]:
            return map(str, range(tail))
    else:
        labels = [list(map(str, range(size))) for size in grid[inner:]]

        def innermost() -> Iterator[str]:
            return map(".".join, itertools.product(*labels))
    return _prefixed(grid[:inner], innermost)


def _prefixed(outer: tuple[int, ...], inner: Callable[[], Iterator[str]]) -> Iterator[str]:
    if not outer:
        return inner()
    rest = outer[1:]
    return itertools.chain.from_iterable(
        map(f"{index}.".__add__, _prefixed(rest, inner)) for index in range(outer[0])
    )


class _PrefetchFailed(Exception):
    """A background load failed; whoever waited for it loads the record itself and reports that failure."""


class ParquetNamespace:
    """The tree of a Parquet reference set; record files are loaded on demand.

    ``fs`` is an fsspec filesystem and ``root`` the set's directory on it.
    ``record_cache`` is how many record files are kept, lazily or decoded (least
    recently used first out); 0 keeps none, so every lookup reads its record
    file again. ``base`` is the directory relative paths in the record files
    resolve against (:func:`refmount.refs.relative.set_base` of the set's URL).
    """

    def __init__(
        self,
        fs: Any,
        root: str,
        zmetadata: bytes,
        *,
        shown: str | None = None,
        record_cache: int = DEFAULT_RECORD_CACHE,
        base: str | None = None,
    ) -> None:
        self.fs = fs
        self._base = base  # relative paths in record files resolve against it (the set's root)
        self.root = root.rstrip("/")
        self.shown = shown or self.root
        documents, self.record_size = parse_zmetadata(zmetadata, self.shown)
        self._meta: dict[str, bytes] = {ZMETADATA: bytes(zmetadata)}
        for key, document in documents.items():
            if not isinstance(key, str) or key == ZMETADATA:
                continue
            try:
                self._meta[key] = metadata_bytes(document)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidReferences(f"{self.shown}: metadata cannot be serialised: {exc}", key=key) from None

        files_in: dict[str, list[str]] = {}
        for key in self._meta:
            validate_key(key)
            parent, _, name = key.rpartition("/")
            files_in.setdefault(parent, []).append(name)
        subdirs = implied_directories(files_in, self._meta.__contains__, lambda directory: files_in[directory][0])
        self._children = {
            directory: tuple(sorted((*names, *files_in.get(directory, ())))) for directory, names in subdirs.items()
        }
        self._subdirs = {directory: len(names) for directory, names in subdirs.items()}
        self._fields: dict[str, _Field] = {}
        for key, document in documents.items():
            if isinstance(key, str) and (key == ".zarray" or key.endswith("/.zarray")):
                field = key[: -len(".zarray")].rstrip("/")
                if not field:
                    continue  # a root array has no record directory in this layout
                grid = chunk_grid(document, field)
                total = math.prod(grid)
                self._fields[field] = _Field(field, grid, total, math.ceil(total / self.record_size))
        if type(record_cache) is not int or record_cache < 0:
            raise ValueError(f"record_cache must be a non-negative number of record files, got {record_cache!r}")
        # One lock guards the records, the loads in flight, the URLs and the extents.
        self._flights: Flights[RecordKey, Held] = Flights()
        self._lock = self._flights.lock
        self._records: LRUCache[RecordKey, Held] = LRUCache(maxsize=record_cache)
        self._prefetcher: ThreadPoolExecutor | None = None
        self._urls: dict[str, str] = {}
        self._extents: dict[str, int] = {}
        self._handed: dict[str, set[RecordKey]] = {}  # URL -> records that handed it out row by row, not yet decoded
        self.records_loaded = 0
        use_system_allocator()

    # -- record files ----------------------------------------------------------

    def _intern(self, url: str) -> str:
        """One string per distinct URL of the record files, relative ones resolved against the set's root."""
        known = self._urls.get(url)
        if known is None:
            problem = control_character_problem(url)
            if problem is not None:
                raise InvalidReferences(problem)
            known = self._urls.setdefault(url, resolve_relative(url, self._base))
        return known

    def _record(self, field: _Field, number: int, *, whole: bool = False) -> Held:
        """The record file as held, from the cache or loaded once for every thread asking at the same time.

        ``whole``: a record loaded here is decoded whole straight away (one held lazily stays so).
        """
        key = (field.name, number)
        while True:
            with self._lock:
                record: Held | None = self._records.get(key)
                if record is not None:
                    return record
                waiting, _ = self._flights.claim_locked((key,))
            if not waiting:
                return self._produce(key, field, number, whole=whole)
            try:
                return waiting[key].result()
            except _PrefetchFailed:
                continue  # load it here, so the failure (if it repeats) is this caller's to report

    def _decoded(self, field: _Field, number: int) -> Record | MissingRecord:
        """The record file decoded whole (what a listing needs), from the bytes held when it is held lazily."""
        record = self._record(field, number, whole=True)
        return self._decode_held(field, number, record) if isinstance(record, LazyRecord) else record

    def _decode_held(self, field: _Field, number: int, lazy: LazyRecord) -> Record:
        """Decode a lazily held record from its bytes (no second fetch) and hold the decoded one in its place.

        Two threads may decode the same record at once; both results are equal and one is kept.
        """
        started = time.perf_counter()
        record = read_record(lazy.data, self._intern, lazy.where)
        self._grow_extents(record)
        key = (field.name, number)
        with self._lock:
            if self._records.get(key) is lazy:
                self._records[key] = record
        log.debug("decoded record file %s: %d rows in %.1f ms", lazy.where, record.rows,
                  (time.perf_counter() - started) * 1e3)
        return record

    def _produce(
        self, key: RecordKey, field: _Field, number: int, *, failure: type[Exception] | None = None, whole: bool = False
    ) -> Held:
        """Load a claimed record file, keep it (a cache of 0 keeps nothing) and hand it to its waiters.

        ``failure`` replaces the exception the waiters receive (the prefetch hands them
        :class:`_PrefetchFailed`, so they load it again themselves). ``whole`` decodes
        it whole straight away (a listing's prefetch) instead of holding it lazily.
        """
        try:
            record = self._load(field, number, whole=whole)
        except BaseException as exc:
            self._flights.fail((key,), failure() if failure is not None else exc)
            raise
        with self._lock:
            try:
                self._records[key] = record
            except ValueError:  # a cache of 0 record files: used once by its waiters
                pass
            self._flights.resolve_locked(key, record)
        return record

    def _prefetch(self, field: _Field, number: int) -> None:
        """Load a record file in the background; whoever asks for it meanwhile waits for this load.

        Only a listing prefetches (the next record file of the field it walks),
        and only when the cache can hold that record beside the one being listed.
        The key is claimed here, before the background thread runs, so the
        listing never loads the same record a second time.
        """
        key = (field.name, number)
        with self._lock:
            if self._records.maxsize < 2 or key in self._records or self._flights.in_flight(key):
                return
            self._flights.claim_locked((key,))
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="record-prefetch")
            prefetcher = self._prefetcher

        def load() -> None:
            try:
                self._produce(key, field, number, failure=_PrefetchFailed, whole=True)
            except Exception as exc:  # noqa: BLE001 - the listing loads it again itself and reports the failure
                log.debug("prefetch of %s record %d failed: %s", field.name, number, exc)

        try:
            prefetcher.submit(load)
        except RuntimeError:  # shutting down: the listing loads it itself
            self._flights.fail((key,), _PrefetchFailed())

    def _load(self, field: _Field, number: int, *, whole: bool = False) -> Held:
        """Fetch a record file; hold it lazily (its rows read one by one) unless ``whole`` or unreadable that way."""
        path = f"{self.root}/{record_path(field.name, number)}"
        where = f"{self.shown}/{record_path(field.name, number)}"
        started = time.perf_counter()
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            log.debug("record file %s does not exist: its chunks are absent", where)
            return MISSING
        except Exception as exc:  # noqa: BLE001 - any store failure is EIO for the chunk asked
            raise BackendError(f"could not read record file {where}: {type(exc).__name__}: {exc}") from None
        record: Record | LazyRecord | None = None
        if not whole:
            try:
                record = LazyRecord(data, where)
            except Unsupported as exc:
                log.debug("record file %s is decoded whole: %s", where, exc)
        if record is None:
            record = read_record(data, self._intern, where)
            self._grow_extents(record)
        del data
        with self._lock:
            self.records_loaded += 1
        log.debug("loaded record file %s: %d rows in %.1f ms (%s)", where, record.rows,
                  (time.perf_counter() - started) * 1e3, "whole" if isinstance(record, Record) else "by row")
        return record

    def _grow_extents(self, record: Record) -> None:
        ranged = (record.url_codes >= 0) & ((record.offsets != 0) | (record.sizes != 0))
        if record.raw_valid is not None:
            ranged &= ~record.raw_valid
        if not ranged.any():
            return
        ends = np.zeros(len(record.urls), dtype=np.int64)
        reaches = record.offsets[ranged].astype(np.int64) + record.sizes[ranged]  # int64: no uint32 overflow
        np.maximum.at(ends, record.url_codes[ranged], reaches)
        with self._lock:
            for code, end in enumerate(ends.tolist()):
                url = record.urls[code]
                if end > self._extents.get(url, 0):
                    self._extents[url] = end

    # -- queries -----------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """Metadata and directories from memory; a chunk loads (at most) its record file."""
        key = path.strip("/")
        data = self._meta.get(key)
        if data is not None:
            return File(key, Inline(data))
        names = self._children.get(key)
        if names is not None:
            return Dir(key, names)  # chunk files are listed by listdir only
        parent, _, name = key.rpartition("/")
        field = self._fields.get(parent)
        if field is None:
            raise NotFound(path)
        number = chunk_number(name, field.grid)
        if number is None:
            raise NotFound(path)
        ref = self._reference(field, number // self.record_size, number % self.record_size)
        if ref is None:
            raise NotFound(path)
        return File(key, ref)

    def _reference(self, field: _Field, number: int, row: int) -> Reference | None:
        """One row of a record file: read from its pages while held lazily, else from the decoded record."""
        record = self._record(field, number)
        if isinstance(record, LazyRecord):
            if record.lookups < DECODE_AFTER:
                try:
                    ref = record.reference(row, self._intern)
                except Unsupported as exc:
                    log.debug("row %d of record file %s is read from the decoded file: %s", row, record.where, exc)
                else:
                    if isinstance(ref, Range):
                        self._grow_extent(ref.url, ref.offset + ref.length)
                        with self._lock:
                            self._handed.setdefault(ref.url, set()).add((field.name, number))
                    return ref
            record = self._decode_held(field, number, record)
        return record.reference(row)

    def _grow_extent(self, url: str, end: int) -> None:
        with self._lock:
            if end > self._extents.get(url, 0):
                self._extents[url] = end

    def listdir(self, path: str) -> Iterator[str]:
        """Names in a directory; a field's chunk names stream record file by record file."""
        key = path.strip("/")
        names = self._children.get(key)
        if names is None:
            self.lookup(key)  # NotFound, unless it is a file
            raise NotADirectory(path)
        field = self._fields.get(key)
        return itertools.chain(names, self._chunk_names(field)) if field is not None else iter(names)

    def _chunk_names(self, field: _Field) -> Iterator[str]:
        """Chunk names of the rows that exist, one record file loaded at a time.

        Built from C iterators only (names from ``product``/``join``, rows
        kept by ``compress``, records joined by ``chain``), so no Python frame
        runs per name: a million-chunk listing costs about a tenth of a second
        here, and the rest is the kernel and FUSE.
        """
        names = grid_names(field.grid)

        def record_names(number: int) -> Iterator[str]:
            if number + 1 < field.records:
                self._prefetch(field, number + 1)  # decoded while this record's names are listed
            count = min(self.record_size, field.total - number * self.record_size)
            present = self._decoded(field, number).present(count)
            rows = itertools.islice(names, count)  # consumed in full before the next record's
            return rows if present.all() else itertools.compress(rows, present.tolist())

        return itertools.chain.from_iterable(map(record_names, range(field.records)))

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference): metadata, then each field's chunks record by record."""
        for key, data in self._meta.items():
            yield key, Inline(data)
        for field in self._fields.values():
            names = grid_names(field.grid)
            for number in range(field.records):
                count = min(self.record_size, field.total - number * self.record_size)
                record = self._decoded(field, number)
                for row, name in zip(range(count), names, strict=False):
                    ref = record.reference(row)
                    if ref is not None:
                        yield f"{field.name}/{name}", ref

    def subdirectory_count(self, path: str) -> int:
        return self._subdirs.get(path.strip("/"), 0)

    def extent(self, url: str) -> int:
        """The furthest referenced byte of ``url`` among the record files decoded and rows read so far.

        Knowing the true maximum over the whole set would mean reading every
        record file at mount time, which is what this layout exists to avoid;
        asking the store for the object size instead would add a HEAD per
        object and read past the referenced bytes. The value used here is
        exact for everything loaded, only grows, and always covers the
        reference being read, because resolving that reference read its row
        (or decoded its record) first.

        A record read row by row is decoded whole here, the first time a URL
        one of its rows pointed into is read: the block cache cuts blocks at
        this extent and refetches a block cut short, and extents growing a row
        at a time would have it refetch a block for every small chunk in it,
        and stop its readahead at the chunk being read. A stat stays a row
        read; the first read of an object costs the decode a stat used to. The block cache refetches a block cut at an earlier,
        shorter extent when a later read needs more of it, so growth is safe.
        """
        if url in self._handed:
            self._cover(url)
        return self._extents.get(url, 0)

    def _cover(self, url: str) -> None:
        """Decode the records still held row by row that handed ``url`` out (an evicted one is not fetched again)."""
        with self._lock:
            keys = self._handed.pop(url, set())
            held = [(key, record) for key in keys if isinstance(record := self._records.get(key), LazyRecord)]
        for (name, number), record in held:
            self._decode_held(self._fields[name], number, record)

    @property
    def urls(self) -> Iterable[str]:
        """URLs seen in the record files decoded and rows read so far (all of them would need every record)."""
        with self._lock:
            return list(dict.fromkeys(self._urls.values()))

    def __len__(self) -> int:
        """Metadata keys plus chunk slots: an upper bound, as fsspec counts (missing rows included)."""
        return len(self._meta) + sum(field.total for field in self._fields.values())

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.iter_references())

    @property
    def directory_count(self) -> int:
        return len(self._children)

    @property
    def records_cached(self) -> int:
        """How many record files are held now, lazily or decoded (at most ``record_cache``)."""
        with self._lock:
            return len(self._records)

    @property
    def record_files(self) -> int:
        """How many record files the set has at most."""
        return sum(field.records for field in self._fields.values())
