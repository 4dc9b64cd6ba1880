"""What the netCDF view and netCDF-C make of a set, from its metadata alone (for ``refmount inspect``).

Pure: given the inline ``.zarray``/``.zattrs``/``.zgroup`` documents of a
set and the stored bytes of each array's chunks, :func:`netcdf_files` says
which files the netCDF view shows, in which format, and what each leaves out
and why; :func:`netcdf_c_problem` says what netCDF-C 4.9 still cannot read
through the decoded view. Variable-length strings are planned as if their
length were known; the note says whether the mount will read it from the
data or leave the array out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refmount.views.netcdf.plan import ArrayMeta, plan_group
from refmount.views.netcdf.tree import STRING_SCAN_LIMIT, file_names
from refmount.views.zarr_meta import is_object_dtype, numpy_dtype


@dataclass
class FileReport:
    name: str
    group: str
    format: str
    variables: list[str]
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def netcdf_files(
    set_name: str, docs: Mapping[str, Mapping[str, Any]], stored: Mapping[str, int], netcdf_format: str = "auto",
) -> list[FileReport]:
    """The files of the netCDF view; ``docs`` maps metadata keys (``a/.zarray``) to parsed documents."""
    groups = sorted({""} | {key.rpartition("/")[0] for key in docs if key.rpartition("/")[2] == ".zgroup"})
    reports = []
    for name, group in file_names(set_name, groups).items():
        prefix = f"{group}/" if group else ""
        metas: list[ArrayMeta] = []
        notes: list[str] = []
        for key in sorted(docs):
            parent, _, leaf = key.rpartition("/")
            array = parent[len(prefix):] if parent.startswith(prefix) else None
            if leaf != ".zarray" or not array or "/" in array or parent == group:
                continue
            zarray = docs[key]
            zattrs = docs.get(f"{parent}/.zattrs", {})
            length: int | str | None = None
            if is_object_dtype(zarray):
                size = stored.get(parent, 0)
                if size > STRING_SCAN_LIMIT:
                    length = f"finding the longest string means reading all {size} stored bytes"
                else:
                    length = 1
                    notes.append(f"{array}: longest string read from the data when the file is first opened")
            metas.append(ArrayMeta(array, zarray, zattrs, length))
        plan = plan_group(docs.get(f"{prefix}.zattrs", {}), metas, netcdf_format)
        reports.append(FileReport(name, group or "/", plan.format_name, [v.name for v in plan.layout.variables],
                                  [f"{what}: {why}" for what, why in plan.left_out], notes))
    return reports


def netcdf_c_problem(zarray: Mapping[str, Any]) -> str:
    """Why netCDF-C 4.9 cannot read an array through the decoded view ('' when it can)."""
    if is_object_dtype(zarray):
        return "variable-length data (netCDF-C 4.9 crashes on it; use -o view=netcdf)"
    try:
        dtype = numpy_dtype(zarray.get("dtype"))
    except (TypeError, ValueError):
        return "dtype unknown to numpy"
    if dtype.fields is not None:
        return "compound type (netCDF-C's Zarr reader has none)"
    if dtype.kind in "SU" and dtype.itemsize > (4 if dtype.kind == "U" else 1):
        return "fixed strings longer than one character (netCDF-C 4.9 crashes on them; use -o view=netcdf)"
    if dtype.kind == "c":
        return "complex numbers"
    return ""
