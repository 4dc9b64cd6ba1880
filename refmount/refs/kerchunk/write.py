"""Write references as a kerchunk JSON version 1 file, streaming one key at a time.

Inline chunk bytes are written as ``base64:`` text and metadata documents
as JSON objects, so fsspec and kerchunk read the file back unchanged; the
document is produced in batches of keys, so a set of any size (a Parquet
set being converted) is written in constant memory. A ``.zmetadata`` key is
dropped: it belongs to the Parquet layout, which builds its own.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import orjson

from refmount.errors import ConfigError
from refmount.refs.keys import ZMETADATA, is_meta_key
from refmount.refs.model import Range, Reference, Whole

__all__ = ["write_json"]

#: Keys encoded before their text is handed to the output in one write.
_BATCH = 4096


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


def write_json(items: Iterable[tuple[str, Reference]], url: str, *, storage_options: dict[str, Any] | None = None,
               overwrite: bool = False) -> int:
    """Stream ``items`` into a kerchunk JSON v1 file at ``url`` (``-`` for stdout); returns the key count."""
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
            if len(batch) >= _BATCH:
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
