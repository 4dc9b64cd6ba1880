"""fsspec's Parquet reference layout: names, chunk numbering, ``.zmetadata``.

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

Served bytes match fsspec's ``ReferenceFileSystem``: metadata documents as
``json.dumps(document)`` and ``.zmetadata`` as the file's own bytes. Chunk
names must be canonical (``0.12``, not ``0.012``) and inside the grid: fsspec
would map ``x/0.99`` outside the grid onto some other chunk's row; here it is
simply absent. Only the ``.`` dimension separator exists in this layout.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

from refmount.errors import InvalidReferences

__all__ = [
    "DEFAULT_RECORD_CACHE",
    "DEFAULT_RECORD_SIZE",
    "MAX_AXIS",
    "MAX_GRID_CHUNKS",
    "RECORD_COLUMNS",
    "REQUIRED_COLUMNS",
    "chunk_grid",
    "chunk_number",
    "metadata_bytes",
    "parse_zmetadata",
    "record_path",
]

#: Rows per record file: fsspec's LazyReferenceMapper default.
DEFAULT_RECORD_SIZE = 10_000

#: Record files a reader keeps in memory (option ``record_cache``): each costs its file size while only
#: looked up row by row, about 9 bytes per row once decoded whole.
DEFAULT_RECORD_CACHE = 32

#: Columns of a record file that references are made of; anything else in it is not read.
RECORD_COLUMNS = ("path", "offset", "size", "raw")

#: Columns every record file must have: without offset and size, every row would read as a whole object.
REQUIRED_COLUMNS = ("path", "offset", "size")


def record_path(field: str, record: int) -> str:
    """Path of a record file relative to the set's root."""
    return f"{field}/refs.{record}.parq"


#: Most chunks one array of a Parquet set may have (a trillion): beyond it the
#: grid is refused, since no real set has it and its record files could not exist.
MAX_GRID_CHUNKS = 2**40

#: Largest shape or chunk length of one axis: what a float64 holds exactly (fsspec and Zarr compute with both).
MAX_AXIS = 2**53


def chunk_grid(zarray: Any, field: str) -> tuple[int, ...]:
    """Chunks per axis of an array; a 0-d array has one chunk, named ``0``.

    Refuses, naming the array and the limit, a shape or chunk length that is
    not a whole number in ``1..2**53`` (``0`` for a shape), and a grid of more than
    :data:`MAX_GRID_CHUNKS` chunks.
    """
    key = f"{field}/.zarray"
    try:
        shape, chunks = zarray["shape"], zarray["chunks"]
        pairs = list(zip(shape, chunks, strict=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidReferences(f"unusable .zarray shape/chunks ({type(exc).__name__}: {exc})", key=key) from None
    grid = []
    for axis, (size, chunk) in enumerate(pairs):
        numbers = []
        for what, value, least in (("shape", size, 0), ("chunks", chunk, 1)):
            if type(value) is float and value.is_integer():
                value = int(value)  # JSON writers may spell 1000 as 1000.0 or 1e3
            if type(value) is not int or not least <= value <= MAX_AXIS:
                raise InvalidReferences(
                    f"{what}[{axis}] of array {field!r} is {_shorten(value)}: it must be an integer "
                    f"from {least} to 2**53", key=key,
                )
            numbers.append(value)
        grid.append(-(-numbers[0] // numbers[1]))
    if math.prod(grid) > MAX_GRID_CHUNKS:
        raise InvalidReferences(
            f"array {field!r} has {math.prod(grid)} chunks (grid {grid}), more than the limit of 2**40", key=key
        )
    return tuple(grid) or (1,)


def _shorten(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


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
    except RecursionError:
        raise InvalidReferences(
            f"{where}: .zmetadata nests more deeply than {sys.getrecursionlimit()} levels, the JSON decoder's limit"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # also an integer literal beyond the digit limit
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
    if _UJSON_DUMPS is not None:
        try:
            return _UJSON_DUMPS(document).encode()
        except (OverflowError, TypeError, ValueError):
            pass
    return json.dumps(document).encode()


def _optional_ujson() -> Callable[[Any], str] | None:
    """``ujson.dumps`` where ujson is installed: the serialiser fsspec's reference module picks."""
    try:
        import ujson
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return ujson.dumps


_UJSON_DUMPS = _optional_ujson()
