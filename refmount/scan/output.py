"""Building and writing kerchunk JSON version 1 reference sets.

Pure helpers: chunk key naming, Zarr metadata documents, URL templates and
URL rewriting. Writing is a thin layer over fsspec so the output can be a
local path, stdout or a remote URL.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec

from refmount.refs.kerchunk.parse import parse_references
from refmount.refs.parquet.write import write_parquet

#: Template name used for the (single) source URL of a reference set.
TEMPLATE_NAME = "u"


def chunk_key(array_path: str, index: Sequence[int]) -> str:
    """Zarr v2 key of a chunk with '.' separator; '0' for 0-d arrays."""
    name = ".".join(str(i) for i in index) if index else "0"
    return f"{array_path}/{name}" if array_path else name


def meta_key(path: str, name: str) -> str:
    """Key of a metadata document (``.zgroup``, ``.zarray``, ``.zattrs``) under ``path``."""
    return f"{path}/{name}" if path else name


def dumps(doc: Any) -> str:
    """Strict JSON text (non-finite floats must already be encoded as strings)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


def inline_value(data: bytes) -> str:
    """A reference value carrying ``data`` inline, base64 so any byte survives JSON."""
    return "base64:" + base64.standard_b64encode(data).decode("ascii")


def range_ref(offset: int, length: int) -> list[Any]:
    """A byte-range reference to the templated source URL."""
    return ["{{" + TEMPLATE_NAME + "}}", int(offset), int(length)]


def zarray(
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: Any,
    fill_value: Any,
    compressor: dict[str, Any] | None,
    filters: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """A Zarr v2 ``.zarray`` document (C order, '.' dimension separator)."""
    return {
        "zarr_format": 2,
        "shape": [int(s) for s in shape],
        "chunks": [max(1, int(c)) for c in chunks],
        "dtype": dtype,
        "compressor": compressor,
        "fill_value": fill_value,
        "filters": filters,
        "order": "C",
        "dimension_separator": ".",
    }


def reference_set(
    url: str, refs: dict[str, Any], sources: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Assemble a version 1 reference set with one URL template and source facts.

    The ``refmount`` top-level key is ignored by fsspec (it reads only
    ``version``, ``templates``, ``refs`` and ``gen``) and lets a mount detect
    that the source object changed since the scan.
    """
    return {
        "version": 1,
        "templates": {TEMPLATE_NAME: url},
        "refs": refs,
        "refmount": {"sources": sources},
    }


class BadURLMap(ValueError):
    """A --url-map value is not PREFIX=REPLACEMENT."""


def parse_url_map(items: Iterable[str]) -> list[tuple[str, str]]:
    """Parse ``PREFIX=REPLACEMENT`` pairs; longest prefixes are tried first."""
    pairs = []
    for item in items:
        prefix, sep, replacement = item.partition("=")
        if not sep or not prefix:
            raise BadURLMap(f"--url-map {item!r}: expected PREFIX=REPLACEMENT")
        pairs.append((prefix, replacement))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def apply_url_map(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Rewrite ``url`` with the first (longest) matching prefix; unchanged if none match."""
    for prefix, replacement in pairs:
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def write_json(doc: dict[str, Any], target: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write a reference set to a path or URL, or to stdout when ``target`` is '-'."""
    text = json.dumps(doc, allow_nan=False)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    with fsspec.open(target, "w", **(storage_options or {})) as f:
        f.write(text)


def write_parquet_set(doc: dict[str, Any], target: str, record_size: int,
                      storage_options: dict[str, Any] | None = None) -> None:
    """Write a reference set in fsspec's Parquet layout (a directory), replacing an earlier scan's output."""
    references = parse_references(doc)
    write_parquet(lambda: references.items(), target, record_size=record_size,
                  storage_options=storage_options, overwrite=True)
