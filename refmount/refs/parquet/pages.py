"""The pages of one column chunk of a record file: walked through their headers, one value read.

The Parquet format below what pyarrow exposes, for :mod:`.rows`: page
headers (:mod:`.thrift`), data pages v1 and v2, PLAIN and dictionary
encodings, RLE/bit-packed levels and indices, the codecs Arrow decompresses.
A value is read by decompressing its page and walking the runs to it; any
page outside that raises :class:`Unsupported`, and the record file is
decoded whole instead.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from refmount.refs.parquet.thrift import ThriftError, read_struct, read_varint

__all__ = ["CODECS", "Column", "Unsupported"]

_DATA_PAGE, _INDEX_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 1, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8

#: Parquet codec names (as pyarrow's metadata spells them) and Arrow's name for each; others are Unsupported.
CODECS: dict[str, str | None] = {
    "UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd",
    "LZ4_RAW": "lz4_raw",
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


class Column:
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
            if fields[1] < 0:
                raise Unsupported(f"dictionary page of {fields[1]} values")
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
    try:
        return read_varint(data, pos, end, max_shift=35)  # run headers are 32-bit
    except ThriftError:
        raise Unsupported("truncated run header") from None


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
