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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refmount.config.options import MountConfig
from refmount.fs.filesystem import RefFilesystem, TreeOwner
from refmount.fs.router import SetRouter
from refmount.metrics import Metrics
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.refs.collection import (
    JSON_SUFFIXES,
    PARQUET_MARKER,
    SetSource,
    discover,
    is_collection,
)
from refmount.refs.open import open_reference_set
from refmount.store.fsspec_store import (
    BackendOptions,
    FsspecBackend,
    filesystem_options,
)
from refmount.store.policy import UrlPolicy
from refmount.store.redirects import origin_of
from refmount.urls import protocol_of, redact_url
from refmount.views.decoded import DecodedChunkCache
from refmount.views.present import cache_budgets, present

log = logging.getLogger("refmount.mount")


@dataclass
class ServedTree:
    """Everything one mount serves, closed together."""

    router: SetRouter
    backend: FsspecBackend
    cache: BlockCache
    metrics: Metrics

    def close(self) -> None:
        self.router.close()
        self.backend.close()


def open_tree(config: Any) -> ServedTree:
    """Build the layers for ``config`` (a MountConfig) and list or load its reference set(s)."""

    started = time.monotonic()
    metrics = Metrics()
    options = backend_options(config)
    backend = FsspecBackend(options, metrics)

    raw_budget, decoded_budget = cache_budgets(config.view, config.cache_size, config.block_size)
    cache = BlockCache(backend, capacity=raw_budget, block_size=config.block_size,
                       max_request=config.max_request, metrics=metrics)
    chunk_cache = DecodedChunkCache(decoded_budget, metrics)  # one budget for every set, as the block cache
    storage = reference_storage_options(config)
    uid, gid = config.owner
    owner = TreeOwner(uid, gid, config.umask)
    collection = is_collection(config.source, storage)

    def build(source: SetSource) -> RefFilesystem:
        loaded_at = time.monotonic()
        info, namespace = open_reference_set(source.url, storage, record_cache=config.record_cache)
        backend.remember_sources(info.sources)
        mtime = info.mtime
        allowed: list[str] = []
        refused: list[str] = []
        for url in namespace.urls:  # one policy check per URL, for the warning and for connect()
            (allowed if options.policy.permits(url) else refused).append(url)
        refused.sort()
        if refused:
            log.warning("%s: %d referenced URL(s) are not allowed and will read as EACCES, e.g. %s: %s",
                        source.name or redact_url(source.url), len(refused), redact_url(refused[0]),
                        options.policy.reason(refused[0]))
        backend.connect(allowed)
        reader = Reader(namespace, cache, backend, readahead=config.readahead, metrics=metrics)
        shown, view_reader = present(config.view, namespace, reader, chunk_cache=chunk_cache, set_id=source.url)
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
        backend.close()
        raise
    if collection:
        log.info("serving %d reference sets from %s (loaded on first use) after %.2f s",
                 len(router._slots), redact_url(config.source), time.monotonic() - started)
    return ServedTree(router, backend, cache, metrics)


def _single_source(source: str, storage: Mapping[str, Any]) -> SetSource:
    kind = "json"
    if not any(source.lower().endswith(suffix) for suffix in JSON_SUFFIXES):
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(source, **dict(storage))
            if fs.isdir(path) and fs.exists(posixpath.join(path, PARQUET_MARKER)):
                kind = "parquet"
        except (OSError, ValueError):
            pass
    return SetSource("", source, kind)


def backend_options(config: MountConfig) -> BackendOptions:
    return BackendOptions(
        endpoint_url=config.endpoint_url,
        region=config.region,
        profile=config.profile,
        anon=config.anon,
        timeout=config.timeout,
        retries=config.retries,
        max_concurrency=config.max_concurrency,
        storage_options=config.storage_options,
        policy=UrlPolicy.for_source(config.source, config.allow),
    )


def reference_storage_options(config: MountConfig) -> dict:
    """fsspec options for reading the reference file itself."""

    options = filesystem_options(protocol_of(config.source), backend_options(config),
                                 redirect_origin=origin_of(config.source))
    options.pop("skip_instance_cache", None)
    return options
