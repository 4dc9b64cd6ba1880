"""Readahead: whole chunk files fetched on their first read, several sequential streams per object."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from refmount.byterange import ByteRange
from refmount.read.cache import BlockCache
from refmount.read.readahead import ReadaheadPlanner
from refmount.read.reader import Reader
from refmount.refs.kerchunk.parse import parse_references
from refmount.refs.tree import Namespace
from tests.support.backends import CountingBackend

KIB, MIB = 1 << 10, 1 << 20
PIECE = 128 * KIB  # what the kernel hands the daemon per read


def _walk(planner: ReadaheadPlanner, url: str, start: int, stop: int, extent: int) -> list[ByteRange]:
    planned = []
    for offset in range(start, stop, PIECE):
        planned += planner.plan(url, ByteRange(offset, min(offset + PIECE, stop)), extent)
    return planned


def test_a_chunk_read_from_its_start_plans_the_rest_of_the_chunk_beyond_the_first_block():
    planner = ReadaheadPlanner(MIB, 8 * MIB)
    chunk = ByteRange(10 * MIB, 14 * MIB)
    assert planner.plan("u", ByteRange(chunk.start, chunk.start + PIECE), 100 * MIB, chunk) == [
        ByteRange(11 * MIB, 14 * MIB)
    ]


def test_a_chunk_larger_than_the_window_is_planned_up_to_the_window():
    planner = ReadaheadPlanner(MIB, 8 * MIB)
    chunk = ByteRange(0, 64 * MIB)
    assert planner.plan("u", ByteRange(0, PIECE), 100 * MIB, chunk) == [ByteRange(MIB, 8 * MIB)]


def test_a_read_in_the_middle_of_a_chunk_or_at_random_plans_nothing():
    planner = ReadaheadPlanner(MIB, 8 * MIB)
    assert planner.plan("u", ByteRange(50 * MIB, 50 * MIB + PIECE), 100 * MIB) == []
    assert planner.plan("u", ByteRange(5 * MIB, 5 * MIB + PIECE), 100 * MIB) == []
    assert planner.plan("u", ByteRange(70 * MIB, 70 * MIB + PIECE), 100 * MIB) == []


def test_a_sequential_reader_grows_its_window_up_to_readahead():
    planner = ReadaheadPlanner(MIB, 8 * MIB)
    planned = _walk(planner, "u", 0, 4 * MIB, 100 * MIB)
    assert planned, "a sequential reader must be read ahead of"
    furthest = max(r.stop for r in planned)
    assert 4 * MIB + 4 * MIB <= furthest <= 4 * MIB + 8 * MIB


def test_a_long_sequential_stream_is_topped_up_in_steps_not_after_every_read():
    """Each top-up becomes GETs of its own: 1 MiB reads must not make a top-up (a GET) per MiB."""
    planner = ReadaheadPlanner(256 * KIB, 32 * MIB, step=8 * MIB)
    planned = []
    for offset in range(0, 256 * MIB, MIB):
        planned += planner.plan("u", ByteRange(offset, offset + MIB), 1 << 40)
    steady = [r for r in planned if r.start >= 64 * MIB]
    assert steady and all(r.length >= 8 * MIB for r in steady), steady
    # Still read ahead of: the window stays at least half full.
    assert max(r.stop for r in planned) >= 256 * MIB + 16 * MIB


def test_the_tail_of_an_object_is_planned_even_when_shorter_than_a_step():
    planner = ReadaheadPlanner(256 * KIB, 32 * MIB, step=8 * MIB)
    extent = 40 * MIB + 300 * KIB
    planned = []
    for offset in range(0, 40 * MIB, MIB):
        planned += planner.plan("u", ByteRange(offset, offset + MIB), extent)
    assert max(r.stop for r in planned) == extent


def test_interleaved_readers_of_one_object_each_keep_their_stream():
    planner = ReadaheadPlanner(MIB, 8 * MIB)
    starts = [0, 40 * MIB, 80 * MIB]
    planned: list[ByteRange] = []
    for step in range(16):  # three readers, one piece each in turn
        for start in starts:
            offset = start + step * PIECE
            planned += planner.plan("u", ByteRange(offset, offset + PIECE), 200 * MIB)
    for start in starts:
        assert any(start + 2 * MIB <= r.start < start + 12 * MIB for r in planned), f"stream at {start} lost"


def test_readahead_zero_plans_nothing():
    planner = ReadaheadPlanner(MIB, 0)
    assert planner.plan("u", ByteRange(0, PIECE), 100 * MIB, ByteRange(0, 4 * MIB)) == []
    assert _walk(planner, "u", 0, 4 * MIB, 100 * MIB) == []


@settings(max_examples=200, deadline=None)
@given(
    block=st.sampled_from([4 * KIB, 64 * KIB, MIB]),
    readahead=st.integers(min_value=0, max_value=16 * MIB),
    reads=st.lists(st.tuples(st.integers(0, 40 * MIB), st.integers(1, 2 * MIB), st.booleans()), max_size=60),
)
def test_plans_stay_inside_the_extent_and_skip_the_blocks_the_read_fetches(block, readahead, reads):
    extent = 32 * MIB
    planner = ReadaheadPlanner(block, readahead)
    planned_bytes: list[ByteRange] = []
    for start, length, is_chunk_start in reads:
        read = ByteRange(min(start, extent), min(start + length, extent))
        chunk = ByteRange(read.start, min(read.start + 3 * length, extent)) if is_chunk_start else None
        for rng in planner.plan("u", read, extent, chunk):
            assert 0 < rng.length and rng.stop <= extent
            assert rng.start >= -(-read.stop // block) * block, "overlaps the blocks the read fetches itself"
            assert rng.stop - read.start <= max(readahead, 0) + read.length + block
            planned_bytes.append(rng)
    if readahead == 0:
        assert planned_bytes == []


def _chunked_object(tmp_path, chunks: int, chunk_size: int) -> tuple[bytes, Namespace]:
    data = os.urandom(chunks * chunk_size)
    (tmp_path / "obj").write_bytes(data)
    url = str(tmp_path / "obj")
    refs = {f"v/{i}": [url, i * chunk_size, chunk_size] for i in range(chunks)}
    return data, Namespace(parse_references(refs))


@contextlib.contextmanager
def _reader(namespace: Namespace, backend: CountingBackend, readahead: int) -> Iterator[Reader]:
    """A reader over 256 KiB blocks, closed with its backend whatever the test does."""
    cache = BlockCache(backend, capacity=64 * MIB, block_size=256 * KIB, max_request=MIB)
    reader = Reader(namespace, cache, backend, readahead=readahead)
    try:
        yield reader
    finally:
        reader.close()
        backend.inner.close()


def _read_whole(reader: Reader, namespace: Namespace, key: str, size: int) -> bytes:
    file = namespace.lookup(key)
    return b"".join(reader.read(file, offset, PIECE) for offset in range(0, size, PIECE))


def _covered(backend: CountingBackend) -> int:
    """Bytes from 0 covered without a gap by the ranges asked for so far."""
    reach = 0
    for rng in sorted((r for _, r in list(backend.requests)), key=lambda r: r.start):
        if rng.start > reach:
            break
        reach = max(reach, rng.stop)
    return reach


def test_the_first_read_of_a_chunk_file_puts_the_whole_chunk_in_flight(tmp_path):
    """The pieces after the first then wait for GETs already issued instead of one round trip each."""
    chunk_size = 2 * MIB
    data, namespace = _chunked_object(tmp_path, 2, chunk_size)
    backend = CountingBackend(delay=0.05)
    with _reader(namespace, backend, readahead=8 * MIB) as reader:
        assert reader.read(namespace.lookup("v/0"), 0, PIECE) == data[:PIECE]
        deadline = time.monotonic() + 10
        while _covered(backend) < chunk_size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _covered(backend) >= chunk_size, backend.requests
        assert _read_whole(reader, namespace, "v/0", chunk_size) == data[:chunk_size]
        starts = [start for _, rng in backend.requests for start in range(rng.start, rng.stop, 256 * KIB)]
        assert len(starts) == len(set(starts)), "a block was fetched twice"


def test_without_readahead_only_the_blocks_read_are_fetched(tmp_path):
    chunk_size = 2 * MIB
    data, namespace = _chunked_object(tmp_path, 2, chunk_size)
    backend = CountingBackend()
    with _reader(namespace, backend, readahead=0) as reader:
        file = namespace.lookup("v/1")
        assert reader.read(file, 0, PIECE) == data[chunk_size : chunk_size + PIECE]
        assert [(r.start, r.stop) for _, r in backend.requests] == [(chunk_size, chunk_size + 256 * KIB)]


def test_concurrent_whole_chunk_readers_get_every_byte_with_each_block_fetched_once(tmp_path):
    chunk_size = 1 * MIB
    data, namespace = _chunked_object(tmp_path, 24, chunk_size)
    backend = CountingBackend(delay=0.01)
    with _reader(namespace, backend, readahead=8 * MIB) as reader:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: _read_whole(reader, namespace, f"v/{i}", chunk_size), range(24)))
        assert b"".join(got) == data
        starts = [start for _, rng in backend.requests for start in range(rng.start, rng.stop, 256 * KIB)]
        assert len(starts) == len(set(starts)) == len(data) // (256 * KIB), backend.requests


def test_prefetch_of_named_references_joins_neighbours_and_fetches_them_once(tmp_path):
    """What a view that knows its next keys asks for: neighbours in one fetch, a far key apart, nothing twice."""
    chunk_size = 256 * KIB
    data, namespace = _chunked_object(tmp_path, 12, chunk_size)
    backend = CountingBackend()
    with _reader(namespace, backend, readahead=0) as reader:
        refs = [namespace.lookup(f"v/{i}").ref for i in (2, 3, 4, 9)]
        reader.prefetch(refs)
        deadline = time.monotonic() + 10
        while sum(r.stop - r.start for _, r in list(backend.requests)) < 4 * chunk_size and time.monotonic() < deadline:
            time.sleep(0.01)
        fetched = sorted((r.start, r.stop) for _, r in list(backend.requests))
        assert fetched == [(2 * chunk_size, 5 * chunk_size), (9 * chunk_size, 10 * chunk_size)], fetched
        for i in (2, 3, 4, 9):  # read afterwards: every block from the cache
            assert _read_whole(reader, namespace, f"v/{i}", chunk_size) == data[i * chunk_size : (i + 1) * chunk_size]
        assert backend.gets == len(fetched), backend.requests
