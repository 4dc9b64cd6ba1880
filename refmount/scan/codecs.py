"""HDF5 filter pipelines to Zarr v2 ``filters`` / ``compressor``.

HDF5 applies its filters in pipeline order when writing and in reverse when
reading. Zarr v2 applies ``filters`` in order and then ``compressor`` when
writing, and the reverse when reading. So the HDF5 pipeline maps one to one
onto Zarr ``filters`` in the same order; when the last HDF5 filter is a
compressor it is moved to ``compressor`` (same decode order, and what most
readers expect). Filters whose stored format no numcodecs codec decodes are
rejected with a reason instead of producing references that decode wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_FLETCHER32 = 3
FILTER_SZIP = 4
FILTER_NBIT = 5
FILTER_SCALEOFFSET = 6
FILTER_BZIP2 = 307
FILTER_BLOSC = 32001
FILTER_LZ4 = 32004
FILTER_BITSHUFFLE = 32008
FILTER_ZSTD = 32015
FILTER_BLOSC2 = 32026

#: Filters known not to be decodable by any numcodecs codec, with the reason.
UNSUPPORTED_REASONS: dict[int, str] = {
    FILTER_SZIP: "szip compression (filter 4) has no numcodecs codec",
    FILTER_NBIT: "n-bit packing (filter 5) has no numcodecs codec",
    FILTER_SCALEOFFSET: "scale-offset filter (filter 6) has no numcodecs codec",
    FILTER_LZ4: (
        "HDF5 LZ4 filter (32004) frames data as an 8-byte total size plus per-block "
        "big-endian sizes, which numcodecs LZ4 (4-byte little-endian size prefix) cannot decode"
    ),
    FILTER_BITSHUFFLE: "bitshuffle filter (32008) has no numcodecs codec",
    FILTER_BLOSC2: "Blosc2 filter (32026) has no numcodecs codec",
}

#: Blosc compressor codes as stored in the HDF5 blosc filter's cd_values[6].
BLOSC_CNAMES: dict[int, str] = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}

#: Codec ids that compress (candidates for the Zarr ``compressor`` slot).
COMPRESSOR_IDS: frozenset[str] = frozenset({"zlib", "blosc", "zstd", "bz2"})


class UnsupportedFilter(ValueError):
    """A filter in the pipeline cannot be expressed as a numcodecs codec."""


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """One entry of an HDF5 filter pipeline, as H5Pget_filter reports it."""

    id: int
    flags: int
    values: tuple[int, ...]
    name: str


@dataclass(frozen=True, slots=True)
class ZarrCodecs:
    """The Zarr v2 ``filters`` (None when empty) and ``compressor`` of an array."""

    filters: list[dict[str, Any]] | None
    compressor: dict[str, Any] | None


def read_pipeline(dcpl: Any) -> list[FilterSpec]:
    """Read the filter pipeline from an h5py dataset creation property list."""
    specs = []
    for i in range(dcpl.get_nfilters()):
        fid, flags, values, name = dcpl.get_filter(i)
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        specs.append(FilterSpec(int(fid), int(flags), tuple(int(v) for v in values), text))
    return specs


def codec_for(spec: FilterSpec, dtype: np.dtype) -> dict[str, Any]:
    """numcodecs configuration decoding what ``spec`` encoded, or UnsupportedFilter."""
    v = spec.values
    if spec.id == FILTER_DEFLATE:
        # HDF5 deflate writes a zlib stream (header + adler32), exactly numcodecs Zlib.
        return {"id": "zlib", "level": v[0] if v else 4}
    if spec.id == FILTER_SHUFFLE:
        return {"id": "shuffle", "elementsize": v[0] if v else dtype.itemsize}
    if spec.id == FILTER_FLETCHER32:
        # numcodecs Fletcher32 checks and strips the trailing 4-byte checksum HDF5 appends.
        return {"id": "fletcher32"}
    if spec.id == FILTER_BZIP2:
        return {"id": "bz2", "level": v[0] if v else 9}
    if spec.id == FILTER_ZSTD:
        return {"id": "zstd", "level": v[0] if v else 0}
    if spec.id == FILTER_BLOSC:
        # cd_values: version, blosc version, typesize, bufsize, clevel, shuffle, compressor.
        # Decoding reads the blosc header, so these only document how it was written.
        return {
            "id": "blosc",
            "cname": BLOSC_CNAMES.get(v[6], "blosclz") if len(v) > 6 else "blosclz",
            "clevel": v[4] if len(v) > 4 else 5,
            "shuffle": v[5] if len(v) > 5 else 1,
            "blocksize": 0,
        }
    reason = UNSUPPORTED_REASONS.get(spec.id)
    if reason is None:
        reason = f"filter {spec.id} ({spec.name or 'unnamed'}) has no known numcodecs codec"
    raise UnsupportedFilter(reason)


def map_pipeline(pipeline: list[FilterSpec], dtype: np.dtype) -> ZarrCodecs:
    """Map a whole HDF5 pipeline to Zarr ``filters`` and ``compressor`` (see module doc)."""
    codecs = [codec_for(spec, dtype) for spec in pipeline]
    compressor = None
    if codecs and codecs[-1]["id"] in COMPRESSOR_IDS:
        compressor = codecs.pop()
    return ZarrCodecs(filters=codecs or None, compressor=compressor)
