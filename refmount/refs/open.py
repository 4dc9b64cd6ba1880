"""Open a reference set in whichever format it is stored: the one entry point for mount and inspect.

* A directory (local, or a prefix on an object store) holding ``.zmetadata``
  is fsspec's Parquet layout; a URL naming the ``.zmetadata`` file itself
  means its directory. Where nothing answers at the set's own URL (HTTP has
  no directories), ``<url>/.zmetadata`` is looked for before giving up. Only ``.zmetadata`` is read now
  (:class:`~refmount.refs.parquet.tree.ParquetNamespace`).
* Anything else is a kerchunk JSON file (optionally compressed), parsed in
  full and kept in the compact column form of
  :class:`~refmount.refs.compact.CompactNamespace`.

After a JSON set is built, the parser's millions of temporary objects are
freed and the C allocator is asked to hand the memory back
(``malloc_trim``), so the daemon's resident size reflects the compact form
rather than the parsing peak.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from refmount.errors import ConfigError
from refmount.refs import source
from refmount.refs.compact import CompactNamespace
from refmount.refs.keys import ZMETADATA
from refmount.refs.parquet.layout import DEFAULT_RECORD_CACHE
from refmount.refs.relative import set_base
from refmount.refs.tree import ReferenceTree
from refmount.urls import absolute_path, is_plain_path, redact_url

__all__ = ["ReferenceSetInfo", "detect_format", "open_reference_set"]

Format = Literal["json", "parquet"]


@dataclass(frozen=True)
class ReferenceSetInfo:
    """Where a set came from, its format, its modification time (POSIX seconds, 0.0 if unknown),
    and the source-object facts (size, ETag, mtime per URL) its scanner recorded, for staleness checks."""

    url: str
    format: Format
    mtime: float
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def detect_format(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Format, Any, str, dict[str, Any]]:
    """``(format, filesystem, path, info)``: Parquet for a directory with ``.zmetadata``, else JSON.

    ``info`` is the backend's description of the JSON file or of ``.zmetadata``.
    """
    options = dict(storage_options or {})
    shown = redact_url(url)
    if is_plain_path(url):
        url = absolute_path(url)
        shown = url
    fs, path = source._filesystem(url, shown, options)
    path = path.rstrip("/") or path
    if path.rsplit("/", 1)[-1] == ZMETADATA:
        path = path.rsplit("/", 1)[0]
        return "parquet", fs, path, _info(fs, f"{path}/{ZMETADATA}", shown, options)
    try:
        info = source._call(lambda: fs.info(path), "look up", shown, options)
    except ConfigError as missing:
        # Stores without directories (HTTP) know only the files of a Parquet set, not its root.
        meta_path = f"{path}/{ZMETADATA}"
        try:
            meta_info = fs.info(meta_path)
        except Exception:  # noqa: BLE001 - the set's own URL gave the meaningful error
            raise missing from None
        return "parquet", fs, path, meta_info
    if info.get("type") == "directory":
        try:
            meta_info = fs.info(f"{path}/{ZMETADATA}")
        except FileNotFoundError:
            raise ConfigError(
                f"reference set {shown} is a directory without {ZMETADATA}: not a Parquet reference set"
            ) from None
        except Exception:  # noqa: BLE001 - let the read report the store failure with context
            meta_info = _info(fs, f"{path}/{ZMETADATA}", shown, options)
        return "parquet", fs, path, meta_info
    return "json", fs, path, info


def _info(fs: Any, path: str, shown: str, options: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = source._call(lambda: fs.info(path), "look up", f"{shown}/{ZMETADATA}", options)
    return info


def open_reference_set(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    record_cache: int = DEFAULT_RECORD_CACHE,
) -> tuple[ReferenceSetInfo, ReferenceTree]:
    """Load the set at ``url`` (path or fsspec URL) into a tree, choosing the format itself.

    The Parquet reader is imported only here, when a Parquet set is opened: it
    imports Arrow, which would cost every JSON mount some 30 MB resident.
    """
    options = dict(storage_options or {})
    kind, fs, path, info = detect_format(url, options)
    url = absolute_path(url)
    shown = redact_url(url)
    mtime = source.mtime_from_info(info)
    if kind == "parquet":
        from refmount.refs.parquet.tree import ParquetNamespace

        meta_path = f"{path}/{ZMETADATA}"
        data = source._call(lambda: fs.cat_file(meta_path), "read", f"{shown}/{ZMETADATA}", options)
        names_metadata = url.split("?", 1)[0].rstrip("/").endswith(f"/{ZMETADATA}")
        base = set_base(url) if names_metadata else set_base(url, is_directory=True)
        parquet = ParquetNamespace(fs, path, bytes(data), shown=shown, record_cache=record_cache, base=base)
        return ReferenceSetInfo(url, "parquet", mtime), parquet
    sources, namespace = _load_json(url, options)
    return ReferenceSetInfo(url, "json", mtime, sources), namespace


def _load_json(url: str, options: dict[str, Any]) -> tuple[Mapping[str, Mapping[str, Any]], CompactNamespace]:
    reference_file, references = source.load_references(url, options)
    sources = reference_file.sources
    del reference_file  # the raw bytes: no longer needed once parsed
    gc_was_enabled = gc.isenabled()
    gc.disable()  # building creates no cycles; collections would only rescan millions of objects
    try:
        namespace = CompactNamespace(references)
    finally:
        if gc_was_enabled:
            gc.enable()
    del references
    release_free_memory()
    return sources, namespace


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc); a no-op elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
