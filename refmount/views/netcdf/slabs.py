"""A run of elements of a C-order array, as boxes, and the chunks each box needs.

A read of a netCDF variable's data is a byte range of the variable in C
order: a run of consecutive elements. Such a run is the concatenation (in C
order) of at most ``2 * ndim - 1`` boxes: a partial first row, a block of
whole rows, a partial last row, recursively. Each box is then assembled from
the chunks it intersects, so a read touches exactly the chunks that hold its
elements.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (start, stop) per dimension


def boxes(shape: Sequence[int], first: int, stop: int) -> list[Box]:
    """Boxes whose C-order concatenation is elements ``[first, stop)`` of an array of ``shape``."""
    if not 0 <= first <= stop <= math.prod(shape):
        raise ValueError(f"elements [{first}, {stop}) outside an array of shape {list(shape)}")
    if first == stop:
        return []
    if not shape:
        return [((), ())]
    return _boxes(tuple(shape), first, stop)


def _boxes(shape: tuple[int, ...], first: int, stop: int) -> list[Box]:
    if len(shape) == 1:
        return [((first,), (stop,))]
    inner = shape[1:]
    stride = math.prod(inner)
    row0, rest0 = divmod(first, stride)
    row1, rest1 = divmod(stop, stride)
    if row0 == row1:
        return [_prefixed(row0, box) for box in _boxes(inner, rest0, rest1)]
    out: list[Box] = []
    if rest0:
        out.extend(_prefixed(row0, box) for box in _boxes(inner, rest0, stride))
        row0 += 1
    if row1 > row0:
        out.append(((row0, *(0 for _ in inner)), (row1, *inner)))
    if rest1:
        out.extend(_prefixed(row1, box) for box in _boxes(inner, 0, rest1))
    return out


def _prefixed(row: int, box: Box) -> Box:
    return (row, *box[0]), (row + 1, *box[1])


def chunks_of(box: Box, chunks: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of every chunk that ``box`` intersects, in C order."""
    start, stop = box
    ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(start, stop, chunks, strict=True)]
    return itertools.product(*ranges)


def intersection(box: Box, coords: Sequence[int], chunks: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where chunk ``coords`` meets ``box``: (slices into the chunk, slices into the box)."""
    in_chunk: list[slice] = []
    in_box: list[slice] = []
    for a, b, i, c in zip(box[0], box[1], coords, chunks, strict=True):
        lo, hi = max(a, i * c), min(b, (i + 1) * c)
        in_chunk.append(slice(lo - i * c, hi - i * c))
        in_box.append(slice(lo - a, hi - a))
    return tuple(in_chunk), tuple(in_box)
