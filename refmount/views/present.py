"""Which view a reference set is shown in, and how the memory budget is split for it.

A view is a property of one reference set: :func:`present` wraps the set's
raw tree and reader, so a mount of several sets can show each in its own
view. ``raw`` shows the bytes as referenced; ``decoded`` (see
:mod:`refmount.views.decoded`) shows every chunk decoded and every
``.zarray`` without codecs; ``netcdf`` (see :mod:`refmount.views.netcdf`)
shows each group as a virtual netCDF classic file, its data decoded through
the same machinery. Raw and decoded can also be shown to Zarr v3 readers
(``zarr_format=3``, :mod:`refmount.views.zarr3`): a ``zarr.json`` beside
each group and array, over whichever of the two views was chosen.
Wrapping is lazy: nothing of the set is read here.
"""

from __future__ import annotations

import logging
from typing import Any

from refmount.errors import ConfigError
from refmount.refs.model import Reference
from refmount.refs.tree import File, ReferenceTree
from refmount.views.decoded import DecodedChunkCache, DecodedTree, DecodingReader
from refmount.views.netcdf.plan import FORMATS
from refmount.views.netcdf.tree import DecodedChunks, NetcdfReader, NetcdfTree, NetcdfView
from refmount.views.zarr3 import Zarr3Tree

log = logging.getLogger("refmount.decoded")

VIEWS = ("raw", "decoded", "netcdf")

#: The Zarr formats a set can be shown in: 2 (its own metadata) or 3 (a zarr.json added per node).
ZARR_FORMATS = (2, 3)

#: Share of ``cache_size`` given to decoded chunks under the decoded view.
DECODED_SHARE = 0.5


def parse_view(text: Any) -> str:
    """The ``view`` option: ``raw`` (bytes as referenced), ``decoded`` or ``netcdf``."""
    value = str(text).strip().lower()
    if value not in VIEWS:
        raise ValueError(f"{text!r} is not a view (use raw or decoded, or netcdf for netCDF classic files)")
    return value


def parse_netcdf_format(text: Any) -> str:
    """The ``netcdf_format`` option: ``auto`` (CDF-2 unless the data needs CDF-5), ``cdf1``, ``cdf2`` or ``cdf5``."""
    value = str(text).strip().lower().replace("-", "")
    if value not in FORMATS:
        raise ValueError(f"{text!r} is not a netCDF format (use {', '.join(FORMATS)})")
    return value


def parse_zarr_format(text: Any) -> int:
    """The ``zarr_format`` option: 2 (the set's v2 metadata only) or 3 (also a zarr.json for v3 readers)."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a Zarr format (use 2 or 3)") from None
    if value not in ZARR_FORMATS:
        raise ValueError(f"{text!r} is not a Zarr format (use 2 or 3)")
    return value


def check_view_applies(view: str, set_format: str, shown: str) -> None:
    """Refuse a view that has nothing to work on in a set of ``set_format``, rather than show it unchanged or empty.

    The decoded and netCDF views are made from Zarr v2 metadata (``.zarray``);
    an Icechunk repository holds Zarr v3 (``zarr.json``) only, so under them it
    would show its chunks still encoded, or a netCDF file without variables.
    """
    if set_format == "icechunk" and view != "raw":
        raise ConfigError(f"option view: {view} is made from Zarr v2 metadata (.zarray), and {shown} is an Icechunk "
                          "repository (Zarr v3 only): mount it with view=raw")


def cache_budgets(view: str, cache_size: int, block_size: int) -> tuple[int, int]:
    """Split one memory budget into (raw block cache, decoded chunk cache) bytes.

    The raw cache always keeps at least one block so a read can be served.
    """
    if view == "raw":
        return cache_size, 0
    decoded = int(cache_size * DECODED_SHARE)
    raw = cache_size - decoded
    if raw < block_size:
        raw = min(block_size, cache_size)
        decoded = cache_size - raw
    return raw, decoded


def present(
    view: str,
    namespace: ReferenceTree,
    reader: Any,
    *,
    chunk_cache: DecodedChunkCache | None = None,
    set_id: str = "",
    zarr_format: int = 2,
    name: str = "data",
    netcdf_format: str = "auto",
    readahead: int = 32 << 20,
) -> tuple[ReferenceTree, Any]:
    """The tree and reader one reference set shows in ``view`` (``raw``, format 2 returns them unchanged).

    ``reader`` is the set's raw reader (:class:`refmount.read.reader.Reader`);
    under ``decoded`` it reads the metadata documents that are not inline and
    the raw bytes of every chunk decoded. ``zarr_format=3`` wraps the result
    in :class:`Zarr3Tree`; its documents are inline, so the reader is the same.
    Under ``netcdf``, ``name`` names the files (``name.nc``, ``name.GROUP.nc``),
    ``netcdf_format`` is the option of that name and ``readahead`` bounds the
    chunks decoded ahead of a sequential reader.
    """
    if zarr_format not in ZARR_FORMATS:
        raise ValueError(f"unknown zarr_format {zarr_format!r}")
    if zarr_format == 3 and view == "netcdf":
        raise ValueError("zarr_format=3 applies to the raw and decoded views, not to view=netcdf")
    tree, shown_reader = _present_view(view, namespace, reader, chunk_cache, set_id, name, netcdf_format, readahead)
    if zarr_format == 3:
        log.info("zarr v3 view%s: a zarr.json beside each .zgroup and .zarray, built as first looked up",
                 f" of {set_id}" if set_id else "")
        tree = Zarr3Tree(tree, lambda key, ref: _read_whole(shown_reader, key, ref))
    return tree, shown_reader


def _read_whole(reader: Any, key: str, ref: Reference) -> bytes:
    """The bytes of a metadata document that is not inline."""
    data: bytes = reader.read(File(key, ref), 0, reader.size(ref))
    return data


def _present_view(
    view: str, namespace: ReferenceTree, reader: Any, chunk_cache: DecodedChunkCache | None, set_id: str,
    name: str, netcdf_format: str, readahead: int,
) -> tuple[ReferenceTree, Any]:
    if view == "raw":
        return namespace, reader
    if view not in ("decoded", "netcdf"):
        raise ValueError(f"unknown view {view!r}")
    if chunk_cache is None:
        chunk_cache = DecodedChunkCache(reader.cache.block_size * 64, reader.metrics)

    def read_meta(key: str, ref: Reference) -> bytes:
        return _read_whole(reader, key, ref)

    if view == "netcdf":
        raw_tree = DecodedTree(namespace, read_meta, chunk_cache_capacity=chunk_cache.capacity, nczarr=False)
        decoding = DecodingReader(reader, chunk_cache, set_id)
        netcdf = NetcdfView(DecodedChunks(raw_tree, decoding), lambda file: read_meta(file.path, file.ref), name,
                            netcdf_format)
        logging.getLogger("refmount.netcdf").info(
            "netcdf view%s: each group is a netCDF classic file (%s), made from its metadata when first opened; "
            "decoded chunk cache %d bytes", f" of {set_id}" if set_id else "", netcdf_format, chunk_cache.capacity)
        return NetcdfTree(netcdf), NetcdfReader(netcdf, decoding, min(readahead, chunk_cache.capacity // 4))
    log.info("decoded view%s: arrays are decoded from their metadata as they are first read; decoded chunk "
             "cache %d bytes", f" of {set_id}" if set_id else "", chunk_cache.capacity)
    tree = DecodedTree(namespace, read_meta, chunk_cache_capacity=chunk_cache.capacity)
    return tree, DecodingReader(reader, chunk_cache, set_id)
