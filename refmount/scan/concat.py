"""Combining the reference sets of many files into one set concatenated along a dimension.

Pure logic over scanned sets (no I/O): the caller hands in each file's
reference set together with the decoded values this module asks for
(:func:`plan_reads`), and gets one kerchunk v1 set back, or a
:class:`ConcatError` listing every problem with the file and variable it is
about. The rules:

* Files are ordered by the values of the dimension's coordinate variable
  (the 1-d array named after the dimension), never by name; the values must
  be strictly monotonic within and across files, so overlapping files are
  refused. Differing CF time units are put on one scale first.
* The coordinate, and its CF bounds variable, are written inline, decoded, as one chunk.
* An array along the dimension keeps its references: each file's chunk keys
  are shifted along the dimension by the chunks of the files before it. That
  needs one chunk grid: the same chunk shape, codecs and dtype in every file,
  and every file but the last holding a whole number of chunks. An array
  that breaks this is written inline, decoded, if the caller could read it
  (small arrays); otherwise it is refused, naming the file and variable.
* An array without the dimension must hold the same values and attributes in
  every file; a mismatch is refused, or with ``mismatch="first"`` the first
  file's is kept, with ``mismatch="drop"`` the array is left out (both noted).
  ``drop`` also leaves out arrays some files lack (refused otherwise).
* Attributes of groups and arrays are the first file's (in dataset order),
  as xarray's ``combine_attrs="override"``.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numpy as np

from refmount.errors import RefmountError
from refmount.scan.chunkdata import array_nbytes
from refmount.scan.output import chunk_key, dumps, inline_value
from refmount.scan.timeunits import IncompatibleTimeUnits, common_time_scale, parse_time_units

MISMATCH_POLICIES = ("refuse", "first", "drop")
#: Attributes that change what an array's stored numbers mean: they must agree
#: across files for the numbers to be concatenated as they are.
DECODING_ATTRS = ("units", "calendar", "scale_factor", "add_offset", "missing_value", "_FillValue", "_Unsigned")
#: ``.zarray`` fields that must agree across files for chunks to share one grid.
LAYOUT_FIELDS = ("dtype", "compressor", "filters", "fill_value", "order", "dimension_separator")


class ConcatError(RefmountError):
    """The files cannot be combined into one set; ``problems`` names each file and variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot concatenate:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class FileScan:
    """One scanned file: its reference set and the decoded values :func:`plan_reads` asked for."""

    source: str  # as the user named it, for messages
    doc: dict[str, Any]  # kerchunk v1 set of this file
    values: dict[str, np.ndarray] = field(default_factory=dict)  # coordinates, small unaligned arrays
    digests: dict[str, str] = field(default_factory=dict)  # arrays without the dimension


@dataclass
class ConcatResult:
    """The combined set, the sources in dataset order and notes on what was dropped or kept."""

    doc: dict[str, Any]
    order: list[str]
    notes: list[str]


@dataclass(frozen=True)
class ReadPlan:
    """Which arrays of one file the combiner needs decoded values (or digests) of."""

    coordinates: list[str]
    independent: list[str]


@dataclass
class _Array:
    meta: dict[str, Any]
    attrs: dict[str, Any]

    @property
    def dims(self) -> list[str]:
        dims = self.attrs.get("_ARRAY_DIMENSIONS")
        return list(dims) if isinstance(dims, list) else []


def arrays_of(refs: Mapping[str, Any]) -> dict[str, _Array]:
    """Every array of a set by path, with its metadata and attributes."""
    out = {}
    for key, value in refs.items():
        if key.endswith("/.zarray"):
            path = key[: -len("/.zarray")]
            attrs = refs.get(f"{path}/.zattrs")
            out[path] = _Array(json.loads(value), json.loads(attrs) if attrs else {})
    return out


def is_coordinate(path: str, array: _Array, dim: str) -> bool:
    """The dimension's coordinate variable: a 1-d array along ``dim`` named ``dim``."""
    return posixpath.basename(path) == dim and array.dims == [dim]


def bounds_of(path: str, table: Mapping[str, _Array]) -> str | None:
    """The CF bounds variable of coordinate ``path`` (its ``bounds`` attribute), when the set has it.

    Bounds carry no units of their own by convention: they are in their
    coordinate's, so they must be put on the same time scale with it.
    """
    name = table[path].attrs.get("bounds")
    candidate = posixpath.join(posixpath.dirname(path), name) if isinstance(name, str) and name else None
    return candidate if candidate in table else None


def plan_reads(refs: Mapping[str, Any], dim: str) -> ReadPlan:
    """The arrays of one file to read while it is scanned: coordinates (and their bounds), arrays without ``dim``."""
    coordinates, independent = [], []
    table = arrays_of(refs)
    for path, array in sorted(table.items()):
        if dim not in array.dims:
            independent.append(path)
        elif is_coordinate(path, array, dim):
            coordinates.append(path)
            bounds = bounds_of(path, table)
            if bounds is not None and dim in table[bounds].dims:
                coordinates.append(bounds)
    return ReadPlan(coordinates, independent)


def arrays_to_inline(scans: list[FileScan], dim: str, inline_limit: int) -> dict[str, list[int]]:
    """Arrays whose chunks cannot share one grid, by path, with the files (indices) whose values to read.

    Only arrays of at most ``inline_limit`` decoded bytes in every file are
    listed; the rest will be refused by :func:`concat_scans`. Nothing is
    listed when the files cannot be ordered (concat_scans says why).
    """
    combiner = _Combiner(scans, dim, "refuse")
    try:
        combiner.prepare()
    except ConcatError:
        return {}
    out = {}
    for path in combiner.unaligned():
        if all(array_nbytes(table[path].meta) <= inline_limit for table in combiner.tables):
            out[path] = [i for i, scan in enumerate(scans) if path not in scan.values]
    return out


def concat_scans(scans: list[FileScan], dim: str, mismatch: str = "refuse") -> ConcatResult:
    """Combine ``scans`` into one set along ``dim``; raises ConcatError listing every problem."""
    if mismatch not in MISMATCH_POLICIES:
        raise ValueError(f"mismatch must be one of {MISMATCH_POLICIES}, not {mismatch!r}")
    if not scans:
        raise ConcatError(["no files to concatenate"])
    return _Combiner(scans, dim, mismatch).run()


class _Combiner:
    """State of one concatenation: the files in order, output references and problems found."""

    def __init__(self, scans: list[FileScan], dim: str, mismatch: str) -> None:
        self.dim = dim
        self.mismatch = mismatch
        self.scans = scans
        self.tables = [arrays_of(s.doc["refs"]) for s in scans]
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.refs: dict[str, Any] = {}
        self.templates: dict[str, str] = {}  # template name -> URL
        self._template_of: dict[str, str] = {}  # URL -> template name
        self.units: dict[str, str | None] = {}  # coordinate path -> units of its common scale
        self.kept: list[int] = []  # indices of the files in dataset order
        self.inlined: set[str] = set()  # coordinates and their bounds, written inline

    def fail_if_problems(self) -> None:
        if self.problems:
            raise ConcatError(self.problems)

    # -- order --------------------------------------------------------------

    def prepare(self) -> dict[str, list[np.ndarray]]:
        """Find the coordinates, put them on one scale and order the files; their values by path."""
        coordinate_paths = self.coordinate_paths()
        if not coordinate_paths and not self.problems:
            self.problems.append(f"no coordinate variable {self.dim!r} is in the same place in every file")
        self.fail_if_problems()
        coordinates = {path: self.common_scale(path) for path in coordinate_paths}
        for path in coordinate_paths:
            bounds = bounds_of(path, self.tables[0])
            if bounds is not None and all(bounds in s.values for s in self.scans):
                coordinates[bounds] = self.common_scale(bounds, parent=path)
        self.fail_if_problems()
        self.order_files(coordinate_paths[0], coordinates[coordinate_paths[0]])
        self.fail_if_problems()
        self.inlined = set(coordinates)
        return coordinates

    def unaligned(self) -> list[str]:
        """Arrays along the dimension, present in every file, whose chunks cannot share one grid."""
        common = set.intersection(*(set(t) for t in self.tables))
        out = []
        for path in sorted(common):
            arrays = [t[path] for t in self.tables]
            dims = arrays[0].dims
            if self.dim in dims and path not in self.inlined and \
                    self.grid_mismatch(arrays, dims.index(self.dim)) is not None:
                out.append(path)
        return out

    def run(self) -> ConcatResult:
        self.combine(self.prepare())
        self.fail_if_problems()
        sources: dict[str, Any] = {}
        for scan in self.scans:
            sources.update(scan.doc.get("refmount", {}).get("sources", {}))
        doc = {"version": 1, "templates": self.templates, "refs": self.refs, "refmount": {"sources": sources}}
        return ConcatResult(doc, [s.source for s in self.scans], self.notes)

    def coordinate_paths(self) -> list[str]:
        """Paths of the dimension's coordinate(s), shallowest first; every file must have them."""
        found = [sorted((p for p, a in table.items() if is_coordinate(p, a, self.dim)), key=lambda p: (p.count("/"), p))
                 for table in self.tables]
        for scan, table, paths in zip(self.scans, self.tables, found, strict=True):
            if not paths:
                along = any(self.dim in a.dims for a in table.values())
                self.problems.append(
                    f"{scan.source}: no coordinate variable {self.dim!r} (a 1-d array named after the dimension)"
                    + ("" if along else f"; no array has a dimension {self.dim!r}")
                )
            missing = [p for p in paths if p not in scan.values]
            if missing:
                self.problems.append(f"{scan.source}: values of {', '.join(missing)} were not read")
        # A coordinate some files lack is reported as a missing variable when the arrays are combined.
        return [p for p in found[0] if all(p in paths for paths in found)] if not self.problems else []

    def common_scale(self, path: str, parent: str | None = None) -> list[np.ndarray]:
        """Every file's values of coordinate ``path`` on one scale (its units noted for the output).

        Bounds (``parent`` is their coordinate) without units of their own use the coordinate's.
        """
        values = [s.values[path] for s in self.scans]
        attrs = [{**(t[parent].attrs if parent else {}), **t[path].attrs} for t in self.tables]
        try:
            converted, units = common_time_scale(values, [a.get("units") for a in attrs], [a.get("calendar") for a in attrs])
        except IncompatibleTimeUnits as exc:
            self.problems.append(f"{path}: {exc}")
            return values
        if "units" in self.tables[0][path].attrs:
            self.units[path] = units
        return converted

    def order_files(self, path: str, values: list[np.ndarray]) -> None:
        """Sort the files by the values of coordinate ``path``; refuse non-monotonic or overlapping files."""
        keep = []
        for i, (scan, v) in enumerate(zip(self.scans, values, strict=True)):
            if v.size == 0:
                self.notes.append(f"{scan.source}: {self.dim!r} has length 0: file left out")
            elif v.dtype.kind in "fc" and np.isnan(v).any():
                self.problems.append(f"{scan.source}: {path!r} has missing (NaN) values")
            else:
                keep.append(i)
        if self.problems or not keep:
            if not keep:
                self.problems.append(f"every file has length 0 along {self.dim!r}")
            return
        runs = [np.diff(values[i]) for i in keep]
        decreasing = any(r.size for r in runs) and all((r < 0).all() for r in runs if r.size)
        sign = -1 if decreasing else 1
        for i, steps in zip(keep, runs, strict=True):
            if not (sign * steps > 0).all():
                where = int(np.argmax(sign * steps <= 0))
                self.problems.append(
                    f"{self.scans[i].source}: {self.dim!r} is not strictly {'de' if decreasing else 'in'}creasing within the "
                    f"file ({self.show(path, values[i][where])} then {self.show(path, values[i][where + 1])})"
                )
        if self.problems:
            return
        keep.sort(key=lambda i: sign * values[i][0])
        for a, b in zip(keep, keep[1:], strict=False):
            if not sign * values[a][-1] < sign * values[b][0]:
                self.problems.append(
                    f"{self.scans[a].source} ({self.span(path, values[a])}) and "
                    f"{self.scans[b].source} ({self.span(path, values[b])}) "
                    f"overlap along {self.dim!r}"
                )
        self.scans = [self.scans[i] for i in keep]
        self.tables = [self.tables[i] for i in keep]
        self.kept = keep

    def show(self, path: str, value: Any) -> str:
        """A coordinate value for a message: as a date when the units say it is a time."""
        units = self.units.get(path)
        parsed = parse_time_units(units) if isinstance(units, str) else None
        if parsed is not None and np.isfinite(value):
            us = int(round(parsed.epoch_us + float(value) * parsed.unit_us))
            return str(np.datetime64(us, "us").astype("datetime64[s]") if us % 1_000_000 == 0 else np.datetime64(us, "us"))
        return repr(value.item() if hasattr(value, "item") else value)

    def span(self, path: str, values: np.ndarray) -> str:
        return f"{self.show(path, values[0])} .. {self.show(path, values[-1])}"

    # -- arrays -------------------------------------------------------------

    def combine(self, coordinates: dict[str, list[np.ndarray]]) -> None:
        """Write groups, then every array by its kind; files are in dataset order now."""
        for key in sorted({k for s in self.scans for k in s.doc["refs"] if posixpath.basename(k) == ".zgroup"}):
            group = posixpath.dirname(key)
            first = next(s for s in self.scans if key in s.doc["refs"])
            self.refs[key] = first.doc["refs"][key]
            attrs_key = f"{group}/.zattrs" if group else ".zattrs"
            if attrs_key in first.doc["refs"]:
                self.refs[attrs_key] = first.doc["refs"][attrs_key]
        chunk_keys = [_chunk_keys_by_array(s.doc["refs"]) for s in self.scans]
        for path in sorted({p for t in self.tables for p in t}):
            lacking = [s.source for s, t in zip(self.scans, self.tables, strict=True) if path not in t]
            if lacking:
                self.missing(path, lacking)
                continue
            arrays = [t[path] for t in self.tables]
            if path in coordinates:
                ordered = [coordinates[path][i] for i in self.kept]
                axis = arrays[0].dims.index(self.dim)
                self.write_inline(path, arrays[0], np.concatenate(ordered, axis=axis), units=self.units.get(path))
            elif self.dim in arrays[0].dims:
                self.concatenated(path, arrays, chunk_keys)
            else:
                self.independent(path, arrays, chunk_keys[0].get(path, []))

    def missing(self, path: str, lacking: list[str]) -> None:
        having = next(s.source for s, t in zip(self.scans, self.tables, strict=True) if path in t)
        shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        if self.mismatch == "drop":
            self.notes.append(f"{path}: left out: missing in {shown}")
        else:
            self.problems.append(f"{path}: missing in {shown} (present in {having}); --mismatch drop leaves it out")

    def concatenated(self, path: str, arrays: list[_Array], chunk_keys: list[dict[str, list[str]]]) -> None:
        """Shift each file's chunks along the dimension, or inline the values when the grids differ."""
        first = arrays[0]
        axis = first.dims.index(self.dim)
        for scan, array in zip(self.scans[1:], arrays[1:], strict=False):
            differs = [a for a in DECODING_ATTRS if array.attrs.get(a) != first.attrs.get(a)]
            other_shape = [s for k, s in enumerate(array.meta["shape"]) if k != axis]
            if array.dims != first.dims or other_shape != [s for k, s in enumerate(first.meta["shape"]) if k != axis]:
                self.problems.append(f"{path}: in {scan.source} dimensions {array.dims} {array.meta['shape']} do not match "
                                     f"{first.dims} {first.meta['shape']} of {self.scans[0].source}")
                return
            if differs:
                self.problems.append(f"{path}: attribute {differs[0]!r} in {scan.source} "
                                     f"({array.attrs.get(differs[0])!r}) differs from {self.scans[0].source} "
                                     f"({first.attrs.get(differs[0])!r}), so the stored numbers mean different things")
                return
        reason = self.grid_mismatch(arrays, axis)
        if reason is None:
            self.shift_chunks(path, arrays, axis, chunk_keys)
        elif all(path in s.values for s in self.scans):
            self.write_inline(path, first, np.concatenate([s.values[path] for s in self.scans], axis=axis))
        else:
            self.problems.append(f"{path}: {reason}; it cannot be concatenated on one chunk grid and is too large to "
                                 "inline (see --decoded-inline-limit)")

    def grid_mismatch(self, arrays: list[_Array], axis: int) -> str | None:
        """Why the files' chunks of one array cannot share a chunk grid, or None when they can."""
        first = arrays[0].meta
        chunk = first["chunks"][axis]
        for n, (scan, array) in enumerate(zip(self.scans, arrays, strict=True)):
            for name in LAYOUT_FIELDS:
                if array.meta.get(name) != first.get(name):
                    return f"{scan.source} has {name} {array.meta.get(name)!r}, {self.scans[0].source} {first.get(name)!r}"
            if array.meta["chunks"] != first["chunks"]:
                return f"{scan.source} has chunks {array.meta['chunks']}, {self.scans[0].source} {first['chunks']}"
            length = array.meta["shape"][axis]
            if n < len(arrays) - 1 and length % chunk:
                return (f"{scan.source} has length {length} along {self.dim!r}, not a multiple of the chunk size {chunk} "
                        "(only the last file may end in a partial chunk)")
        return None

    def shift_chunks(self, path: str, arrays: list[_Array], axis: int, chunk_keys: list[dict[str, list[str]]]) -> None:
        """Copy every file's chunk references with their index along ``axis`` shifted by the chunks before them."""
        chunk = arrays[0].meta["chunks"][axis]
        offset = 0
        for scan, array, keys in zip(self.scans, arrays, chunk_keys, strict=True):
            refs = scan.doc["refs"]
            for key in keys.get(path, []):
                index = key[len(path) + 1:].split(".")
                index[axis] = str(int(index[axis]) + offset)
                self.refs[f"{path}/{'.'.join(index)}"] = self.relocate(scan, refs[key])
            offset += math.ceil(array.meta["shape"][axis] / chunk)
        meta = dict(arrays[0].meta)
        meta["shape"] = list(meta["shape"])
        meta["shape"][axis] = sum(a.meta["shape"][axis] for a in arrays)
        self.refs[f"{path}/.zarray"] = dumps(meta)
        self.refs[f"{path}/.zattrs"] = dumps(arrays[0].attrs)

    def independent(self, path: str, arrays: list[_Array], first_keys: list[str]) -> None:
        """An array without the dimension: the same in every file, else refused, kept from the first or dropped."""
        first = self.scans[0]
        differing = []
        for scan, array in zip(self.scans[1:], arrays[1:], strict=False):
            if path not in scan.digests or path not in first.digests:
                differing.append(f"{scan.source} (values not read)")
            elif scan.digests[path] != first.digests[path]:
                differing.append(f"{scan.source} (values)")
            elif array.attrs != arrays[0].attrs:
                changed = sorted(k for k in {*array.attrs, *arrays[0].attrs} if array.attrs.get(k) != arrays[0].attrs.get(k))
                differing.append(f"{scan.source} (attribute {changed[0]!r})")
        if differing:
            shown = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
            message = f"{path} (no {self.dim!r} dimension) differs from {first.source} in {shown}"
            if self.mismatch == "refuse":
                self.problems.append(f"{message}; --mismatch first keeps {first.source}'s, --mismatch drop leaves it out")
                return
            if self.mismatch == "drop":
                self.notes.append(f"{message}: left out")
                return
            self.notes.append(f"{message}: kept from {first.source}")
        refs = first.doc["refs"]
        self.refs[f"{path}/.zarray"] = refs[f"{path}/.zarray"]
        self.refs[f"{path}/.zattrs"] = dumps(arrays[0].attrs)
        for key in first_keys:
            self.refs[key] = self.relocate(first, refs[key])

    def write_inline(self, path: str, array: _Array, values: np.ndarray, units: str | None = None) -> None:
        """Write ``values`` as one uncompressed inline chunk (object arrays keep their object codec)."""
        meta = dict(array.meta)
        meta.update(shape=list(values.shape), chunks=[max(1, s) for s in values.shape], compressor=None)
        if values.dtype.kind == "O":
            data = numcodecs.get_codec(meta["filters"][0]).encode(values.ravel())
        else:
            meta["filters"] = None
            if values.dtype.str != meta["dtype"]:
                meta.update(dtype=values.dtype.str, fill_value=None)
            data = np.ascontiguousarray(values).tobytes()
        attrs = dict(array.attrs)
        if units is not None:
            attrs["units"] = units
        self.refs[f"{path}/.zarray"] = dumps(meta)
        self.refs[f"{path}/.zattrs"] = dumps(attrs)
        if values.size:
            self.refs[chunk_key(path, (0,) * values.ndim)] = inline_value(bytes(data))

    def relocate(self, scan: FileScan, value: Any) -> Any:
        """A reference of one file's set, its URL spelled through the combined set's templates."""
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            return value
        url = value[0]
        for name, target in (scan.doc.get("templates") or {}).items():
            url = url.replace("{{" + name + "}}", target)
        name = self._template_of.get(url)
        if name is None:
            name = self._template_of[url] = f"u{len(self.templates)}"
            self.templates[name] = url
        return ["{{" + name + "}}", *value[1:]]


def _chunk_keys_by_array(refs: Mapping[str, Any]) -> dict[str, list[str]]:
    """Chunk keys of a set grouped by the array they belong to (metadata keys left out)."""
    out: dict[str, list[str]] = {}
    for key in refs:
        parent, _, name = key.rpartition("/")
        if parent and not name.startswith("."):
            out.setdefault(parent, []).append(key)
    return out
