"""``refmount convert``: kerchunk JSON <-> fsspec's Parquet reference layout.

Writing Parquet follows fsspec's ``LazyReferenceMapper`` so that fsspec's
``ReferenceFileSystem`` (and kerchunk) read the result: ``.zmetadata`` holds
every metadata document as JSON plus ``record_size``; each array ("field")
gets ``<field>/refs.<r>.parq`` files of ``record_size`` rows with the columns
``path`` (string), ``offset``, ``size`` (int64) and ``raw`` (binary), zstd
compressed, one row per chunk of the row-major chunk grid, null rows for
chunks that do not exist. Record files with no chunk at all are not written
(readers treat a missing record file as missing chunks).

Not every JSON set fits the layout, and a conversion that silently drops
keys would be worse than none, so these are refused naming the key: a
non-metadata key outside an array directory (the layout has no place for
it), a metadata key that is not a JSON document or not inline, a chunk name
that is not a canonical index of its array's grid. A zero-length range at
offset 0 is written as empty inline data, because the layout reads
``offset == size == 0`` as "the whole object". A ``.zmetadata`` key of the
JSON set is dropped: the layout has its own.

Writing JSON streams one key at a time (version 1, ``base64:`` for inline
chunk bytes, metadata as JSON objects), so a Parquet set of any size
converts in constant memory.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from refmount.cli.scan import parse_storage_options
from refmount.errors import ConfigError, InvalidReferences, RefmountError
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.open import open_reference_set
from refmount.refs.parquet import (
    ZMETADATA,
    chunk_grid,
    chunk_number,
    is_meta_key,
    record_path,
)

log = logging.getLogger("refmount.convert")

__all__ = ["DEFAULT_RECORD_SIZE", "add_arguments", "run", "write_json", "write_parquet"]

#: Rows per record file: fsspec's LazyReferenceMapper default.
DEFAULT_RECORD_SIZE = 10_000

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
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write the references ``items()`` yields (called twice) as a Parquet set at ``url``.

    Returns counts: keys, chunks, record files written.
    """
    import fsspec

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
    import pyarrow as pa
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
    import pyarrow as pa

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


def _json_value(key: str, ref: Reference) -> Any:
    if isinstance(ref, Range):
        return [ref.url, ref.offset, ref.length]
    if isinstance(ref, Whole):
        return [ref.url]
    if is_meta_key(key):
        try:
            return json.loads(ref.data)
        except (ValueError, UnicodeDecodeError):
            pass
    return "base64:" + base64.b64encode(ref.data).decode("ascii")


def write_json(items: Iterable[tuple[str, Reference]], url: str, *, storage_options: dict | None = None,
               overwrite: bool = False) -> int:
    """Stream ``items`` into a kerchunk JSON v1 file at ``url`` (``-`` for stdout); returns the key count."""
    import fsspec
    import orjson

    written = [0]

    def chunks() -> Iterator[bytes]:
        yield b'{"version":1,"refs":{'
        first = True
        batch: list[bytes] = []
        for key, ref in items:
            if key == ZMETADATA:
                continue
            batch.append((b"" if first else b",") + orjson.dumps(key) + b":" + orjson.dumps(_json_value(key, ref)))
            first = False
            written[0] += 1
            if len(batch) >= 4096:
                yield b"".join(batch)
                batch.clear()
        yield b"".join(batch)
        yield b"}}\n"

    if url == "-":
        for piece in chunks():
            sys.stdout.buffer.write(piece)
        sys.stdout.flush()
        return written[0]
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.exists(path) and not overwrite:
        raise ConfigError(f"{url} exists; remove it or pass --overwrite")
    with fs.open(path, "wb") as handle:
        for piece in chunks():
            handle.write(piece)
    return written[0]


# -- the command ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="reference set: JSON file or Parquet directory (path or URL)")
    parser.add_argument("target", metavar="TARGET", help="output: a directory for Parquet, a file for JSON ('-' = stdout)")
    parser.add_argument(
        "--to", choices=("parquet", "json"), default=None,
        help="output format (default: the other one: JSON becomes Parquet, Parquet becomes JSON)",
    )
    parser.add_argument(
        "--record-size", type=int, default=DEFAULT_RECORD_SIZE, metavar="N",
        help=f"references per Parquet record file (default {DEFAULT_RECORD_SIZE}, as fsspec)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace TARGET if it exists")
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="fsspec storage option for reading SOURCE and writing TARGET (VALUE parsed as JSON when it parses)",
    )
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint URL")
    parser.add_argument("--anon", action="store_true", help="access S3 anonymously")


def run(args: argparse.Namespace) -> int:
    """Convert; exit 0 on success, 2 on bad input."""

    started = time.monotonic()
    try:
        options = parse_storage_options(args.storage_option, args.endpoint_url, args.anon)
        read_options = _reading_options(args.source, options)
        info, namespace = open_reference_set(args.source, read_options)
        target_format = args.to or ("json" if info.format == "parquet" else "parquet")
        if target_format == "parquet":
            if args.target == "-":
                raise ConfigError("a Parquet set is a directory: give a directory TARGET, not '-'")
            counts = write_parquet(
                namespace.iter_references, args.target, record_size=args.record_size,
                storage_options=_reading_options(args.target, options), overwrite=args.overwrite,
            )
            summary = f"{counts['keys']} keys, {counts['record_files']} record files"
        else:
            keys = write_json(namespace.iter_references(), args.target,
                              storage_options=_reading_options(args.target, options), overwrite=args.overwrite)
            summary = f"{keys} keys"
    except RefmountError as exc:
        print(f"refmount convert: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"refmount convert: {exc}", file=sys.stderr)
        return 2
    print(f"refmount convert: {args.source} ({info.format}) -> {args.target} ({target_format}): {summary} "
          f"in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def _reading_options(url: str, options: dict) -> dict:
    """Storage options apply to remote URLs only (a local path takes none)."""
    if "://" not in url or url.startswith("file://"):
        return {}
    protocol = url.split("://", 1)[0]
    if protocol == "s3" and "endpoint_url" in options:
        options = dict(options)
        endpoint = options.pop("endpoint_url")
        options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
    return options
