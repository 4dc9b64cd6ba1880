"""One row of a record file, read from its pages without decoding the whole file.

A chunk key maps to one row of one record file (:mod:`.layout`); decoding
the file's 100,000 rows to answer a ``stat`` of that one chunk costs about
8 ms, most of it allocating and converting columns nobody asked for.
:class:`LazyRecord` keeps the file's bytes (record files are small: a few
kB to a few tens of kB compressed) and a table of its pages, from the footer
(pyarrow) and the page headers (:mod:`.thrift`, walked only as far as the
rows asked for). A row is then read
by decompressing only the page of each column that holds it and walking the
page's run-length encoded levels and dictionary indices to that row.

Only what fsspec, kerchunk and pyarrow write is read this way: one row
group, flat columns (``path``/``raw`` optional byte arrays; ``offset`` and
``size`` 32 or 64-bit integers), data pages v1 or v2 in PLAIN or dictionary
encoding, RLE levels, the codecs Arrow decompresses. Anything else raises
:class:`Unsupported` when the file is opened, and a page that does not
decode raises it at the lookup; either way the caller decodes the file the
ordinary way (:func:`.records.read_record`), which reads what it can and
names what it cannot. A listing always decodes the whole file: there, every
row is wanted.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refmount.errors import InvalidReferences
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.parquet.layout import REQUIRED_COLUMNS
from refmount.refs.parquet.thrift import ThriftError, read_struct

__all__ = ["LazyRecord", "Unsupported"]

_DATA_PAGE, _INDEX_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 1, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8

#: Parquet codec names (as pyarrow's metadata spells them) and Arrow's name for each; others are Unsupported.
_CODECS: dict[str, str | None] = {
    "UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd",
    "LZ4_RAW": "lz4_raw",
}

#: Integer columns as (Arrow type, Parquet physical type) -> struct format. uint64 is read as int64,
#: as the full decode casts it: a value of 2**63 or more turns negative and is refused as such.
_INTEGERS = {
    ("int64", "INT64"): "<q", ("uint64", "INT64"): "<q", ("int32", "INT32"): "<i", ("uint32", "INT32"): "<I",
}

_DTYPES = {"<q": "<i8", "<i": "<i4", "<I": "<u4"}

#: Most PLAIN byte-array values walked past to reach a row; beyond it the file is decoded instead.
WALK_LIMIT = 1024


class Unsupported(Exception):
    """This record file (or page) is not one the row lookup reads: decode it whole instead."""


@dataclass(slots=True)
class _Page:
    first: int  # the page's first row
    rows: int
    body: int  # where the page's bytes start in the file
    compressed: int
    uncompressed: int
    encoding: int
    v2: bool = False
    levels: int = 0  # data page v2: bytes of definition levels, stored uncompressed before the values
    compressed_values: bool = True  # data page v2: whether the values are compressed


class _Column:
    """One column chunk: its pages walked through their headers as far as the rows asked for so far.

    Walking all page headers of a file (some 20 small Thrift structs) costs
    more than reading a row, so a lookup walks only to the page holding its
    row; the table it builds is kept for the next lookup of this record.
    """

    __slots__ = ("name", "integer", "nullable", "codec", "end", "next", "seen", "pages", "starts", "dictionary",
                 "decoded", "lock")

    def __init__(self, name: str, integer: str | None, nullable: bool, codec: str | None, start: int, end: int) -> None:
        self.name = name
        self.integer = integer  # struct format of an integer column; None for byte arrays
        self.nullable = nullable
        self.codec = codec
        self.end = end
        self.next = start  # where the next page header starts
        self.seen = 0  # rows in the pages walked so far
        self.pages: list[_Page] = []
        self.starts: list[int] = []
        self.dictionary: _Page | None = None
        self.decoded: Any = None  # the dictionary's values, decoded on first use
        self.lock = threading.Lock()  # FUSE threads share a held record

    def _page(self, data: memoryview, row: int) -> _Page:
        with self.lock:
            while row >= self.seen:
                if self.next >= self.end:
                    raise Unsupported(f"column {self.name}: pages end at row {self.seen}")
                self._walk(_file_bytes(data))  # Thrift reads bytes faster than a memoryview
            return self.pages[bisect_right(self.starts, row) - 1]

    def _walk(self, data: bytes) -> None:
        """Read the next page header and add its page to the table."""
        try:
            header, body = read_struct(data, self.next)
        except ThriftError as exc:
            raise Unsupported(f"page header: {exc}") from None
        kind, uncompressed, compressed = header.get(1), header.get(2), header.get(3)
        if not (isinstance(kind, int) and isinstance(uncompressed, int) and isinstance(compressed, int)) or min(
            uncompressed, compressed
        ) < 0:
            raise Unsupported("page header without its sizes")
        if body + compressed > self.end:
            raise Unsupported("page beyond its column chunk")
        if kind == _DICTIONARY_PAGE:
            fields = header.get(7)
            if self.pages or self.dictionary is not None or not isinstance(fields, dict):
                raise Unsupported("dictionary page out of place")
            if fields.get(2, _PLAIN) not in (_PLAIN, _PLAIN_DICTIONARY) or not isinstance(fields.get(1), int):
                raise Unsupported("dictionary page encoding")
            self.dictionary = _Page(0, fields[1], body, compressed, uncompressed, _PLAIN)
        elif kind == _DATA_PAGE:
            fields = header.get(5)
            if not isinstance(fields, dict) or not isinstance(fields.get(1), int) or fields[1] <= 0:
                raise Unsupported("data page header")
            if fields.get(3, _RLE) != _RLE:
                raise Unsupported("definition levels not RLE")
            self._add(_Page(self.seen, fields[1], body, compressed, uncompressed, fields.get(2, -1)))
        elif kind == _DATA_PAGE_V2:
            fields = header.get(8)
            if not isinstance(fields, dict) or not isinstance(fields.get(1), int) or fields[1] <= 0:
                raise Unsupported("data page v2 header")
            levels, repeats = fields.get(5, 0), fields.get(6, 0)
            if repeats or not isinstance(levels, int) or not 0 <= levels <= compressed or fields.get(3) != fields[1]:
                raise Unsupported("data page v2 levels")
            self._add(_Page(self.seen, fields[1], body, compressed, uncompressed, fields.get(4, -1), True, levels,
                            fields.get(7, True) is not False))
        elif kind != _INDEX_PAGE:
            raise Unsupported(f"page type {kind}")
        self.next = body + compressed

    def _add(self, page: _Page) -> None:
        self.pages.append(page)
        self.starts.append(page.first)
        self.seen += page.rows

    def value(self, data: memoryview, row: int) -> int | bytes | None:
        """The value at ``row``, or None where it is null."""
        page = self._page(data, row)
        local = row - page.first
        body = data[page.body : page.body + page.compressed]
        if page.v2:  # levels first, never compressed; then the values, compressed or not
            levels, start, end = body, 0, page.levels
            values = body[page.levels :]
            if page.compressed_values and self.codec is not None:
                values = _decompress(values, page.uncompressed - page.levels, self.codec)
            at = 0
        else:  # levels and values compressed together, the levels prefixed by their length
            values = _decompress(body, page.uncompressed, self.codec) if self.codec is not None else body
            levels, start, end, at = values, 0, 0, 0
            if self.nullable:
                (length,) = struct.unpack_from("<I", values, 0)
                start, end = 4, 4 + length
                if end > len(values):
                    raise Unsupported("definition levels beyond the page")
                at = end
        if self.nullable:
            level, index = _hybrid(levels, start, end, 1, local, count=True)
            if level == 0:
                return None
        else:
            index = local
        if page.encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
            if at >= len(values):
                raise Unsupported("dictionary indices missing")
            width = values[at]
            if width > 32:
                raise Unsupported(f"dictionary index width {width}")
            code, _ = _hybrid(values, at + 1, len(values), width, index, count=False)
            dictionary = self._dictionary(data)
            if code >= len(dictionary):
                raise Unsupported(f"dictionary index {code} beyond {len(dictionary)} values")
            return int(dictionary[code]) if self.integer else dictionary[code]
        if page.encoding != _PLAIN:
            raise Unsupported(f"page encoding {page.encoding}")
        return _plain(values, at, index, self.integer)

    def _dictionary(self, data: memoryview) -> Any:
        decoded = self.decoded
        if decoded is None:
            page = self.dictionary
            if page is None:
                raise Unsupported("dictionary-encoded page without a dictionary")
            body = data[page.body : page.body + page.compressed]
            raw = _decompress(body, page.uncompressed, self.codec) if self.codec is not None else body
            if self.integer:
                dtype = np.dtype(_DTYPES[self.integer])
                if page.rows * dtype.itemsize > len(raw):
                    raise Unsupported("dictionary shorter than its values")
                decoded = np.frombuffer(raw, dtype=dtype, count=page.rows).copy()
            else:
                decoded = _ByteArrays(raw, page.rows)
            self.decoded = decoded
        return decoded


def _pool() -> Any:
    """mimalloc for page buffers: freed and reused at once, where the system pool (:func:`.records.use_system_allocator`)
    hands every buffer above 256 kB back to the OS and faults its pages in again on the next lookup (0.3 ms per MB)."""
    try:
        return pa.mimalloc_memory_pool()
    except (NotImplementedError, AttributeError):  # pragma: no cover - a pyarrow built without mimalloc
        return None


_POOL = _pool()

def _file_bytes(data: memoryview) -> bytes:
    """The bytes a memoryview of a whole file shows (no copy)."""
    source = data.obj
    return source if isinstance(source, bytes) else bytes(data)


def _decompress(body: memoryview, size: int, codec: str) -> memoryview:
    try:
        # unsigned bytes: a memoryview of an Arrow buffer has format "b", whose items read negative from 0x80
        return memoryview(pa.decompress(body, decompressed_size=size, codec=codec, memory_pool=_POOL)).cast("B")
    except (pa.ArrowException, ValueError) as exc:
        raise Unsupported(f"page does not decompress: {exc}") from None


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos < end and data[pos] < 0x80:  # a run of fewer than 64 values
        return data[pos], pos + 1
    value = shift = 0
    while True:
        if pos >= end or shift > 35:
            raise Unsupported("truncated run header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _hybrid(data: memoryview, pos: int, end: int, width: int, index: int, *, count: bool) -> tuple[int, int]:
    """The ``index``-th value of an RLE/bit-packed hybrid run sequence, and (``count``) how many 1s precede it.

    ``count`` is only asked of definition levels, whose width is 1: the 1s
    before a row are the non-null values before it, which is the row's
    position among the page's values.
    """
    step = (width + 7) // 8
    mask = (1 << width) - 1
    seen = ones = 0
    while pos < end:
        header, pos = _varint(data, pos, end)
        if header & 1:  # bit-packed: groups of 8 values, width bits each, least significant bit first
            groups = header >> 1
            run, size = groups * 8, groups * width
            if pos + size > end:
                raise Unsupported("bit-packed run beyond the page")
            if index < seen + run:
                bit = (index - seen) * width
                first = pos + bit // 8
                word = int.from_bytes(data[first : min(first + step + 1, pos + size)], "little")
                value = (word >> (bit % 8)) & mask
                if count:
                    ones += int.from_bytes(data[pos:first], "little").bit_count()
                    ones += (data[first] & ((1 << (bit % 8)) - 1)).bit_count()
                return value, ones
            if count:
                ones += int.from_bytes(data[pos : pos + size], "little").bit_count()
            seen += run
            pos += size
        else:  # a run of one repeated value
            run = header >> 1
            if pos + step > end:
                raise Unsupported("run value beyond the page")
            value = int.from_bytes(data[pos : pos + step], "little")
            pos += step
            if count and value > 1:
                raise Unsupported(f"definition level {value} in a flat column")
            if index < seen + run:
                return value, ones + (index - seen) * value
            ones += run * value
            seen += run
    raise Unsupported("row beyond the page's runs")


def _plain(values: memoryview, at: int, index: int, integer: str | None) -> int | bytes:
    if integer is not None:
        size = struct.calcsize(integer)
        if at + (index + 1) * size > len(values):
            raise Unsupported("value beyond the page")
        return int(struct.unpack_from(integer, values, at + index * size)[0])
    if index > WALK_LIMIT:
        raise Unsupported(f"byte array {index} of a PLAIN page: too far to walk")
    pos = at
    for _ in range(index):
        (length,) = struct.unpack_from("<I", values, pos)
        pos += 4 + length
    (length,) = struct.unpack_from("<I", values, pos)
    if pos + 4 + length > len(values):
        raise Unsupported("byte array beyond the page")
    return bytes(values[pos + 4 : pos + 4 + length])


_LENGTH = struct.Struct("<I")


class _ByteArrays:
    """The values of a PLAIN byte-array dictionary page, located only as far as the indices asked for reach.

    A record's URL dictionary is decoded for each record file a lookup
    opens; walking to the one value wanted, without making the others,
    costs a fraction of decoding them all.
    """

    __slots__ = ("raw", "count", "starts", "lock")

    def __init__(self, raw: memoryview, count: int) -> None:
        self.raw = raw
        self.count = count
        self.starts = [0]  # where each value located so far starts
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> bytes:
        raw, unpack = self.raw, _LENGTH.unpack_from
        with self.lock:
            starts = self.starts
            while len(starts) <= index:
                pos = starts[-1]
                starts.append(pos + 4 + unpack(raw, pos)[0])
            pos = starts[index]
        (length,) = unpack(raw, pos)
        if pos + 4 + length > len(raw):
            raise Unsupported("dictionary value beyond its page")
        return bytes(raw[pos + 4 : pos + 4 + length])


class LazyRecord:
    """A record file held as its bytes and page table; each lookup decodes just its row.

    ``lookups`` counts the rows read; the tree decodes a record that keeps
    being asked (:data:`DECODE_AFTER`), where a decoded row is a hundred times cheaper.
    """

    __slots__ = ("data", "rows", "columns", "raw_text", "lookups", "nbytes", "where")

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.where = where
        self.lookups = 0
        try:
            parquet = pq.ParquetFile(pa.BufferReader(data))
            metadata, schema = parquet.metadata, parquet.schema_arrow
        except Exception as exc:  # noqa: BLE001 - the full decode names what is wrong with it
            raise Unsupported(f"footer: {exc}") from None
        names = schema.names
        if metadata.num_row_groups != 1 or any(name not in names for name in REQUIRED_COLUMNS):
            raise Unsupported("not one row group with path, offset and size")
        group = metadata.row_group(0)
        self.rows = group.num_rows
        self.columns: dict[str, _Column] = {}
        self.raw_text = False
        for name in ("path", "offset", "size", "raw"):
            if name not in names:
                continue
            index = names.index(name)
            if names.count(name) != 1 or metadata.schema.column(index).name != name:
                raise Unsupported("nested or repeated columns")
            arrow = schema.field(name).type
            if pa.types.is_dictionary(arrow):  # Arrow's own type for the column; Parquet stores the values
                arrow = arrow.value_type
            kind = str(arrow)
            described = metadata.schema.column(index)
            chunk = group.column(index)
            physical = described.physical_type
            if name in ("offset", "size"):
                integer = _INTEGERS.get((kind, physical))
                if integer is None:
                    raise Unsupported(f"column {name} of type {kind}")
            else:
                allowed = ("string", "large_string") if name == "path" else ("binary", "large_binary", "string",
                                                                               "large_string")
                if kind not in allowed or physical != "BYTE_ARRAY":
                    raise Unsupported(f"column {name} of type {kind}")
                integer = None
                self.raw_text = self.raw_text or (name == "raw" and "string" in kind)
            if described.max_repetition_level != 0 or described.max_definition_level > 1:
                raise Unsupported(f"column {name} is nested")
            if chunk.compression not in _CODECS:
                raise Unsupported(f"codec {chunk.compression}")
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                start = min(start, chunk.dictionary_page_offset)
            end = start + chunk.total_compressed_size
            if start < 4 or end > len(data):
                raise Unsupported(f"column {name} outside the file")
            self.columns[name] = _Column(name, integer, described.max_definition_level == 1,
                                         _CODECS[chunk.compression], start, end)
        self.nbytes = 512 + len(data)

    def reference(self, row: int, intern: Callable[[str], str]) -> Reference | None:
        """The reference in ``row`` as the full decode reads it (:meth:`.records.Record.reference`).

        Raises :class:`Unsupported` for a page this cannot read, and the
        full decode's :class:`InvalidReferences` for a row pointing at a
        negative offset or size, or beyond 2**63.
        """
        self.lookups += 1
        if row >= self.rows:
            return None
        data = memoryview(self.data)
        try:
            raw = self.columns.get("raw")
            value = raw.value(data, row) if raw is not None else None
            if value is not None:
                assert isinstance(value, bytes)
                return Inline(value.decode("utf-8").encode("utf-8") if self.raw_text else value)
            path = self.columns["path"].value(data, row)
            if path is None:
                return None
            assert isinstance(path, bytes)
            url = intern(path.decode("utf-8"))
            numbers = []
            for name in ("offset", "size"):
                number = self.columns[name].value(data, row)
                numbers.append(0 if number is None else number)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise Unsupported(f"row {row}: {type(exc).__name__}: {exc}") from None
        offset, size = numbers
        assert isinstance(offset, int) and isinstance(size, int)
        for name, number in (("offset", offset), ("size", size)):
            if number < 0:
                raise InvalidReferences(f"record file {self.where}: column {name!r} is negative ({number}) in row {row}")
        if offset > 2**63 - 1 - size:
            raise InvalidReferences(
                f"record file {self.where}: row {row} ends beyond 2**63, the largest addressable offset "
                f"(offset {offset}, size {size})"
            )
        if offset == 0 and size == 0:
            return Whole(url)
        return Range(url, offset, size)


#: Rows a held record answers lazily before the tree decodes it whole (about the cost of one decode).
DECODE_AFTER = 64
