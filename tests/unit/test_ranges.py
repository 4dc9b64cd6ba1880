"""Byte ranges, block arithmetic and fetch planning (pure functions)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refmount.read.ranges import (
    ByteRange,
    Fetch,
    block_parts,
    block_range,
    blocks_covering,
    clamp_read,
    fetched_blocks,
    plan_fetches,
)


def test_clamp_read_inside_across_and_past_the_end():
    assert clamp_read(0, 10, 100) == ByteRange(0, 10)
    assert clamp_read(95, 10, 100) == ByteRange(95, 100)
    assert clamp_read(100, 10, 100).length == 0
    assert clamp_read(500, 10, 100).length == 0


def test_invalid_ranges_are_refused():
    with pytest.raises(ValueError):
        ByteRange(5, 4)
    with pytest.raises(ValueError):
        clamp_read(-1, 4, 10)


def test_blocks_covering_touches_only_overlapping_blocks():
    assert list(blocks_covering(ByteRange(0, 1), 10)) == [0]
    assert list(blocks_covering(ByteRange(9, 11), 10)) == [0, 1]
    assert list(blocks_covering(ByteRange(10, 20), 10)) == [1]
    assert list(blocks_covering(ByteRange(5, 5), 10)) == []


def test_last_block_is_cut_at_the_extent():
    assert block_range(2, 10, 25) == ByteRange(20, 25)
    assert block_range(3, 10, 25).length == 0


def test_adjacent_missing_blocks_merge_into_one_request():
    plan = plan_fetches([1, 2, 3, 7], block_size=10, extent=1000, max_request=100)
    assert [(f.span.start, f.span.stop, f.blocks) for f in plan] == [(10, 40, (1, 2, 3)), (70, 80, (7,))]


def test_requests_are_capped_at_max_request():
    plan = plan_fetches(range(10), block_size=10, extent=1000, max_request=30)
    assert [f.blocks for f in plan] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]


def test_plan_never_asks_beyond_the_extent():
    plan = plan_fetches([0, 1, 2], block_size=10, extent=25, max_request=100)
    assert plan[0].span == ByteRange(0, 25)


@given(
    data=st.binary(min_size=1, max_size=300),
    block=st.integers(1, 64),
    start=st.integers(0, 300),
    size=st.integers(0, 300),
)
def test_fetched_pieces_then_their_parts_are_exactly_the_requested_bytes(data, block, start, size):
    rng = clamp_read(start, size, len(data))
    missing = list(blocks_covering(rng, block))
    blocks = []
    for fetch in plan_fetches(missing, block, len(data), max_request=block * 3):
        body = data[fetch.span.start : fetch.span.stop]
        pieces = [body[at : at + block] for at in range(0, len(body), block)]
        blocks += fetched_blocks(fetch, pieces)
    assert [index for index, _ in blocks] == missing
    assert all(piece == data[index * block : (index + 1) * block] for index, piece in blocks)
    parts = block_parts(rng, blocks, block)
    assert b"".join(parts) == data[rng.start : rng.stop]
    assert all(len(part) for part in parts)  # no empty part: each one is a copy the consumer makes


def test_fetched_blocks_past_the_known_end_are_empty_and_extra_pieces_are_refused():
    fetch = Fetch(ByteRange(0, 15), (0, 1, 2))
    assert fetched_blocks(fetch, [b"a" * 10, b"b" * 5]) == [(0, b"a" * 10), (1, b"b" * 5), (2, b"")]
    with pytest.raises(ValueError, match="4 pieces for 3 blocks"):
        fetched_blocks(fetch, [b"x"] * 4)
