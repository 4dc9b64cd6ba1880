"""The reference sets of a collection: which entries of a directory or URL prefix are sets, and their names.

A collection is a directory or prefix holding many sets — kerchunk JSON
files (possibly compressed), Parquet reference directories (a folder with
``.zmetadata``) and Icechunk repositories — each served as a subdirectory
named after it (``era5.json`` -> ``era5/``, ``ocean.parq/`` -> ``ocean/``). Each entry
carries a fingerprint (size and ETag, version or mtime), which is how a
reload tells a changed set from an unchanged one. Listing reads names and
sizes only: no set is opened here (the router loads them on first use).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refmount.errors import ConfigError
from refmount.refs.icechunk import is_repository
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
    fingerprint: tuple[Any, ...] = ()

    @property
    def label(self) -> str:
        """How messages name the set: ``NAME (URL)`` in a collection, the URL alone for a single set (no name)."""
        shown = redact_url(self.url)
        return f"{self.name} ({shown})" if self.name else shown


def set_name(basename: str) -> tuple[str, str] | None:
    """``(name, kind)`` of a directory entry that is a reference set, else None."""
    if basename.startswith("."):
        return None
    lowered = basename.lower()
    for suffix in JSON_SUFFIXES:
        if lowered.endswith(suffix) and len(basename) > len(suffix):
            return basename[: -len(suffix)], "json"
    return None


def _fingerprint(info: Mapping[str, Any]) -> tuple[Any, ...]:
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
                if not is_repository(fs, info["name"]):
                    continue  # a plain subdirectory, not a reference set
                entry = SetSource(base, url_of(info["name"].rstrip("/")), "icechunk",
                                  _repository_fingerprint(fs, info["name"]))
            else:
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


def _repository_fingerprint(fs: Any, path: str) -> tuple[Any, ...]:
    """What the default branch of a repository looked like: a commit moves it, and a reload sees that."""
    try:
        return _fingerprint(fs.info(posixpath.join(path.rstrip("/"), "refs", "branch.main", "ref.json")))
    except (FileNotFoundError, OSError):
        return ()


def is_collection(source: str, storage_options: Mapping[str, Any]) -> bool:
    """True when ``source`` is a directory/prefix of sets rather than one set.

    A directory named without a trailing slash that is no set and holds none
    is refused (ConfigError): mounting it would show an empty tree, which
    reads as "the data is gone" rather than "this is not a reference set".
    ``DIR/`` asks for a collection explicitly, which may start empty.
    """
    import fsspec

    if source.endswith("/"):
        return True
    fs, path = fsspec.core.url_to_fs(source, **dict(storage_options))
    try:
        if not fs.isdir(path):
            return False
        if fs.exists(posixpath.join(path, PARQUET_MARKER)) or is_repository(fs, path):
            return False
    except OSError:
        return False
    if not discover(source, storage_options):
        raise ConfigError(f"{redact_url(source)} is a directory holding no reference set: no kerchunk JSON file, "
                          "Parquet reference set or Icechunk repository (end it with / to serve it as a collection "
                          "that sets will be added to)")
    return True
