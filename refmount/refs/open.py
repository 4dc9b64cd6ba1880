"""Open a reference set in whichever format it is stored: the one entry point for mount and inspect.

* A directory (local, or a prefix on an object store) holding ``.zmetadata``
  is fsspec's Parquet layout; a URL naming the ``.zmetadata`` file itself
  means its directory. Where nothing answers at the set's own URL (HTTP has
  no directories), ``<url>/.zmetadata`` is looked for before giving up. Only ``.zmetadata`` is read now
  (:class:`~refmount.refs.parquet.tree.ParquetNamespace`).
* A directory or prefix holding an Icechunk repository (``snapshots/`` and
  ``refs/``, or the ``repo`` object of format 2) is opened with the
  ``icechunk`` package at the branch, tag or snapshot ``ref`` names
  (``main`` by default); only the node list and the zarr.json files are read
  now, each array's manifests on first use
  (:class:`~refmount.refs.icechunk.tree.IcechunkNamespace`).
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
from refmount.refs.icechunk import check_readable, repository_format
from refmount.refs.keys import ZMETADATA
from refmount.refs.parquet.layout import DEFAULT_RECORD_CACHE
from refmount.refs.relative import set_base
from refmount.refs.tree import ReferenceTree
from refmount.urls import absolute_path, is_plain_path, protocol_of, redact_url

__all__ = ["ReferenceSetInfo", "detect_format", "open_reference_set"]

Format = Literal["json", "parquet", "icechunk"]


@dataclass(frozen=True)
class ReferenceSetInfo:
    """Where a set came from, its format, its modification time (POSIX seconds, 0.0 if unknown),
    and the source-object facts (size, ETag, mtime per URL) its scanner recorded, for staleness checks.

    An Icechunk repository also says which version was opened, so no one has to guess what a
    branch pointed at: the ref asked for, whether it is a branch, tag or snapshot id, and the
    snapshot it resolved to (all empty for other formats).
    """

    url: str
    format: Format
    mtime: float
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ref: str = ""
    ref_kind: str = ""
    snapshot_id: str = ""


def detect_format(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Format, Any, str, dict[str, Any]]:
    """``(format, filesystem, path, info)``: Parquet for a directory with ``.zmetadata``, Icechunk for a
    repository, else JSON.

    ``info`` is the backend's description of the JSON file or of ``.zmetadata`` (empty for a repository).
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
            found = repository_format(fs, path)
            if found is not None:
                check_readable(found, shown)
                return "icechunk", fs, path, {}
            raise ConfigError(
                f"reference set {shown} is a directory without {ZMETADATA}: "
                "neither a Parquet reference set nor an Icechunk repository"
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
    ref: str | None = None,
) -> tuple[ReferenceSetInfo, ReferenceTree]:
    """Load the set at ``url`` (path or fsspec URL) into a tree, choosing the format itself.

    ``ref`` is the branch, tag or snapshot id of an Icechunk repository
    (``main`` when None); a set of another format refuses one, so an
    operator who asked for a version is never shown something else.
    The Parquet and Icechunk readers are imported only here, when such a set
    is opened: they import Arrow, or icechunk and zarr, which would cost
    every JSON mount tens of MB resident.
    """
    options = dict(storage_options or {})
    kind, fs, path, info = detect_format(url, options)
    url = absolute_path(url)
    shown = redact_url(url)
    mtime = source.mtime_from_info(info)
    if kind == "icechunk":
        return _open_icechunk(url, fs, path, options, ref)
    if ref is not None:
        raise ConfigError(f"option ref: {shown} is a {kind} reference set, not an Icechunk repository")
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


def _open_icechunk(
    url: str, fs: Any, path: str, options: dict[str, Any], ref: str | None
) -> tuple[ReferenceSetInfo, ReferenceTree]:
    from refmount.refs.icechunk.repository import open_snapshot
    from refmount.refs.icechunk.tree import IcechunkNamespace

    shown = redact_url(url)
    location = path if is_plain_path(url) or protocol_of(url) in ("file", "local") else fs.unstrip_protocol(path)
    snapshot = open_snapshot(location, options, ref, shown)
    tree = IcechunkNamespace(snapshot, fs, path, f"{location.rstrip('/')}/chunks", shown=shown)
    return ReferenceSetInfo(url, "icechunk", snapshot.flushed_at, ref=snapshot.ref, ref_kind=snapshot.ref_kind,
                            snapshot_id=snapshot.snapshot_id), tree


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
