"""The bytes of one virtual netCDF file: the header, then each variable assembled from its chunks.

:class:`FileData` answers a byte range of the file. The header is kept as
bytes; a range of a variable's data is a run of its elements in C order,
cut into boxes (:mod:`.slabs`), each box filled from exactly the chunks it
intersects, converted to the external big-endian type on assignment.
Chunks come from a :class:`ChunkSource` (decoded by the decoded view's
machinery and kept in its decoded-chunk cache); a chunk that was never
written reads as the variable's fill value.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from refmount.views.netcdf.plan import FilePlan, Source
from refmount.views.netcdf.slabs import boxes, chunks_of, intersection
from refmount.views.zarr_meta import ArrayCodec


class ChunkSource(Protocol):
    """Decoded chunks of the arrays of one group."""

    def chunk(self, array: ArrayCodec, coords: tuple[int, ...]) -> np.ndarray[Any, Any] | None:
        """Chunk ``coords`` of ``array`` in its full chunk shape (Zarr elements), or None if never written."""
        ...


class FileData:
    """Reads of one virtual file, computed from its plan and its arrays' chunks."""

    def __init__(self, plan: FilePlan, arrays: Mapping[str, ArrayCodec], chunks: ChunkSource) -> None:
        self.plan = plan
        self.arrays = arrays
        self.chunks = chunks
        self.header = plan.layout.header
        self.size = plan.layout.size
        self._begins = list(plan.layout.begins)

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts: list[bytes] = []
        if offset < len(self.header):
            parts.append(self.header[offset : min(end, len(self.header))])
        for index, lo, hi in self._spans(offset, end):
            parts.append(self._variable_bytes(index, lo, hi))
        return b"".join(parts)

    def chunks_in(self, offset: int, end: int) -> Iterator[tuple[ArrayCodec, tuple[int, ...]]]:
        """Every chunk whose elements lie in bytes ``[offset, end)`` of the file (for readahead)."""
        for index, lo, hi in self._spans(offset, min(end, self.size)):
            source = self.plan.sources[index]
            array = self.arrays[source.array]
            var = self.plan.layout.variables[index]
            hi = min(hi, var.nbytes)
            if hi <= lo:
                continue
            width = source.item.itemsize
            for box in boxes(array.shape, lo // width, -(-hi // width)):
                yield from ((array, coords) for coords in chunks_of(box, array.chunks))

    def _spans(self, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(variable index, start, stop) of the parts of ``[offset, end)`` in each variable's section."""
        first = max(0, bisect.bisect_right(self._begins, offset) - 1)
        variables = self.plan.layout.variables
        for index in range(first, len(variables)):
            begin = self._begins[index]
            if begin >= end:
                break
            stop = begin + variables[index].vsize
            lo, hi = max(offset, begin), min(end, stop)
            if lo < hi:
                yield index, lo - begin, hi - begin

    def _variable_bytes(self, index: int, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of variable ``index``'s section (data, then zero padding to four bytes)."""
        var = self.plan.layout.variables[index]
        source = self.plan.sources[index]
        data_hi = min(hi, var.nbytes)
        out = b""
        if lo < data_hi:
            width = source.item.itemsize
            first, stop = lo // width, -(-data_hi // width)
            elements = self._elements(source, self.arrays[source.array], first, stop)
            out = elements[lo - first * width : data_hi - first * width]
        if hi > var.nbytes:
            out += bytes(hi - max(lo, var.nbytes))
        return out

    def _elements(self, source: Source, array: ArrayCodec, first: int, stop: int) -> bytes:
        """Elements ``[first, stop)`` of an array, in C order, in external form."""
        parts = []
        fill = np.frombuffer(source.fill, source.item)[0]
        for box in boxes(array.shape, first, stop):
            shape = tuple(b - a for a, b in zip(box[0], box[1], strict=True))
            out = np.empty(shape, source.item)
            for coords in chunks_of(box, array.chunks):
                in_chunk, in_box = intersection(box, coords, array.chunks)
                chunk = self.chunks.chunk(array, coords)
                if chunk is None:
                    out[in_box] = fill
                else:
                    out[in_box] = external(source, chunk[in_chunk])
            parts.append(out.tobytes())
        return b"".join(parts)


def external(source: Source, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Zarr elements as the file stores them: big-endian numbers, strings as fixed rows of bytes."""
    if source.kind == "number":
        return values.astype(source.item, copy=False)
    if source.kind == "bytes":
        return values
    if source.kind == "unicode":
        return np.char.encode(values, "utf-8").astype(source.item)
    encoded = [_utf8(v) for v in values.ravel()]
    return np.array(encoded, dtype=source.item).reshape(values.shape) if encoded else values.astype(source.item)


def _utf8(value: Any) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def longest_string(values: np.ndarray[Any, Any]) -> int:
    """Bytes of the longest string (UTF-8) among object elements."""
    return max((len(_utf8(v)) for v in values.ravel()), default=0)
