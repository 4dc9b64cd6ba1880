"""fsspec's Parquet reference layout, read lazily: metadata up front, record files on demand.

The layout (fsspec ``LazyReferenceMapper``, kerchunk ``refs_to_dataframe``)::

    ROOT/.zmetadata                 {"metadata": {key: JSON document}, "record_size": N}
    ROOT/<field>/refs.<r>.parq      N rows each: path, offset, size, raw

Every key that is not a chunk (``.zgroup``, ``x/.zarray``, ``x/.zattrs``) is a
JSON document inside ``.zmetadata``. A chunk key ``<field>/i.j.k`` is not
stored at all: its position in the field's chunk grid (row-major,
``ceil(shape / chunks)`` per axis) gives the flat chunk number ``n``, which
lives in record file ``n // N``, row ``n % N``. A row is

* missing (the chunk does not exist) when ``path`` and ``raw`` are both null,
  or when the record file itself does not exist;
* inline bytes when ``raw`` is not null;
* a whole object when ``offset`` and ``size`` are both 0 (as fsspec reads it);
* otherwise ``size`` bytes of ``path`` at ``offset``.

Mounting reads ``.zmetadata`` only, so a set of any size mounts in the time of
one small GET. A chunk lookup loads the one record file holding it into an
LRU of decoded records holding at most ``record_cache`` of them (URLs
dictionary-encoded and interned, offsets and sizes in numpy arrays); a stat
of one chunk therefore loads at most one record file. Listing a field walks
its record files one at a time (decoding the next one in the background) and
streams the names of the rows that exist.

Served bytes match fsspec's ``ReferenceFileSystem``: metadata documents as
``json.dumps(document)`` and ``.zmetadata`` as the file's own bytes. Chunk
names must be canonical (``0.12``, not ``0.012``) and inside the grid: fsspec
would map ``x/0.99`` outside the grid onto some other chunk's row; here it is
simply absent. Only the ``.`` dimension separator exists in this layout.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import LRUCache

from refmount.errors import BackendError, InvalidReferences, NotADirectory, NotFound
from refmount.refs.keys import validate_key
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.tree import Dir, File, Namespace, Node

log = logging.getLogger("refmount.refs.parquet")

__all__ = [
    "DEFAULT_RECORD_CACHE",
    "ParquetNamespace",
    "chunk_grid",
    "chunk_number",
    "is_meta_key",
    "parse_zmetadata",
    "record_path",
]

#: Decoded record files kept in memory (option ``record_cache``); each costs about 9 bytes per row.
DEFAULT_RECORD_CACHE = 32

ZMETADATA = ".zmetadata"


def is_meta_key(key: str) -> bool:
    """Keys kept as JSON in ``.zmetadata`` rather than in record files (fsspec's rule)."""
    return key.startswith(".z") or "/.z" in key


def record_path(field: str, record: int) -> str:
    """Path of a record file relative to the set's root."""
    return f"{field}/refs.{record}.parq"


def chunk_grid(zarray: Any, field: str) -> tuple[int, ...]:
    """Chunks per axis of an array; a 0-d array has one chunk, named ``0``."""
    try:
        shape, chunks = zarray["shape"], zarray["chunks"]
        grid = tuple(math.ceil(int(s) / int(c)) for s, c in zip(shape, chunks, strict=True))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise InvalidReferences(f"unusable .zarray shape/chunks ({type(exc).__name__}: {exc})", key=f"{field}/.zarray") from None
    return grid or (1,)


def chunk_number(name: str, grid: tuple[int, ...]) -> int | None:
    """Flat row-major chunk number of a chunk file name, or None if it is not a chunk of this grid."""
    parts = name.split(".")
    if len(parts) != len(grid):
        return None
    number = 0
    for part, size in zip(parts, grid, strict=False):
        if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            return None
        index = int(part)
        if index >= size:
            return None
        number = number * size + index
    return number


def parse_zmetadata(data: bytes, where: str) -> tuple[dict[str, Any], int]:
    """The metadata documents and record size of a ``.zmetadata`` file."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReferences(f"{where}: .zmetadata is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
        raise InvalidReferences(f"{where}: .zmetadata lacks a 'metadata' object (not a Parquet reference set)")
    record_size = document.get("record_size")
    if type(record_size) is not int or record_size <= 0:
        raise InvalidReferences(f"{where}: .zmetadata 'record_size' must be a positive integer, got {record_size!r}")
    return document["metadata"], record_size


def metadata_bytes(document: Any) -> bytes:
    """A metadata document as fsspec's ReferenceFileSystem serves it from ``.zmetadata``.

    fsspec serialises with ujson when it is installed (compact, ``/`` escaped)
    and with the standard library otherwise (``", "`` separators); the same
    choice here keeps a mount byte-identical to fsspec on the same machine.
    Documents ujson cannot encode (NaN) fall back to the standard library.
    """
    if _ujson is not None:
        try:
            return _ujson.dumps(document).encode()
        except (OverflowError, TypeError, ValueError):
            pass
    return json.dumps(document).encode()


try:  # the serialiser fsspec's reference module picks
    import ujson as _ujson
except ImportError:  # pragma: no cover - depends on the environment
    _ujson = None


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    grid: tuple[int, ...]
    total: int
    records: int


def _narrowest(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in uint32 when they all fit (half of int64), else unchanged."""
    if values.size == 0 or (int(values.min()) >= 0 and int(values.max()) < 2**32):
        return values.astype(np.uint32)
    return values


def _code_type(urls: int) -> type:
    """The smallest signed integer type holding URL ids 0..urls-1 and -1 for "no URL"."""
    if urls < 2**7:
        return np.int8
    if urls < 2**15:
        return np.int16
    return np.int32


def _valid(chunk: Any) -> np.ndarray:
    """Which rows of an Arrow array are not null, read off its validity bitmap.

    Record columns are read through their buffers only: Arrow's own
    conversions (``to_numpy``, compute functions) initialise machinery on
    first use that keeps some 30 MB of the daemon's memory resident for good.
    """
    if chunk.null_count == 0:
        return np.ones(len(chunk), dtype=bool)
    if chunk.null_count == len(chunk):
        return np.zeros(len(chunk), dtype=bool)
    bits = np.unpackbits(np.frombuffer(chunk.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[chunk.offset : chunk.offset + len(chunk)].astype(bool)


def _values(chunk: Any, fill: int) -> np.ndarray:
    """The integers of an Arrow integer array as int64, ``fill`` where null (see :func:`_valid`)."""
    import pyarrow as pa

    kind = chunk.type
    dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(kind) else 'u'}{kind.bit_width // 8}")
    if len(chunk) == chunk.null_count:
        return np.full(len(chunk), fill, dtype=np.int64)
    values = np.frombuffer(chunk.buffers()[1], dtype=dtype)[chunk.offset : chunk.offset + len(chunk)]
    if not chunk.null_count:
        return values.astype(np.int64, copy=False)  # a view of Arrow's buffer when already int64
    values = values.astype(np.int64)
    values[~_valid(chunk)] = fill
    return values


#: Columns of a record file that references are made of; anything else in it is not read.
RECORD_COLUMNS = ("path", "offset", "size", "raw")


class _Record:
    """One decoded record file: which rows exist and what they point at.

    Only numpy arrays of the narrowest integer type are kept (URL ids in one
    byte for up to 127 distinct URLs, offsets and sizes in four bytes when
    they fit): about 9 bytes per row. The Arrow table is kept only for the
    ``raw`` column of a record holding inline rows.
    """

    __slots__ = ("url_codes", "urls", "offsets", "sizes", "raw", "raw_valid", "nbytes", "rows")

    def __init__(self, table: Any, intern: Callable[[str], str], where: str) -> None:
        import pyarrow as pa

        self.rows = table.num_rows
        columns = set(table.column_names)
        self.url_codes, self.urls = np.full(self.rows, -1, np.int8), []
        if "path" in columns:
            path = table.column("path")
            kind = path.type.value_type if pa.types.is_dictionary(path.type) else path.type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise InvalidReferences(f"{where}: column 'path' has type {path.type}, not string")
            if not pa.types.is_null(path.type) and path.null_count < self.rows:
                self._decode_paths(path, intern)
        self.offsets = _narrowest(self._integers(table, "offset", where))
        self.sizes = _narrowest(self._integers(table, "size", where))
        self.raw = None
        self.raw_valid = None
        if "raw" in columns:
            raw = table.column("raw")
            if raw.null_count < len(raw):
                self.raw = raw
                self.raw_valid = np.concatenate([_valid(chunk) for chunk in raw.chunks])
        self.nbytes = 256 + self.url_codes.nbytes + self.offsets.nbytes + self.sizes.nbytes + (
            self.raw.nbytes + self.raw_valid.nbytes if self.raw is not None else 0
        )

    def _decode_paths(self, path: Any, intern: Callable[[str], str]) -> None:
        """URL ids per row (-1 for null) against one list of interned URLs, whatever the chunking."""
        import pyarrow as pa

        chunks = path.chunks
        if not pa.types.is_dictionary(path.type):  # read_dictionary makes this rare: encode once here
            import pyarrow.compute as pc

            chunks = [pc.dictionary_encode(path.combine_chunks().cast(pa.string()))]
        index: dict[str, int] = {}
        parts = []
        for chunk in chunks:
            local = [-1 if url is None else index.setdefault(intern(url), len(index))
                     for url in chunk.dictionary.to_pylist()]
            mapping = np.array(local + [-1], dtype=np.int32)  # the last slot maps null rows
            indices = _values(chunk.indices, fill=len(local))
            parts.append(mapping[indices])
        codes = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        self.urls = list(index)
        self.url_codes = codes.astype(_code_type(len(self.urls)))

    def _integers(self, table: Any, name: str, where: str) -> np.ndarray:
        import pyarrow as pa

        if name not in table.column_names:
            return np.zeros(self.rows, np.int64)
        column = table.column(name)
        if pa.types.is_null(column.type):
            return np.zeros(self.rows, np.int64)
        if not pa.types.is_integer(column.type):
            raise InvalidReferences(f"{where}: column {name!r} has type {column.type}, not integer")
        parts = [_values(chunk, fill=0) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def present(self, count: int) -> np.ndarray:
        """Exactly ``count`` flags: rows past the end of a short record file are absent."""
        mask = self.url_codes[:count] >= 0
        if self.raw_valid is not None:
            mask |= self.raw_valid[:count]
        if len(mask) < count:
            mask = np.concatenate([mask, np.zeros(count - len(mask), dtype=bool)])
        return mask

    def reference(self, row: int) -> Reference | None:
        if row >= self.rows:
            return None
        if self.raw_valid is not None and self.raw_valid[row]:
            value = self.raw[row].as_py()
            return Inline(value.encode("utf-8") if isinstance(value, str) else bytes(value))
        code = int(self.url_codes[row])
        if code < 0:
            return None
        offset, size = int(self.offsets[row]), int(self.sizes[row])
        if offset == 0 and size == 0:
            return Whole(self.urls[code])
        return Range(self.urls[code], offset, size)


def _use_system_allocator() -> None:
    """Arrow allocates through malloc from now on, not its own jemalloc/mimalloc pool.

    Decoded tables live only until they are converted to numpy; with Arrow's
    pool their memory stayed reserved and the daemon's resident size grew
    with every record file loaded, while malloc hands it back.
    """
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401 - imported at mount time, not during the first listing or stat

    pa.set_memory_pool(pa.system_memory_pool())
    _fixed_mmap_threshold()


def _fixed_mmap_threshold(threshold: int = 256 << 10) -> None:
    """Serve large blocks (record columns) by mmap, so each evicted record returns to the OS at once.

    glibc raises its mmap threshold as large blocks are freed, after which
    record-sized arrays come from the heap and a cache churning through
    record files fragments it: resident memory grew to several times the
    cache budget. A fixed threshold (also turning off that adjustment) keeps
    it flat. No-op where glibc's mallopt is unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: FUSE worker threads share arenas instead of fragmenting one each
    except (OSError, AttributeError):
        pass


class _MissingRecord:
    """A record file that does not exist: every chunk in it is absent."""

    nbytes = 64

    def present(self, count: int) -> np.ndarray:
        return np.zeros(count, dtype=bool)

    def reference(self, row: int) -> Reference | None:
        return None


_MISSING = _MissingRecord()


class ParquetNamespace:
    """The tree of a Parquet reference set; record files are loaded on demand.

    ``fs`` is an fsspec filesystem and ``root`` the set's directory on it.
    ``record_cache`` is how many decoded record files are kept (least
    recently used first out); 0 keeps none, so every lookup reads its record
    file again.
    """

    def __init__(
        self,
        fs: Any,
        root: str,
        zmetadata: bytes,
        *,
        shown: str | None = None,
        record_cache: int = DEFAULT_RECORD_CACHE,
    ) -> None:
        self.fs = fs
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

        children: dict[str, set[str]] = {"": set()}
        for key in self._meta:
            validate_key(key)
            parent, _, name = key.rpartition("/")
            while True:
                known = parent in children
                children.setdefault(parent, set()).add(name)
                if known or not parent:
                    break
                parent, _, name = parent.rpartition("/")
        for directory in children:
            if directory in self._meta:
                raise InvalidReferences(f"is a file and also a directory in {self.shown}", key=directory)
        self._children = {d: tuple(sorted(names)) for d, names in children.items()}
        self._subdirs = {d: sum(1 for n in names if self._child(d, n) in children) for d, names in self._children.items()}
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
        self._records: LRUCache[tuple[str, int], Any] = LRUCache(maxsize=record_cache)
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self._prefetcher: Any = None
        self._urls: dict[str, str] = {}
        self._extents: dict[str, int] = {}
        self.records_loaded = 0
        _use_system_allocator()

    # -- record files ----------------------------------------------------------

    def _intern(self, url: str) -> str:
        return self._urls.setdefault(url, url)

    def _record(self, field: _Field, number: int) -> Any:
        key = (field.name, number)
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                return record
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                record = self._records.get(key)
            if record is None:
                record = self._load(field, number)
                with self._lock:
                    try:
                        self._records[key] = record
                    except ValueError:  # a cache of 0 record files: use it once
                        pass
            with self._lock:
                self._loading.pop(key, None)
        return record

    def _prefetch(self, field: _Field, number: int) -> None:
        """Load a record file in the background; whoever asks for it meanwhile waits for this load.

        Only a listing prefetches (the next record file of the field it walks),
        and only when the cache can hold that record beside the one being listed.
        """
        key = (field.name, number)
        with self._lock:
            if self._records.maxsize < 2 or key in self._records or key in self._loading:
                return
            loading = self._loading[key] = threading.Lock()
            loading.acquire()
            if self._prefetcher is None:
                from concurrent.futures import ThreadPoolExecutor

                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="record-prefetch")

        def load() -> None:
            try:
                record = self._load(field, number)
                with self._lock:
                    self._records[key] = record
            except Exception as exc:  # noqa: BLE001 - the listing loads it again itself and reports the failure
                log.debug("prefetch of %s record %d failed: %s", field.name, number, exc)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
                loading.release()

        try:
            self._prefetcher.submit(load)
        except RuntimeError:  # shutting down: the listing loads it itself
            with self._lock:
                self._loading.pop(key, None)
            loading.release()

    def _load(self, field: _Field, number: int) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = f"{self.root}/{record_path(field.name, number)}"
        where = f"{self.shown}/{record_path(field.name, number)}"
        started = time.perf_counter()
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            log.debug("record file %s does not exist: its chunks are absent", where)
            return _MISSING
        except Exception as exc:  # noqa: BLE001 - any store failure is EIO for the chunk asked
            raise BackendError(f"could not read record file {where}: {type(exc).__name__}: {exc}") from None
        try:
            parquet = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["path"])
            wanted = [name for name in RECORD_COLUMNS if name in parquet.schema_arrow.names]
            # the URL column stays dictionary-encoded (no string per row); one thread: no extra malloc arenas
            table = parquet.read(columns=wanted, use_threads=False)
            del parquet, data
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
            raise InvalidReferences(f"record file {where} is not readable Parquet: {exc}") from None
        record = _Record(table, self._intern, where)
        self._grow_extents(record)
        with self._lock:
            self.records_loaded += 1
        log.debug("loaded record file %s: %d rows in %.1f ms", where, record.rows, (time.perf_counter() - started) * 1e3)
        return record

    def _grow_extents(self, record: _Record) -> None:
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

    @staticmethod
    def _child(directory: str, name: str) -> str:
        return f"{directory}/{name}" if directory else name

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
        ref = self._record(field, number // self.record_size).reference(number % self.record_size)
        if ref is None:
            raise NotFound(path)
        return File(key, ref)

    def listdir(self, path: str) -> Iterator[str]:
        """Names in a directory; a field's chunk names stream record file by record file."""
        key = path.strip("/")
        if key in self._meta:
            raise NotADirectory(path)
        names = self._children.get(key)
        if names is None:
            raise NotFound(path)
        field = self._fields.get(key)
        return itertools.chain(names, self._chunk_names(field)) if field is not None else iter(names)

    def _chunk_names(self, field: _Field) -> Iterator[str]:
        """Chunk names of the rows that exist, one record file loaded at a time.

        Built from C iterators only (names from ``product``/``join``, rows
        kept by ``compress``, records joined by ``chain``), so no Python frame
        runs per name: a million-chunk listing costs about a tenth of a second
        here, and the rest is the kernel and FUSE.
        """
        labels = [list(map(str, range(size))) for size in field.grid]
        names = map(".".join, itertools.product(*labels))

        def record_names(number: int) -> Iterator[str]:
            if number + 1 < field.records:
                self._prefetch(field, number + 1)  # decoded while this record's names are listed
            count = min(self.record_size, field.total - number * self.record_size)
            present = self._record(field, number).present(count)
            rows = itertools.islice(names, count)  # consumed in full before the next record's
            return rows if present.all() else itertools.compress(rows, present.tolist())

        return itertools.chain.from_iterable(map(record_names, range(field.records)))

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference): metadata, then each field's chunks record by record."""
        for key, data in self._meta.items():
            yield key, Inline(data)
        for field in self._fields.values():
            labels = [list(map(str, range(size))) for size in field.grid]
            names = map(".".join, itertools.product(*labels))
            for number in range(field.records):
                count = min(self.record_size, field.total - number * self.record_size)
                record = self._record(field, number)
                for row, name in zip(range(count), names, strict=False):
                    ref = record.reference(row)
                    if ref is not None:
                        yield f"{field.name}/{name}", ref

    def subdirectory_count(self, path: str) -> int:
        return self._subdirs.get(path.strip("/"), 0)

    def extent(self, url: str) -> int:
        """The furthest referenced byte of ``url`` among the record files loaded so far.

        Knowing the true maximum over the whole set would mean reading every
        record file at mount time, which is what this layout exists to avoid;
        asking the store for the object size instead would add a HEAD per
        object and read past the referenced bytes. The value used here is
        exact for everything loaded, only grows, and always covers the
        reference being read, because resolving that reference loaded its
        record first. The block cache refetches a block cut at an earlier,
        shorter extent when a later read needs more of it, so growth is safe.
        """
        return self._extents.get(url, 0)

    @property
    def urls(self) -> Iterable[str]:
        """URLs seen in the record files loaded so far (all of them would need every record)."""
        with self._lock:
            return list(self._urls)

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
        """How many decoded record files are held now (at most ``record_cache``)."""
        with self._lock:
            return len(self._records)

    @property
    def record_files(self) -> int:
        """How many record files the set has at most."""
        return sum(field.records for field in self._fields.values())

    size_if_known = staticmethod(Namespace.size_if_known)
