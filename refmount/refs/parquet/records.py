"""One record file of a Parquet reference set, decoded into compact numpy columns.

A record file holds ``record_size`` rows of ``path, offset, size, raw``
(:mod:`.layout`). Decoded, it keeps only which rows exist and what they
point at, in the narrowest integer types (see :class:`Record`), and it is
read through Arrow's buffers rather than Arrow's conversions (see
:func:`_valid`). The allocator settings that keep a churning record cache
from growing the daemon's memory live here too (:func:`use_system_allocator`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refmount.errors import InvalidReferences
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.parquet.layout import RECORD_COLUMNS, REQUIRED_COLUMNS

__all__ = ["MISSING", "MissingRecord", "Record", "read_record", "use_system_allocator"]


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


class Record:
    """One decoded record file: which rows exist and what they point at.

    Only numpy arrays of the narrowest integer type are kept (URL ids in one
    byte for up to 127 distinct URLs, offsets and sizes in four bytes when
    they fit): about 9 bytes per row. The Arrow table is kept only for the
    ``raw`` column of a record holding inline rows.
    """

    __slots__ = ("url_codes", "urls", "offsets", "sizes", "raw", "raw_valid", "nbytes", "rows")

    def __init__(self, table: Any, intern: Callable[[str], str], where: str) -> None:
        self.rows = table.num_rows
        columns = set(table.column_names)
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise InvalidReferences(
                f"record file {where} lacks the column(s) {', '.join(map(repr, missing))}: every record file "
                f"holds {', '.join(REQUIRED_COLUMNS)} (and raw for inline data)"
            )
        self.url_codes = np.full(self.rows, -1, np.int8)
        self.urls: list[str] = []
        if "path" in columns:
            path = table.column("path")
            kind = path.type.value_type if pa.types.is_dictionary(path.type) else path.type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise InvalidReferences(f"record file {where}: column 'path' has type {path.type}, not string")
            if not pa.types.is_null(path.type) and path.null_count < self.rows:
                try:
                    self._decode_paths(path, intern)
                except UnicodeDecodeError as exc:
                    raise InvalidReferences(f"record file {where}: column 'path' is not UTF-8 text: {exc}") from None
                except InvalidReferences as exc:
                    raise InvalidReferences(f"record file {where}: {exc}") from None
        offsets, sizes = self._integers(table, "offset", where), self._integers(table, "size", where)
        self._check_ranges(offsets, sizes, where)
        self.offsets = _narrowest(offsets)
        self.sizes = _narrowest(sizes)
        self.raw: Any = None  # the Arrow column, kept only when some row is inline
        self.raw_valid: np.ndarray | None = None
        raw_bytes = 0
        if "raw" in columns:
            raw = table.column("raw")
            if raw.null_count < len(raw):
                valid = np.concatenate([_valid(chunk) for chunk in raw.chunks])
                self.raw, self.raw_valid = raw, valid
                raw_bytes = raw.nbytes + valid.nbytes
        self.nbytes = 256 + self.url_codes.nbytes + self.offsets.nbytes + self.sizes.nbytes + raw_bytes

    def _decode_paths(self, path: Any, intern: Callable[[str], str]) -> None:
        """URL ids per row (-1 for null) against one list of interned URLs, whatever the chunking."""
        chunks = path.chunks
        if not pa.types.is_dictionary(path.type):  # read_dictionary makes this rare: encode once here
            # pyarrow.compute costs ~9 MB resident once imported: only files written without a dictionary need it
            import pyarrow.compute as pc

            chunks = [pc.dictionary_encode(path.combine_chunks().cast(pa.string()))]
        index: dict[str, int] = {}
        parts = []
        for chunk in chunks:
            local = [-1 if url is None else index.setdefault(intern(url), len(index))
                     for url in chunk.dictionary.to_pylist()]
            mapping = np.array(local + [-1], dtype=np.int32)  # the last slot maps null rows
            indices = _values(chunk.indices, fill=len(local))
            if indices.size and (int(indices.min()) < 0 or int(indices.max()) > len(local)):
                # Arrow does not check a damaged file's indices; numpy would wrap or fail on them
                raise InvalidReferences(f"column 'path' has dictionary indices outside its {len(local)} values")
            parts.append(mapping[indices])
        codes = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        self.urls = list(index)
        self.url_codes = codes.astype(_code_type(len(self.urls)))

    def _check_ranges(self, offsets: np.ndarray, sizes: np.ndarray, where: str) -> None:
        """Rows that point into an object have offsets and sizes an ``off_t`` can address, as in a JSON set."""
        pointed = self.url_codes >= 0
        for name, values in (("offset", offsets), ("size", sizes)):
            bad = np.flatnonzero(pointed & (values < 0))
            if bad.size:
                row = int(bad[0])
                raise InvalidReferences(
                    f"record file {where}: column {name!r} is negative ({int(values[row])}) in row {row}"
                )
        beyond = np.flatnonzero(pointed & (offsets > np.int64(2**63 - 1) - np.maximum(sizes, 0)))
        if beyond.size:
            row = int(beyond[0])
            raise InvalidReferences(
                f"record file {where}: row {row} ends beyond 2**63, the largest addressable offset "
                f"(offset {int(offsets[row])}, size {int(sizes[row])})"
            )

    def _integers(self, table: Any, name: str, where: str) -> np.ndarray:
        if name not in table.column_names:
            return np.zeros(self.rows, np.int64)
        column = table.column(name)
        if pa.types.is_null(column.type):
            return np.zeros(self.rows, np.int64)
        if not pa.types.is_integer(column.type):
            raise InvalidReferences(f"record file {where}: column {name!r} has type {column.type}, not integer")
        if column.type == pa.uint64():
            # values of 2**63 and more would turn negative as int64: refuse them by name instead
            column = column.cast(pa.int64(), safe=False)
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


def use_system_allocator() -> None:
    """Arrow allocates through malloc from now on, not its own jemalloc/mimalloc pool.

    Decoded tables live only until they are converted to numpy; with Arrow's
    pool their memory stayed reserved and the daemon's resident size grew
    with every record file loaded, while malloc hands it back.
    """
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
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: FUSE worker threads share arenas instead of fragmenting one each
    except (OSError, AttributeError):
        pass


class MissingRecord:
    """A record file that does not exist: every chunk in it is absent."""

    nbytes = 64

    def present(self, count: int) -> np.ndarray:
        return np.zeros(count, dtype=bool)

    def reference(self, row: int) -> Reference | None:
        return None


MISSING = MissingRecord()


def read_record(data: bytes, intern: Callable[[str], str], where: str) -> Record:
    """Decode the bytes of a record file; ``intern`` shares one string per distinct URL across records."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["path"])
        wanted = [name for name in RECORD_COLUMNS if name in parquet.schema_arrow.names]
        # the URL column stays dictionary-encoded (no string per row); one thread: no extra malloc arenas
        table = parquet.read(columns=wanted, use_threads=False)
        del parquet
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
        raise InvalidReferences(f"record file {where} is not readable Parquet: {exc}") from None
    return Record(table, intern, where)
