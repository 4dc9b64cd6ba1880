"""The block cache: hits cost no GET, misses are merged, one GET per block in flight."""

import os
import threading
import time

import pytest

from refmount.byterange import ByteRange
from refmount.errors import BackendError
from refmount.read.cache import BlockCache
from tests.support.backends import CountingBackend

BLOCK = 1024


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(64 * BLOCK + 100)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return str(path), data


def make_cache(backend, capacity=1 << 20, max_request=8 * BLOCK):
    return BlockCache(backend, capacity=capacity, block_size=BLOCK, max_request=max_request)


def test_second_read_of_the_same_range_costs_no_get(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    rng = ByteRange(100, 3000)
    assert cache.read(url, rng, len(data)) == data[100:3000]
    gets = backend.gets
    assert cache.read(url, rng, len(data)) == data[100:3000]
    assert backend.gets == gets == 1


def test_neighbouring_ranges_share_blocks(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    cache.read(url, ByteRange(0, 1500), len(data))
    cache.read(url, ByteRange(1500, 2048), len(data))  # lies in block 1, already fetched
    assert backend.gets == 1


def test_adjacent_missing_blocks_are_one_get_separate_ones_are_several(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    cache.read(url, ByteRange(2 * BLOCK, 3 * BLOCK), len(data))  # block 2 cached
    assert cache.read(url, ByteRange(0, 6 * BLOCK), len(data)) == data[: 6 * BLOCK]
    spans = [(r.start, r.stop) for _, r in backend.requests[1:]]
    assert spans == [(0, 2 * BLOCK), (3 * BLOCK, 6 * BLOCK)]


def test_fetches_stop_at_the_extent(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    extent = 5 * BLOCK + 10
    assert cache.read(url, ByteRange(5 * BLOCK, extent), extent) == data[5 * BLOCK : extent]
    assert backend.requests[0][1] == ByteRange(5 * BLOCK, extent)


def test_concurrent_readers_of_one_block_cause_one_get(blob):
    url, data = blob
    backend = CountingBackend(delay=0.2)
    cache = make_cache(backend)
    results, barrier = [], threading.Barrier(8)

    def reader():
        barrier.wait()
        results.append(cache.read(url, ByteRange(10, 900), len(data)))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[10:900]] * 8
    assert backend.gets == 1


def test_budget_is_respected_and_old_blocks_are_evicted(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend, capacity=4 * BLOCK)
    for i in range(10):
        cache.read(url, ByteRange(i * BLOCK, (i + 1) * BLOCK), len(data))
    assert cache.size <= 4 * BLOCK
    assert not cache.contains(url, 0) and cache.contains(url, 9)


def test_a_failed_fetch_is_not_remembered(tmp_path):
    missing = str(tmp_path / "not-there.bin")
    backend = CountingBackend()
    cache = make_cache(backend)
    for _ in range(2):
        with pytest.raises(BackendError, match="not found"):
            cache.read(missing, ByteRange(0, 10), 100)
    assert backend.gets == 2


def test_a_failed_fetch_reaches_every_reader_waiting_for_it_and_the_next_read_fetches_again(tmp_path):
    path = tmp_path / "late.bin"
    backend = CountingBackend(delay=0.3)
    cache = make_cache(backend)
    errors, barrier = [], threading.Barrier(6)

    def reader():
        barrier.wait()
        try:
            cache.read(str(path), ByteRange(0, 10), 100)
        except BackendError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 6 and all("not found" in str(e) for e in errors)
    assert backend.gets == 1  # one GET failed, five readers waited for it
    data = os.urandom(100)
    path.write_bytes(data)
    assert cache.read(str(path), ByteRange(0, 10), 100) == data[:10]
    assert backend.gets == 2


def test_a_block_cached_short_is_fetched_again_by_a_read_that_needs_more(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    short_extent = 5 * BLOCK + 10
    cache.read(url, ByteRange(5 * BLOCK, short_extent), short_extent)
    assert cache.read(url, ByteRange(5 * BLOCK, 5 * BLOCK + 500), len(data)) == data[5 * BLOCK : 5 * BLOCK + 500]
    assert [r for _, r in backend.requests] == [ByteRange(5 * BLOCK, short_extent), ByteRange(5 * BLOCK, 6 * BLOCK)]


def test_a_reader_that_waited_for_a_shorter_fetch_fetches_the_rest_itself(blob):
    url, data = blob
    backend = CountingBackend(delay=0.5)
    cache = make_cache(backend)
    short_extent = 5 * BLOCK + 10
    first = threading.Thread(target=cache.read, args=(url, ByteRange(5 * BLOCK, short_extent), short_extent))
    first.start()
    time.sleep(0.15)  # the first fetch is in flight: the second read waits for it, then finds it too short
    assert cache.read(url, ByteRange(5 * BLOCK, 5 * BLOCK + 500), len(data)) == data[5 * BLOCK : 5 * BLOCK + 500]
    first.join(5)
    assert [r for _, r in backend.requests] == [ByteRange(5 * BLOCK, short_extent), ByteRange(5 * BLOCK, 6 * BLOCK)]


def test_hits_misses_and_prefetches_are_counted(blob):
    url, data = blob
    backend = CountingBackend()
    cache = make_cache(backend)
    cache.prefetch(url, ByteRange(0, 4 * BLOCK), len(data))
    assert (cache.metrics.get("prefetches"), cache.metrics.get("cache_misses")) == (1, 4)
    cache.prefetch(url, ByteRange(0, 4 * BLOCK), len(data))  # all cached: nothing to fetch
    assert cache.metrics.get("prefetches") == 1
    assert cache.read(url, ByteRange(BLOCK, 3 * BLOCK + 1), len(data)) == data[BLOCK : 3 * BLOCK + 1]
    assert cache.metrics.get("cache_hits") == 4 + 3
    assert cache.read(url, ByteRange(4 * BLOCK, 5 * BLOCK), len(data)) == data[4 * BLOCK : 5 * BLOCK]
    assert cache.metrics.get("cache_misses") == 4 + 1
    assert backend.gets == 2
