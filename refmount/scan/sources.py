"""Finding and opening source files, locally or through any fsspec filesystem.

A remote file is opened once through fsspec with a block cache, so h5py's
many small metadata reads become a few ranged GETs of :data:`BLOCK_SIZE`
bytes; the data chunks themselves are never read (except chunks small
enough to be inlined).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import h5py

from refmount.errors import RefmountError
from refmount.scan.gcpause import cyclic_gc_paused
from refmount.store.options import protocol_options

#: Size of each ranged read of a remote file; HDF5 metadata tends to cluster,
#: so a block usually serves many h5py reads.
BLOCK_SIZE = 1 << 20
#: Blocks kept in memory per open remote file.
MAX_BLOCKS = 64

GLOB_CHARS = frozenset("*?[")


class SourceError(RefmountError):
    """A source cannot be found, listed or opened as HDF5 (bad input)."""


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs."""
    protocol = fsspec.core.split_protocol(url)[0]
    return protocol in (None, "file", "local")


def local_path(url: str) -> str:
    """Absolute local path of a plain path or file:// URL."""
    return os.path.abspath(fsspec.core.strip_protocol(url) if "://" in url else url)


def canonical_url(url: str) -> str:
    """The URL written into references: absolute path for local files, the URL otherwise."""
    return local_path(url) if is_local(url) else url


def expand_sources(patterns: list[str], by_protocol: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Expand globs (locally or through fsspec) and check each source exists.

    ``by_protocol`` holds the fsspec arguments of each protocol
    (``{"s3": {...}}``); each pattern is listed with those of its own.
    Raises SourceError naming the first pattern that matches nothing.
    """
    out: list[str] = []
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern, **protocol_options(pattern, by_protocol or {}))
        protocol = fsspec.core.split_protocol(pattern)[0]
        try:
            if GLOB_CHARS & set(path):
                found = sorted(p for p in fs.glob(path) if fs.isfile(p))
                if not found:
                    raise SourceError(f"{pattern}: no files match")
                out.extend(_unstrip(protocol, fs, p) for p in found)
            elif fs.isfile(path):
                out.append(pattern)
            elif fs.exists(path):
                raise SourceError(f"{pattern}: is a directory, not a file (use a glob such as {pattern.rstrip('/')}/*.h5)")
            else:
                raise SourceError(f"{pattern}: no such file")
        except (OSError, PermissionError) as exc:
            raise SourceError(f"{pattern}: cannot list: {exc}") from exc
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend's own errors (botocore's NoCredentialsError ...)
            raise SourceError(f"{pattern}: cannot list: {type(exc).__name__}: {exc}") from None
    return out


def _unstrip(protocol: str | None, fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Turn a path returned by ``fs.glob`` back into a URL of the same protocol."""
    if protocol in (None, "file", "local"):
        return path
    if "://" in path:
        return path
    return str(fs.unstrip_protocol(path))


def _options_for(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options apply to remote URLs only; local files take none."""
    return {} if is_local(url) else dict(storage_options or {})


def source_facts(info: dict[str, Any]) -> dict[str, Any]:
    """Pick size, ETag and modification time out of an fsspec ``info`` dict.

    Filesystems spell these differently (``ETag``/``etag``, ``mtime``/
    ``LastModified``/``last_modified``); absent facts are left out.
    """
    facts: dict[str, Any] = {}
    if info.get("size") is not None:
        facts["size"] = int(info["size"])
    for key in ("ETag", "etag", "ETAG"):
        if info.get(key):
            facts["etag"] = str(info[key])
            break
    for key in ("mtime", "LastModified", "last_modified", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, _dt.datetime):
            value = value.isoformat()
        elif not isinstance(value, (int, float, str)):
            value = str(value)
        facts["mtime"] = value
        break
    return facts


@contextlib.contextmanager
def open_hdf5(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """Open ``url`` read-only as HDF5; yield the file and the source facts.

    Raises SourceError if the object is missing or not an HDF5 file.
    """
    fs, path = fsspec.core.url_to_fs(url, **_options_for(url, storage_options))
    try:
        facts = source_facts(fs.info(path))
    except FileNotFoundError as exc:
        raise SourceError(f"{url}: no such file") from exc
    except OSError as exc:
        raise SourceError(f"{url}: cannot stat: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a backend's own errors (botocore's NoCredentialsError ...)
        raise SourceError(f"{url}: cannot stat: {type(exc).__name__}: {exc}") from None
    with contextlib.ExitStack() as stack:
        try:
            if is_local(url):
                h5 = h5py.File(local_path(url), "r")
            else:
                # paused before the first read: h5py reads through fsspec from here on
                stack.enter_context(cyclic_gc_paused())
                fobj = stack.enter_context(
                    fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="blockcache",
                            cache_options={"maxblocks": MAX_BLOCKS})
                )
                h5 = h5py.File(fobj, "r")
        except OSError as exc:
            raise SourceError(f"{url}: not a readable HDF5/NetCDF4 file: {exc}") from exc
        stack.callback(h5.close)
        yield h5, facts
