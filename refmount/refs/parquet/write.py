"""Write references in fsspec's Parquet reference layout, which fsspec and kerchunk read.

The layout follows fsspec's ``LazyReferenceMapper`` (see :mod:`.layout`):
``.zmetadata`` holds every metadata document as JSON plus ``record_size``;
each array ("field") gets ``<field>/refs.<r>.parq`` files of ``record_size``
rows with the columns ``path`` (string), ``offset``, ``size`` (int64) and
``raw`` (binary), zstd compressed, one row per chunk of the row-major chunk
grid, null rows for chunks that do not exist. Record files with no chunk at
all are not written (readers treat a missing record file as missing chunks).

Not every JSON set fits the layout, and a conversion that silently drops
keys would be worse than none, so these are refused naming the key: a
non-metadata key outside an array directory (the layout has no place for
it), a metadata key that is not a JSON document or not inline, a chunk name
that is not a canonical index of its array's grid. A zero-length range at
offset 0 is written as empty inline data, because the layout reads
``offset == size == 0`` as "the whole object". A ``.zmetadata`` key of the
input is dropped: the layout has its own.

Arrow is imported when a set is written, not when this module is: the
commands that import it run in every daemon, and Arrow costs a JSON mount
some 30 MB resident it would never use.
"""

from __future__ import annotations

import io
import json
import math
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import fsspec
import numpy as np

from refmount.errors import ConfigError, InvalidReferences
from refmount.refs.keys import ZMETADATA, is_meta_key
from refmount.refs.model import Inline, Range, Reference
from refmount.refs.parquet.layout import DEFAULT_RECORD_SIZE, chunk_grid, chunk_number, record_path

__all__ = ["Items", "write_parquet"]

#: The references to write, as a function called once per pass (the writer makes two).
Items = Callable[[], Iterable[tuple[str, Reference]]]


class _FieldRows:
    """The chunks of one array gathered column-wise before they are cut into record files."""

    __slots__ = ("grid", "total", "numbers", "codes", "offsets", "sizes", "raw")

    def __init__(self, grid: tuple[int, ...]) -> None:
        self.grid = grid
        self.total = math.prod(grid)
        self.numbers = array("q")
        self.codes = array("i")
        self.offsets = array("q")
        self.sizes = array("q")
        self.raw: dict[int, bytes] = {}


def _metadata_document(key: str, ref: Reference) -> Any:
    if not isinstance(ref, Inline):
        raise InvalidReferences("a metadata key must be inline JSON to be stored in the Parquet layout", key=key)
    try:
        return json.loads(ref.data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidReferences("a metadata key must be a JSON document in the Parquet layout", key=key) from None


def write_parquet(
    items: Items,
    url: str,
    *,
    record_size: int = DEFAULT_RECORD_SIZE,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write the references ``items()`` yields (called twice) as a Parquet set at ``url``.

    Returns counts: keys, chunks, record files written.
    """
    if type(record_size) is not int or record_size <= 0:
        raise ConfigError(f"record size must be a positive integer, got {record_size!r}")
    documents: dict[str, Any] = {}
    for key, ref in items():
        if is_meta_key(key) and key != ZMETADATA:
            documents[key] = _metadata_document(key, ref)
    fields: dict[str, _FieldRows] = {}
    for key, document in documents.items():
        if key.endswith("/.zarray"):
            fields[key[: -len("/.zarray")]] = _FieldRows(chunk_grid(document, key[: -len("/.zarray")]))
    urls: dict[str, int] = {}
    chunks = 0
    for key, ref in items():
        if is_meta_key(key):
            continue
        parent, _, name = key.rpartition("/")
        rows = fields.get(parent)
        if rows is None:
            raise InvalidReferences(
                "only metadata and chunks of arrays (a directory with .zarray) fit the Parquet layout", key=key
            )
        number = chunk_number(name, rows.grid)
        if number is None:
            raise InvalidReferences(f"not a chunk of the grid {list(rows.grid)} of {parent}", key=key)
        rows.numbers.append(number)
        chunks += 1
        if isinstance(ref, Inline) or (isinstance(ref, Range) and ref.offset == 0 and ref.length == 0):
            rows.raw[number] = ref.data if isinstance(ref, Inline) else b""
            rows.codes.append(-1)
            rows.offsets.append(0)
            rows.sizes.append(0)
            continue
        code = urls.setdefault(ref.url, len(urls))
        rows.codes.append(code)
        rows.offsets.append(ref.offset if isinstance(ref, Range) else 0)
        rows.sizes.append(ref.length if isinstance(ref, Range) else 0)

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    if fs.exists(root):
        if not overwrite:
            raise ConfigError(f"{url} exists; remove it or pass --overwrite")
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    url_list = list(urls)
    written = 0
    for field, rows in fields.items():
        written += _write_field(fs, root, field, rows, url_list, record_size)
    fs.pipe(f"{root}/{ZMETADATA}", json.dumps({"metadata": documents, "record_size": record_size}).encode())
    return {"keys": len(documents) + chunks, "chunks": chunks, "record_files": written}


def _write_field(fs: Any, root: str, field: str, rows: _FieldRows, url_list: list[str], record_size: int) -> int:
    import pyarrow as pa  # when writing only: see the module doc
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    numbers = np.frombuffer(rows.numbers, dtype=np.int64) if rows.numbers else np.zeros(0, np.int64)
    if len(np.unique(numbers)) != len(numbers):
        raise InvalidReferences(f"two keys name the same chunk of {field}")
    codes = np.frombuffer(rows.codes, dtype=np.int32) if rows.codes else np.zeros(0, np.int32)
    offsets = np.frombuffer(rows.offsets, dtype=np.int64) if rows.offsets else np.zeros(0, np.int64)
    sizes = np.frombuffer(rows.sizes, dtype=np.int64) if rows.sizes else np.zeros(0, np.int64)
    dictionary = pa.array(url_list, type=pa.string())
    schema = _schema()
    written = 0
    records = numbers // record_size
    for record in np.unique(records).tolist():
        start = record * record_size
        count = min(record_size, rows.total - start)
        mine = records == record
        at = numbers[mine] - start
        column_codes = np.full(count, -1, np.int32)
        column_codes[at] = codes[mine]
        column_offsets = np.zeros(count, np.int64)
        column_offsets[at] = offsets[mine]
        column_sizes = np.zeros(count, np.int64)
        column_sizes[at] = sizes[mine]
        indices = pa.array(column_codes, mask=column_codes < 0)
        raw_values: list[bytes | None] = [None] * count
        for number, data in rows.raw.items():
            if start <= number < start + count:
                raw_values[number - start] = data
        table = pa.Table.from_arrays(
            [pc.take(dictionary, indices), pa.array(column_offsets), pa.array(column_sizes),
             pa.array(raw_values, type=pa.binary())],
            schema=schema,
        )
        # pandas metadata makes fastparquet (fsspec's reader) give numpy int64, not nullable Int64.
        table = table.replace_schema_metadata(_pandas_metadata(table))
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", write_statistics=False)
        path = f"{root}/{record_path(field, record)}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe(path, sink.getvalue())
        written += 1
    return written


def _schema() -> Any:
    """fsspec's columns; offset and size are not nullable, or fastparquet reads them as floats."""
    import pyarrow as pa  # when writing only: see the module doc

    return pa.schema([
        pa.field("path", pa.string()),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("raw", pa.binary()),
    ])


def _pandas_metadata(table: Any) -> dict[bytes, bytes]:
    """The ``pandas`` schema metadata pandas itself would write for these four columns."""
    columns = [
        {"name": "path", "field_name": "path", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        {"name": "offset", "field_name": "offset", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "size", "field_name": "size", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "raw", "field_name": "raw", "pandas_type": "bytes", "numpy_type": "object", "metadata": None},
    ]
    document = {
        "index_columns": [], "column_indexes": [], "columns": columns,
        "creator": {"library": "refmount"}, "pandas_version": "2.0.0",
    }
    return {b"pandas": json.dumps(document).encode()}
