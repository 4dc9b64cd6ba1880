"""Many reference sets under one mount, loaded lazily, unloaded when idle, reloaded atomically.

A mount serves either one reference set at its root, or a *collection*: a
directory or URL prefix holding many sets (kerchunk JSON files, possibly
compressed, and Parquet reference directories), each shown as a
subdirectory named after it (``era5.json`` -> ``era5/``).

Lifecycle of a set in a collection. Listing the mount root never loads a
set: its subdirectories are synthesised from the listing of the source.
The first lookup inside a set loads it (once, whoever asks at the same
time waits for the same load) and builds a :class:`RefFilesystem` over the
process-wide cache and backend, so there is still one memory budget for the
whole mount. A set nobody has touched for ``idle_unload`` seconds and that
has no open file is dropped again. A set that fails to load is shown as a
directory whose contents answer EIO, with the reason logged once; its
neighbours are unaffected and the load is retried after a pause or a reload.

Reload (SIGHUP, ``refmount reload``) lists the source again: new sets
appear, removed sets disappear, and a set whose fingerprint (size, ETag or
mtime) changed is rebuilt and swapped in with one reference assignment.
Open files hold the filesystem generation they were opened on, so they keep
reading the data they opened; new opens see the new generation. A changed
set that fails to load keeps serving its previous version (an operator's
bad upload must not take data away from running jobs) and the failure is
logged and counted.

Every set, JSON or Parquet, is opened by :func:`refmount.refs.open.open_reference_set`,
the same entry point ``refmount inspect`` uses; it detects the format itself.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refmount.urls import protocol_of, redact_url

log = logging.getLogger("refmount.sets")


JSON_SUFFIXES = (".json", ".json.gz", ".json.bz2", ".json.xz", ".json.zst", ".jsonl")


PARQUET_MARKER = ".zmetadata"


PARQUET_SUFFIXES = (".parquet", ".parq")


@dataclass(frozen=True)
class SetSource:
    """Where one set of a collection lives and what it looked like when listed."""

    name: str
    url: str
    kind: str
    fingerprint: tuple[object, ...] = ()


def set_name(basename: str) -> tuple[str, str] | None:
    """``(name, kind)`` of a directory entry that is a reference set, else None."""
    if basename.startswith("."):
        return None
    lowered = basename.lower()
    for suffix in JSON_SUFFIXES:
        if lowered.endswith(suffix) and len(basename) > len(suffix):
            return basename[: -len(suffix)], "json"
    return None


def _fingerprint(info: Mapping[str, Any]) -> tuple[object, ...]:
    version = info.get("ETag") or info.get("etag") or info.get("VersionId") or info.get("mtime") or info.get("LastModified")
    return (info.get("size"), str(version))


def discover(source: str, storage_options: Mapping[str, Any]) -> dict[str, SetSource]:
    """The reference sets in ``source`` (a directory or URL prefix), by name, as the store lists them now.

    fsspec hands out one cached filesystem instance per protocol and options,
    and s3fs, HTTP and others keep a directory-listing cache in it. A reload
    exists to see what changed since the last listing, so that cache (the
    listing of ``source`` and of any Parquet set directory under it) is
    dropped first; on a filesystem without one this does nothing.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(source, **dict(storage_options))
    fs.invalidate_cache()  # the whole instance: subdirectory listings back the Parquet markers' info
    local = protocol_of(source) in ("file", "local")

    def url_of(name: str) -> str:
        return name if local else fs.unstrip_protocol(name)

    found: dict[str, SetSource] = {}
    for info in sorted(fs.ls(path, detail=True), key=lambda item: item["name"]):
        base = posixpath.basename(info["name"].rstrip("/"))
        if info.get("type") == "directory":
            if base.startswith("."):
                continue
            marker = posixpath.join(info["name"].rstrip("/"), PARQUET_MARKER)
            try:
                marker_info = fs.info(marker)
            except (FileNotFoundError, OSError):
                continue  # a plain subdirectory, not a Parquet reference set
            name = base
            for suffix in PARQUET_SUFFIXES:
                if name.lower().endswith(suffix) and len(name) > len(suffix):
                    name = name[: -len(suffix)]
            entry = SetSource(name, url_of(info["name"].rstrip("/")), "parquet", _fingerprint(marker_info))
        else:
            named = set_name(base)
            if named is None:
                continue
            entry = SetSource(named[0], url_of(info["name"]), named[1], _fingerprint(info))
        if entry.name in found:
            log.warning("reference sets %s and %s share the name %s; serving the first",
                        redact_url(found[entry.name].url), redact_url(entry.url), entry.name)
            continue
        found[entry.name] = entry
    return found


def is_collection(source: str, storage_options: Mapping[str, Any]) -> bool:
    """True when ``source`` is a directory/prefix of sets rather than one set."""
    import fsspec

    if source.endswith("/"):
        return True
    fs, path = fsspec.core.url_to_fs(source, **dict(storage_options))
    try:
        if not fs.isdir(path):
            return False
        return not fs.exists(posixpath.join(path, PARQUET_MARKER))
    except OSError:
        return False
