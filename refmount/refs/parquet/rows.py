"""One row of a record file, read from its pages without decoding the whole file.

A chunk key maps to one row of one record file (:mod:`.layout`); decoding
the file's 100,000 rows to answer a ``stat`` of that one chunk costs about
8 ms, most of it allocating and converting columns nobody asked for.
:class:`LazyRecord` keeps the file's bytes (record files are small: a few
kB to a few tens of kB compressed) and, per column, a table of its pages
(:mod:`.pages`: from the footer, which pyarrow reads, and the page headers,
walked only as far as the rows asked for). A row is then read by
decompressing only the page of each column that holds it and walking the
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
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from refmount.errors import InvalidReferences
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.parquet.layout import REQUIRED_COLUMNS
from refmount.refs.parquet.pages import CODECS, Column, Unsupported

__all__ = ["DECODE_AFTER", "LazyRecord", "Unsupported"]

#: Integer columns as (Arrow type, Parquet physical type) -> struct format. uint64 is read as int64,
#: as the full decode casts it: a value of 2**63 or more turns negative and is refused as such.
_INTEGERS = {
    ("int64", "INT64"): "<q", ("uint64", "INT64"): "<q", ("int32", "INT32"): "<i", ("uint32", "INT32"): "<I",
}


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
        self.columns: dict[str, Column] = {}
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
            if chunk.compression not in CODECS:
                raise Unsupported(f"codec {chunk.compression}")
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                start = min(start, chunk.dictionary_page_offset)
            end = start + chunk.total_compressed_size
            if start < 4 or end > len(data):
                raise Unsupported(f"column {name} outside the file")
            self.columns[name] = Column(name, integer, described.max_definition_level == 1,
                                         CODECS[chunk.compression], start, end)
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
            try:
                url = intern(path.decode("utf-8"))
            except InvalidReferences as exc:
                raise InvalidReferences(f"record file {self.where}: {exc} in row {row}") from None
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
