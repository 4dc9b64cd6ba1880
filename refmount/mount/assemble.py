"""Building the layers of one mount from its config: store, cache, views, filesystems, router.

:func:`open_tree` is the one place that knows how the layers fit together
for a :class:`~refmount.config.options.MountConfig`: one fsspec backend and
one block cache (and one decoded-chunk cache) per mount, shared by every
reference set it serves, so a collection of sets still has a single memory
budget; a ``build`` function that turns one set into a
:class:`~refmount.fs.filesystem.RefFilesystem` (checking its URLs against
the ``allow`` policy once, and warning about refused ones before anything
is read); and the :class:`~refmount.fs.router.SetRouter` that decides when
to call it (see that module for the lifecycle of sets in a collection).
Every set, JSON or Parquet, is opened by
:func:`refmount.refs.open.open_reference_set`, which detects the format
itself. ``serve`` mounts what this returns and closes it with
:meth:`ServedTree.close`; ``refmount inspect`` reuses the option helpers
here so it reads a set exactly as a mount would.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from refmount.config.options import MountConfig, backend_options
from refmount.fs.filesystem import RefFilesystem, TreeOwner
from refmount.fs.router import SetRouter
from refmount.metrics import Metrics
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.read.tiers import open_tiers
from refmount.read.tiers.shared import shared_storage_options
from refmount.refs.collection import (
    JSON_SUFFIXES,
    PARQUET_MARKER,
    PARQUET_SUFFIXES,
    SetSource,
    discover,
    is_collection,
    set_name,
)
from refmount.refs.open import open_reference_set
from refmount.store.addresses import refusal
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import filesystem_options
from refmount.store.policy import origin_of
from refmount.urls import protocol_of, redact_url
from refmount.views.decoded import DecodedChunkCache
from refmount.views.present import cache_budgets, check_view_applies, present

log = logging.getLogger("refmount.sets")

#: The storage options of the shared cache tier: ``-o shared.NAME=VALUE`` (``[storage_options.shared]``).
SHARED_OPTIONS = "shared"


@dataclass
class ServedTree:
    """Everything one mount serves, closed together."""

    router: SetRouter
    backend: FsspecBackend
    cache: BlockCache
    metrics: Metrics

    def close(self) -> None:
        self.router.close()
        self.cache.close()
        self.backend.close()


def open_tree(config: MountConfig) -> ServedTree:
    """Build the layers for ``config`` (a MountConfig) and list or load its reference set(s)."""
    started = time.monotonic()
    metrics = Metrics()
    options = backend_options(config)
    backend = FsspecBackend(options, metrics)

    raw_budget, decoded_budget = cache_budgets(config.view, config.cache_size, config.block_size)
    tiers = open_tiers(
        disk_cache=config.disk_cache, disk_cache_size=config.disk_cache_size, shared_cache=config.shared_cache,
        shared_options=shared_storage_options(filesystem_options("s3", options),
                                              config.storage_options.get(SHARED_OPTIONS, {})),
        timeout=min(config.timeout, 10.0), queue_bytes=max(4 * config.block_size, raw_budget // 8),
        lease_wait=config.shared_cache_wait)
    cache = BlockCache(backend, capacity=raw_budget, block_size=config.block_size,
                       max_request=config.max_request, metrics=metrics, tiers=tiers, versions=backend.version_of)
    # one budget for every set, as the block cache
    chunk_cache = DecodedChunkCache(decoded_budget, metrics, max_chunk=config.max_decoded_chunk)
    storage = reference_storage_options(config)
    uid, gid = config.owner
    owner = TreeOwner(uid, gid, config.umask)
    collection = is_collection(config.source, storage)

    def build(source: SetSource) -> RefFilesystem:
        loaded_at = time.monotonic()
        info, namespace = open_reference_set(source.url, storage, record_cache=config.record_cache, ref=config.ref)
        check_view_applies(config.view, info.format, source.name or redact_url(source.url))
        backend.remember_sources(info.sources)
        mtime = info.mtime
        allowed: list[str] = []
        refused: list[str] = []
        reasons: dict[str, str] = {}
        for url in namespace.urls:  # one policy check per URL, for the warning and for connect()
            reason = refusal(options.policy, url)
            (allowed if reason is None else refused).append(url)
            if reason is not None:
                reasons[url] = reason
        refused.sort()
        if refused:
            log.warning("%s: %d referenced URL(s) are not allowed and will read as EACCES, e.g. %s: %s",
                        source.name or redact_url(source.url), len(refused), redact_url(refused[0]),
                        reasons[refused[0]])
        buckets = foreign_buckets(source.url, allowed)
        if buckets:
            log.info("%s: reads S3 bucket(s) other than its own with this mount's credentials: %s "
                     "(restrict with -o allow=s3://BUCKET/)", source.name or redact_url(source.url),
                     ", ".join(buckets[:20]) + (f" and {len(buckets) - 20} more" if len(buckets) > 20 else ""))
        backend.connect(allowed)
        # Under the netCDF view the view itself decodes chunks ahead of a sequential reader, as far as its run
        # justifies; the object's own stream readahead would also see those chunk reads as one stream and run
        # ahead to the end of the object even for a two-step slice.
        object_readahead = 0 if config.view == "netcdf" else config.readahead
        reader = Reader(namespace, cache, backend, readahead=object_readahead, metrics=metrics)
        shown, view_reader = present(config.view, namespace, reader, chunk_cache=chunk_cache, set_id=source.url,
                                     zarr_format=config.zarr_format, name=source.name or single_set_name(config.source),
                                     netcdf_format=config.netcdf_format, readahead=config.readahead)
        fs = RefFilesystem(shown, view_reader, owner, mtime)
        log.info("loaded %s: %d keys, %d directories in %.2f s", source.name or redact_url(source.url),
                 len(namespace), namespace.directory_count, time.monotonic() - loaded_at)
        return fs

    def list_sets() -> dict[str, SetSource]:
        if collection:
            return discover(config.source, storage)
        return {"": _single_source(config.source, storage)}

    router = SetRouter(config.source, collection=collection, build=build, owner=owner, metrics=metrics,
                       list_sets=list_sets, idle_unload=config.idle_unload)
    try:
        router.start()
    except BaseException:
        cache.close()
        backend.close()
        raise
    if collection:
        log.info("serving %d reference sets from %s (loaded on first use) after %.2f s",
                 int(metrics.snapshot()["sets"]), redact_url(config.source), time.monotonic() - started)
    return ServedTree(router, backend, cache, metrics)


def single_set_name(source: str) -> str:
    """What the files of a single set's netCDF view are named after: ``s3://b/era5.json`` -> ``era5`` (``era5.nc``)."""
    base = posixpath.basename(source.rstrip("/")) or "data"
    named = set_name(base)
    if named is not None:
        return named[0]
    for suffix in PARQUET_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def foreign_buckets(source_url: str, urls: list[str]) -> list[str]:
    """The S3 buckets ``urls`` reach other than the one holding the set, sorted."""
    def bucket(url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[0]

    own = bucket(source_url) if protocol_of(source_url) == "s3" else None
    return sorted({bucket(url) for url in urls if protocol_of(url) == "s3" and "://" in url} - {own})


def _single_source(source: str, storage: Mapping[str, Any]) -> SetSource:
    """The one set a non-collection source names: JSON by suffix, else Parquet if it holds the marker."""
    kind = "json"
    if not any(source.lower().endswith(suffix) for suffix in JSON_SUFFIXES):
        try:
            fs, path = fsspec.core.url_to_fs(source, **dict(storage))
            if fs.isdir(path) and fs.exists(posixpath.join(path, PARQUET_MARKER)):
                kind = "parquet"
        except (OSError, ValueError):
            pass
    return SetSource("", source, kind)


def reference_storage_options(config: MountConfig) -> dict[str, Any]:
    """fsspec options for reading the reference file itself."""
    options = filesystem_options(protocol_of(config.source), backend_options(config),
                                 redirect_origin=origin_of(config.source))
    options.pop("skip_instance_cache", None)
    return options
