"""The HDF5/NetCDF4 scanner: one pass over a file with h5py, producing references.

Walks groups and datasets, maps each dataset's layout, datatype, filters
and fill value to a Zarr v2 array whose chunks are byte ranges of the
source file. What cannot be referenced in place is inlined decoded when
small, otherwise skipped; either way it is reported with the reason, and
the rest of the file still gets its references.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numcodecs
import numpy as np

from refmount.errors import RefmountError
from refmount.scan.attrs import convert_attrs
from refmount.scan.codecs import (
    UnsupportedFilter,
    ZarrCodecs,
    map_pipeline,
    read_pipeline,
)
from refmount.scan.dtypes import (
    DtypeKind,
    UnrepresentableDtype,
    classify_dtype,
    encode_fill_value,
    zarr_dtype,
)
from refmount.scan.output import (
    chunk_key,
    dumps,
    inline_value,
    meta_key,
    range_ref,
    reference_set,
    zarray,
)
from refmount.scan.sources import canonical_url, open_hdf5

#: Chunks stored in fewer bytes than this are copied into the reference set
#: (kerchunk's default): saves a request per tiny chunk, keeps the JSON small.
DEFAULT_INLINE_THRESHOLD = 100
#: Datasets that cannot be referenced in place are inlined decoded up to this
#: many bytes (uncompressed); bigger ones are skipped.
DEFAULT_DECODED_INLINE_LIMIT = 1 << 16

NETCDF_DIM_ONLY = b"This is a netCDF dimension but not a netCDF variable"

INLINED_DECODED = "inlined decoded"
SKIPPED = "skipped"
ATTRIBUTE_DROPPED = "attribute dropped"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the file that could not be referenced as stored."""

    path: str  # HDF5 path of the object
    reason: str
    action: str  # INLINED_DECODED | SKIPPED | ATTRIBUTE_DROPPED
    detail: str = ""  # why the action was chosen, e.g. too big to inline

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.path}: {self.reason} ({self.action}{detail})"


@dataclass
class ScanReport:
    """Counts and problems of one scan, for the summary and for --strict."""

    url: str
    datasets: int = 0
    chunks: int = 0
    bytes_referenced: int = 0
    inlined_chunks: int = 0
    bytes_inlined: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> list[Problem]:
        """Objects left out of the reference set entirely."""
        return [p for p in self.problems if p.action == SKIPPED]

    def skipped_reasons(self) -> Counter[str]:
        """How many objects were skipped for each reason."""
        return Counter(p.reason for p in self.skipped)

    def summary(self) -> str:
        """One line of counts, as printed after each file."""
        return (
            f"{self.datasets} datasets, {self.chunks} chunks, "
            f"{self.bytes_referenced} bytes referenced, {self.inlined_chunks} chunks inlined "
            f"({self.bytes_inlined} bytes), {len(self.skipped)} skipped, "
            f"{len(self.problems) - len(self.skipped)} other problems"
        )


@dataclass
class ScanResult:
    """The reference set (kerchunk JSON v1 as a dict) and the report of its scan."""

    refs: dict[str, Any]
    report: ScanReport


class StrictScanError(RefmountError):
    """--strict: the file has objects that could not be represented as stored."""

    def __init__(self, result: ScanResult) -> None:
        self.result = result
        lines = "\n".join(f"  {p}" for p in result.report.problems)
        super().__init__(f"{result.report.url}: {len(result.report.problems)} object(s) cannot be represented:\n{lines}")


class _Unrepresentable(Exception):
    """Internal: this dataset cannot be referenced in place (``decodable``: h5py can still read it)."""

    def __init__(self, reason: str, decodable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decodable = decodable


def scan_hdf5(
    url_or_path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    inline_threshold: int = DEFAULT_INLINE_THRESHOLD,
    url: str | None = None,
    strict: bool = False,
    decoded_inline_limit: int = DEFAULT_DECODED_INLINE_LIMIT,
) -> ScanResult:
    """Scan one HDF5/NetCDF4 file into a kerchunk v1 reference set.

    ``url`` is the URL written into the references (where the file really
    lives) when it differs from where it is read now; then only its size is
    recorded as a staleness fact, as the copy's ETag and mtime would not
    match the original. Raises SourceError for missing/non-HDF5 input and
    StrictScanError when ``strict`` and something could not be represented.
    """
    source_url = canonical_url(url_or_path)
    final_url = url or source_url
    with open_hdf5(url_or_path, storage_options) as (h5, facts):
        scanner = _Scanner(h5, final_url, inline_threshold, decoded_inline_limit)
        scanner.scan()
    if final_url != source_url:
        facts = {k: v for k, v in facts.items() if k == "size"}
    result = ScanResult(reference_set(final_url, scanner.refs, {final_url: facts}), scanner.report)
    if strict and result.report.problems:
        raise StrictScanError(result)
    return result


class DimensionNamer:
    """Names the axes of datasets for ``_ARRAY_DIMENSIONS``.

    Dimension scales give real names. Axes without one get netCDF-style
    phony names, shared per size across the file: the k-th unnamed axis of
    size n in any dataset is always ``phony_dim_<i>`` for the same i.
    """

    def __init__(self) -> None:
        self._phony: dict[int, list[str]] = {}
        self._count = 0

    def phony(self, size: int, nth: int) -> str:
        """The name of the ``nth`` phony dimension of length ``size`` (created on demand)."""
        names = self._phony.setdefault(size, [])
        while len(names) <= nth:
            names.append(f"phony_dim_{self._count}")
            self._count += 1
        return names[nth]

    def names_for(self, ds: h5py.Dataset) -> list[str]:
        """Dimension names of every axis of ``ds``."""
        seen: Counter[int] = Counter()
        is_scale = h5py.h5ds.is_scale(ds.id)
        names = []
        for axis, size in enumerate(ds.shape):
            name = posixpath.basename(ds.name) if (axis == 0 and is_scale) else _scale_name(ds, axis)
            if name is None:
                name = self.phony(size, seen[size])
                seen[size] += 1
            names.append(name)
        return names


def _scale_name(ds: h5py.Dataset, axis: int) -> str | None:
    """Basename of the first dimension scale attached to ``axis``, if any."""
    try:
        dim = ds.dims[axis]
        if len(dim):
            scale_name = dim[0].name
            return posixpath.basename(scale_name) if scale_name else None
    except (KeyError, RuntimeError, ValueError, OSError):
        return None
    return None


def is_netcdf_dimension_only(ds: h5py.Dataset) -> bool:
    """True for netCDF-4's placeholder datasets that only carry a dimension."""
    name = ds.attrs.get("NAME") if "NAME" in ds.attrs else None
    return isinstance(name, (bytes, np.bytes_)) and bytes(name).startswith(NETCDF_DIM_ONLY)


def packed_dtype(dt: np.dtype) -> np.dtype:
    """The same fields without padding, for decoded data written by us."""
    if dt.names is None:
        return dt
    fields: Mapping[str, Any] = dt.fields or {}
    return np.dtype([(n, packed_dtype(fields[n][0])) for n in dt.names])


def _load_filter_plugins() -> None:
    """Make HDF5 plugin filters (blosc, lz4, ...) readable when hdf5plugin is installed.

    Only needed to decode datasets we inline decoded; optional by design.
    """
    try:
        import hdf5plugin  # noqa: F401  (registers the filters with HDF5 on import)
    except ImportError:
        pass


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    return tuple(math.ceil(s / c) if c else 0 for s, c in zip(shape, chunks, strict=False))


class _Scanner:
    """Scan state for one file: the references built so far and the report."""

    def __init__(self, h5: h5py.File, url: str, inline_threshold: int, decoded_limit: int) -> None:
        self.h5 = h5
        self.refs: dict[str, Any] = {}
        self.report = ScanReport(url)
        self.inline_threshold = inline_threshold
        self.decoded_limit = decoded_limit
        self.dims = DimensionNamer()
        self._groups_seen: set[Any] = set()

    def problem(self, path: str, reason: str, action: str, detail: str = "") -> None:
        self.report.problems.append(Problem(path, reason, action, detail))

    def scan(self) -> None:
        self.group(self.h5["/"], "")

    # -- groups -------------------------------------------------------------

    def group(self, grp: h5py.Group, zpath: str) -> None:
        """Emit ``.zgroup``/``.zattrs`` and visit members; cycles are cut."""
        self._groups_seen.add(hash(grp.id))
        self.refs[meta_key(zpath, ".zgroup")] = dumps({"zarr_format": 2})
        attrs, problems = convert_attrs(grp.attrs)
        for attr, reason in problems:
            self.problem(grp.name, f"attribute {attr!r}: {reason}", ATTRIBUTE_DROPPED)
        self.refs[meta_key(zpath, ".zattrs")] = dumps(attrs)
        for name in grp:
            self.member(grp, name, f"{zpath}/{name}" if zpath else name)

    def member(self, grp: h5py.Group, name: str, zpath: str) -> None:
        """Resolve one link of a group and dispatch on what it points to."""
        h5path = posixpath.join(grp.name, name)
        link = grp.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            self.problem(h5path, f"external link to {link.filename}:{link.path} is not followed", SKIPPED)
            return
        try:
            obj = grp[name]
        except (KeyError, OSError) as exc:
            target = link.path if isinstance(link, h5py.SoftLink) else "?"
            self.problem(h5path, f"soft link to missing target {target} ({exc})", SKIPPED)
            return
        if isinstance(obj, h5py.Group):
            if hash(obj.id) in self._groups_seen:
                self.problem(h5path, f"link back to group {obj.name} (cycle) is not followed", SKIPPED)
                return
            self.group(obj, zpath)
        elif isinstance(obj, h5py.Dataset):
            self.dataset(obj, zpath)
        # Committed datatypes carry no data: nothing to present.

    # -- datasets -----------------------------------------------------------

    def dataset(self, ds: h5py.Dataset, zpath: str) -> None:
        """Emit one Zarr array for ``ds``, or report why it cannot be."""
        if is_netcdf_dimension_only(ds):
            return
        try:
            kind = classify_dtype(ds.dtype)
        except UnrepresentableDtype as exc:
            self.problem(ds.name, f"datatype: {exc}", SKIPPED)
            return
        except (TypeError, ValueError, OSError) as exc:  # h5py has no numpy type for it
            self.problem(ds.name, f"datatype has no numpy equivalent: {exc}", SKIPPED)
            return
        fill, fill_from_attr = self.fill_value(ds)
        attrs, problems = convert_attrs(ds.attrs, drop=("_FillValue",) if fill_from_attr else ())
        for attr, reason in problems:
            self.problem(ds.name, f"attribute {attr!r}: {reason}", ATTRIBUTE_DROPPED)
        attrs["_ARRAY_DIMENSIONS"] = self.dims.names_for(ds)
        try:
            if kind.kind == "fixed":
                meta, chunks = self.fixed(ds, zpath, kind.dtype, fill)
            else:
                meta, chunks = self.vlen(ds, zpath, kind)
        except _Unrepresentable as exc:
            self.unrepresentable(ds, zpath, exc, attrs, fill)
            return
        self.emit(zpath, meta, attrs, chunks)

    def emit(self, zpath: str, meta: dict[str, Any], attrs: dict[str, Any], chunks: dict[str, Any]) -> None:
        self.refs[meta_key(zpath, ".zarray")] = dumps(meta)
        self.refs[meta_key(zpath, ".zattrs")] = dumps(attrs)
        self.refs.update(chunks)
        self.report.datasets += 1

    def fill_value(self, ds: h5py.Dataset) -> tuple[Any, bool]:
        """The fill value readers must see: netCDF's ``_FillValue`` if set, else HDF5's if user-defined.

        An HDF5 default fill value (zero, never chosen by the writer) becomes
        ``null``: Zarr readers still see zeros in unwritten chunks, but xarray
        does not mistake every genuine zero (a first coordinate, a count) for
        a missing value, as it would with ``fill_value: 0``.
        """
        if "_FillValue" in ds.attrs:
            try:
                value = np.asarray(ds.attrs["_FillValue"])
                if value.size == 1:
                    return value.reshape(()).astype(ds.dtype)[()], True
            except (TypeError, ValueError, OSError):
                pass
        try:
            if ds.id.get_create_plist().fill_value_defined() != h5py.h5d.FILL_VALUE_USER_DEFINED:
                return None, False
            return ds.fillvalue, False
        except (TypeError, ValueError, OSError):
            return None, False

    def fixed(self, ds: h5py.Dataset, zpath: str, dt: np.dtype, fill: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """References for a fixed-size dtype in any storage layout."""
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.VIRTUAL:
            raise _Unrepresentable("virtual dataset (VDS): data lives in other datasets", decodable=True)
        if dcpl.get_external_count() > 0:
            raise _Unrepresentable("raw data stored in external files", decodable=True)
        try:
            zdt = zarr_dtype(dt)
            fill_json = encode_fill_value(fill, dt)
        except UnrepresentableDtype as exc:
            raise _Unrepresentable(f"datatype: {exc}", decodable=True) from exc
        pipeline = read_pipeline(dcpl)
        found: list[tuple[tuple[int, ...], int, int]] = []
        if layout == h5py.h5d.CHUNKED:
            chunk_shape = ds.chunks
            found, mask = self.chunk_index(ds, chunk_shape)
            # An optional filter that failed on every chunk was skipped on every chunk.
            pipeline = [spec for i, spec in enumerate(pipeline) if not mask & (1 << i)]
        else:
            chunk_shape = ds.shape
        try:
            codecs = map_pipeline(pipeline, dt)
        except UnsupportedFilter as exc:
            raise _Unrepresentable(str(exc), decodable=True) from exc
        if layout == h5py.h5d.CHUNKED:
            chunks = self.chunked(ds, zpath, chunk_shape, found)
        elif layout == h5py.h5d.CONTIGUOUS:
            chunks = self.contiguous(ds, zpath)
        else:  # COMPACT: data lives in the object header, so carry it inline
            chunks = self.inline_decoded(ds, zpath, dt)
            codecs = ZarrCodecs(None, None)
        meta = zarray(ds.shape, chunk_shape, zdt, fill_json, codecs.compressor, codecs.filters)
        return meta, chunks

    def chunk_index(
        self, ds: h5py.Dataset, chunk_shape: tuple[int, ...]
    ) -> tuple[list[tuple[tuple[int, ...], int, int]], int]:
        """(chunk index, file offset, stored size) of every written chunk, and their filter mask.

        Chunks outside the current extent (left by shrinking) are dropped.
        Chunks with different filter masks cannot share one Zarr pipeline.
        """
        grid = _grid(ds.shape, chunk_shape)
        found: list[tuple[tuple[int, ...], int, int]] = []
        masks: set[int] = set()

        def visit(info: Any) -> None:
            masks.add(info.filter_mask)
            index = tuple(o // c for o, c in zip(info.chunk_offset, chunk_shape, strict=False))
            if all(i < n for i, n in zip(index, grid, strict=False)):
                found.append((index, info.byte_offset, info.size))

        try:
            ds.id.chunk_iter(visit)
        except (AttributeError, NotImplementedError):
            for i in range(ds.id.get_num_chunks()):
                visit(ds.id.get_chunk_info(i))
        if len(masks) > 1:
            raise _Unrepresentable(
                f"chunks skip different optional filters (filter masks {sorted(masks)}); "
                "Zarr needs one codec pipeline for all chunks",
                decodable=True,
            )
        return found, masks.pop() if masks else 0

    def chunked(
        self, ds: h5py.Dataset, zpath: str, chunk_shape: tuple[int, ...],
        found: list[tuple[tuple[int, ...], int, int]],
    ) -> dict[str, Any]:
        """One reference per written chunk; unwritten chunks are left out (read as fill)."""
        out: dict[str, Any] = {}
        for index, offset, size in found:
            key = chunk_key(zpath, index)
            if size < self.inline_threshold:
                offsets = tuple(i * c for i, c in zip(index, chunk_shape, strict=False))
                out[key] = inline_value(ds.id.read_direct_chunk(offsets)[1])
                self.count_inline(size)
            else:
                out[key] = range_ref(offset, size)
                self.count_range(size)
        return out

    def contiguous(self, ds: h5py.Dataset, zpath: str) -> dict[str, Any]:
        """A contiguous dataset is one chunk spanning the whole array (none if never written)."""
        offset = ds.id.get_offset()
        size = ds.id.get_storage_size()
        if offset is None or size == 0 or ds.size == 0:
            return {}
        key = chunk_key(zpath, (0,) * ds.ndim)
        if size < self.inline_threshold:
            data = np.ascontiguousarray(ds[()]).tobytes()
            self.count_inline(len(data))
            return {key: inline_value(data)}
        self.count_range(size)
        return {key: range_ref(offset, size)}

    def inline_decoded(self, ds: h5py.Dataset, zpath: str, dt: np.dtype) -> dict[str, Any]:
        """Read the whole dataset with h5py and carry its raw bytes as one inline chunk."""
        if ds.size == 0:
            return {}
        data = np.ascontiguousarray(np.asarray(ds[()]).astype(dt, copy=False)).tobytes()
        self.count_inline(len(data))
        return {chunk_key(zpath, (0,) * ds.ndim): inline_value(data)}

    def vlen(self, ds: h5py.Dataset, zpath: str, kind: DtypeKind) -> tuple[dict[str, Any], dict[str, Any]]:
        """Variable-length strings: values live in the heap, so inline them with an object codec."""
        utf8 = kind.kind == "vlen-utf8"
        codec = numcodecs.VLenUTF8() if utf8 else numcodecs.VLenBytes()
        meta = zarray(ds.shape, ds.shape, "|O", "" if utf8 else None, None, [codec.get_config()])
        if ds.size == 0:
            return meta, {}
        values = ds.asstr()[()] if utf8 else ds[()]
        flat = np.empty(ds.size, dtype=object)
        flat[:] = list(np.asarray(values, dtype=object).reshape(-1))
        data = codec.encode(flat)
        self.count_inline(len(data))
        return meta, {chunk_key(zpath, (0,) * ds.ndim): inline_value(data)}

    def unrepresentable(
        self, ds: h5py.Dataset, zpath: str, exc: _Unrepresentable, attrs: dict[str, Any], fill: Any
    ) -> None:
        """Inline a small unrepresentable dataset decoded; skip a large one. Report both."""
        dt = packed_dtype(ds.dtype)
        nbytes = ds.size * dt.itemsize
        if not exc.decodable or nbytes > self.decoded_limit:
            limit = "" if not exc.decodable else f"{nbytes} bytes decoded exceed the inline limit {self.decoded_limit}"
            self.problem(ds.name, exc.reason, SKIPPED, limit)
            return
        _load_filter_plugins()
        try:
            chunks = self.inline_decoded(ds, zpath, dt)
            fill_json = encode_fill_value(np.asarray(fill).astype(dt) if fill is not None else None, dt)
            meta = zarray(ds.shape, ds.shape, zarr_dtype(dt), fill_json, None, None)
        except (OSError, TypeError, ValueError) as err:
            self.problem(ds.name, exc.reason, SKIPPED, f"reading it decoded failed: {err}")
            return
        self.problem(ds.name, exc.reason, INLINED_DECODED)
        self.emit(zpath, meta, attrs, chunks)

    def count_inline(self, size: int) -> None:
        self.report.inlined_chunks += 1
        self.report.bytes_inlined += size

    def count_range(self, size: int) -> None:
        self.report.chunks += 1
        self.report.bytes_referenced += size
