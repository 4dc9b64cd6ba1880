"""Byte ranges, block arithmetic and the fetch plan: pure functions, no I/O.

The cache stores fixed-size blocks in the byte space of each object URL.
A read of ``[start, stop)`` needs the blocks that overlap it; the ones not in
the cache are fetched. Fetching each missing block with its own GET wastes
round trips on sequential reads, and fetching one huge span wastes bandwidth
when the missing blocks are far apart, so :func:`plan_fetches` merges runs of
adjacent missing blocks into one request, capped at ``max_request`` bytes so
a single slow GET cannot hold up a whole large read, and leaves separate runs
as separate requests that the backend issues concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from refmount.byterange import ByteRange


def clamp_read(offset: int, size: int, file_size: int) -> ByteRange:
    """The part of a read of ``size`` bytes at ``offset`` that lies inside a file.

    Reads at or past the end yield an empty range; this is the one place where
    the kernel's request is reconciled with the file's length.
    """
    if offset < 0 or size < 0:
        raise ValueError("negative offset or size")
    start = min(offset, file_size)
    return ByteRange(start, min(file_size, start + size))


def blocks_covering(rng: ByteRange, block_size: int) -> range:
    """Indices of the blocks of ``block_size`` bytes that overlap ``rng``."""
    if rng.length == 0:
        return range(0)
    return range(rng.start // block_size, (rng.stop - 1) // block_size + 1)


def block_range(index: int, block_size: int, extent: int) -> ByteRange:
    """The bytes block ``index`` holds, cut at ``extent`` (the known end of the object)."""
    start = index * block_size
    return ByteRange(start, max(start, min(start + block_size, extent)))


@dataclass(frozen=True, slots=True)
class Fetch:
    """One ranged GET: ``blocks`` consecutive block indices spanning ``span``."""

    span: ByteRange
    blocks: tuple[int, ...]


def plan_fetches(
    missing: Iterable[int], block_size: int, extent: int, max_request: int
) -> list[Fetch]:
    """Merge runs of adjacent missing blocks into requests of at most ``max_request`` bytes.

    ``extent`` is the end of the known part of the object: the last block is
    cut there, so no request asks for bytes the references do not vouch for.
    """
    blocks_per_request = max(1, max_request // block_size)
    fetches: list[Fetch] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            start = block_range(run[0], block_size, extent).start
            stop = block_range(run[-1], block_size, extent).stop
            fetches.append(Fetch(ByteRange(start, stop), tuple(run)))
            run.clear()

    for index in sorted(set(missing)):
        if run and (index != run[-1] + 1 or len(run) >= blocks_per_request):
            flush()
        run.append(index)
    flush()
    return fetches


def fetched_blocks(fetch: Fetch, pieces: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """Pair the body of one fetch, read in pieces of one block each, with its block indices.

    Blocks the span does not reach (past the object's known end) come back empty, as the store sent no piece for them.
    """
    if len(pieces) > len(fetch.blocks):
        raise ValueError(f"{len(pieces)} pieces for {len(fetch.blocks)} blocks")
    return [(index, pieces[i] if i < len(pieces) else b"") for i, index in enumerate(fetch.blocks)]


#: A piece of a read's answer: a whole cached block, or a view into one. Readers hand these up unjoined.
Part = bytes | memoryview


def block_parts(rng: ByteRange, blocks: Sequence[tuple[int, bytes]], block_size: int) -> list[Part]:
    """The parts of consecutive blocks that fall inside ``rng``, in order, without copying a byte.

    A whole block goes as itself, a part of one as a memoryview slice. The
    bytes are copied once, by whoever consumes the parts: the FUSE adapter
    straight into libfuse's reply buffer, ``b"".join`` for a caller that needs
    one ``bytes``. Joining here would cost a second copy of every byte read,
    and a fresh 1 MiB allocation (page faults) per kernel request.
    """
    parts: list[Part] = []
    for index, data in blocks:
        block_start = index * block_size
        lo = max(rng.start - block_start, 0)
        hi = min(rng.stop - block_start, len(data))
        if hi > lo:
            parts.append(data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi])
    return parts


def parts_length(parts: Iterable[Part]) -> int:
    """How many bytes ``parts`` hold (a memoryview of bytes counts its bytes)."""
    return sum(map(len, parts))
