"""Resuming a listing at the kernel's offsets: forward, a little back, far back, ahead, after a failure."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from refmount.fs.dirstream import DirStream


class Producer:
    """Entries 0..n-1, counting how often the listing was made (a Python list of a million would be the real one)."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.made = 0

    def __call__(self) -> Iterator[int]:
        self.made += 1
        for value in range(self.n):
            if value == self.fail_at:
                self.fail_at = None  # fails once
                raise OSError("record file unreadable")
            yield value


def take(stream: DirStream[int], position: int, count: int) -> list[tuple[int, int]]:
    return list(itertools.islice(stream.starting_at(position), count))


def test_reading_on_in_buffers_lists_once_and_ends():
    produce = Producer(10_000)
    stream = DirStream(produce, kept=64)
    position, seen = 0, []
    while True:
        batch = take(stream, position, 25)
        # the kernel keeps all but the last entry of a buffer (the one that did not fit comes again)
        kept = batch if len(batch) < 25 else batch[:-1]
        seen += [entry for _, entry in kept]
        if len(batch) < 25:
            break
        position = kept[-1][0] + 1
    assert seen == list(range(10_000))
    assert all(position == entry for position, entry in take(stream, 9_990, 100))
    assert produce.made == 1


def test_a_step_back_is_replayed_and_a_seek_far_back_lists_again():
    produce = Producer(1000)
    stream = DirStream(produce, kept=64)
    assert take(stream, 0, 500)[-1] == (499, 499)
    assert take(stream, 450, 3) == [(450, 450), (451, 451), (452, 452)]  # within the window
    assert produce.made == 1
    assert take(stream, 10, 2) == [(10, 10), (11, 11)]  # behind the window: listed again
    assert produce.made == 2
    assert take(stream, 0, 1) == [(0, 0)]  # rewinddir


def test_a_seek_ahead_skips_and_past_the_end_gives_nothing():
    stream = DirStream(Producer(100))
    assert take(stream, 60, 2) == [(60, 60), (61, 61)]
    assert take(stream, 100, 5) == []
    assert take(stream, 250, 5) == []


def test_a_failed_listing_is_listed_again_by_the_next_read():
    produce = Producer(100, fail_at=30)
    stream = DirStream(produce)
    with pytest.raises(OSError):
        take(stream, 0, 50)
    assert take(stream, 28, 4) == [(28, 28), (29, 29), (30, 30), (31, 31)]
    assert produce.made == 2
