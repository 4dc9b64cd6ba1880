"""Zarr metadata as netCDF-C 4.9's Zarr reader can take it: what the decoded view adjusts, and why.

Pure. :func:`nczarr_compatible` rewrites a decoded ``.zarray`` the way
NCZarr itself writes such an array (found by writing small files with
``ncgen -4 -o 'file://...#mode=nczarr,file'`` and reading them back with
``ncdump``), so that ``ncdump``, ``nccopy`` and Fortran programs read it
instead of failing or crashing.
"""

from __future__ import annotations

from typing import Any


def nczarr_compatible(meta: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """A decoded ``.zarray`` as netCDF-C 4.9's Zarr reader can take it, and the trimmed chunk shape if any.

    netCDF-C 4.9 (``ncdump``, ``nccopy``, Fortran) fails on three shapes of
    metadata that NCZarr itself never writes, so the view presents them the
    way NCZarr does:

    * a chunk larger than the array along a dimension (an unlimited ``time``
      of 6 steps in chunks of 512): ``NetCDF: NCZarr error``. The chunks are
      trimmed to the shape there; such a dimension has a single chunk, so
      only that chunk's size changes (it holds the first ``shape`` elements);
    * a scalar (``shape: []``): a crash. NCZarr writes ``shape: [1]``,
      ``chunks: [1]`` and ``_NCZARR_ARRAY: {"dimrefs": [], "storage": "scalar"}``;
      the chunk ``0`` holds the same one element;
    * a char array (``|S1``): a crash. NCZarr writes char as ``<U1`` with a
      fill value of ``""``, one byte per element; the bytes are unchanged.
      (Python Zarr readers of this view then see 1-character unicode.)
    """
    out = dict(meta)
    shape = [int(n) for n in meta.get("shape", [])]
    chunks = [int(n) for n in meta.get("chunks", [])]
    shown: tuple[int, ...] | None = None
    if not shape:
        out.update(shape=[1], chunks=[1], _NCZARR_ARRAY={"dimrefs": [], "storage": "scalar"})
    elif len(chunks) == len(shape) and any(0 < n < c for n, c in zip(shape, chunks, strict=True)):
        trimmed = [n if 0 < n < c else c for n, c in zip(shape, chunks, strict=True)]
        out["chunks"] = trimmed
        shown = tuple(trimmed)
    if isinstance(meta.get("dtype"), str) and meta["dtype"].lstrip("|<>=") == "S1":
        out.update(dtype="<U1", fill_value="")
    return out, shown
