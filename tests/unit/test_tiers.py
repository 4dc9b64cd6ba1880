"""The block cache over a disk tier, with real files as the archive: persistence, versions, damage, budget."""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from refmount.byterange import ByteRange
from refmount.metrics import Metrics
from refmount.mount.control import format_stats
from refmount.mount.prometheus import render
from refmount.read.cache import BlockCache
from refmount.read.tiers import DiskTier, TierKey, TierStack, base
from refmount.read.tiers.base import HEADER_SIZE
from tests.support.backends import CountingBackend

BLOCK = 4096


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(16 * BLOCK + 123)
    path = tmp_path / "archive" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    return str(path), data


def cache_over(directory: Path, capacity: int = 1 << 30) -> tuple[BlockCache, CountingBackend, DiskTier]:
    """A fresh process's view: new backend, new memory cache, the disk tier at ``directory``."""
    backend = CountingBackend()
    tier = DiskTier(directory, capacity)
    cache = BlockCache(backend, capacity=1 << 20, block_size=BLOCK, max_request=8 * BLOCK, metrics=Metrics(),
                       tiers=TierStack([tier]), versions=backend.inner.version_of)
    return cache, backend, tier


def fetched(backend: CountingBackend) -> int:
    """Bytes the cache asked the archive for."""
    return sum(rng.length for _, rng in backend.requests)


def version_of(url: str) -> str:
    """The version a fresh backend reports for ``url``, which the tier keys by."""
    version = CountingBackend().inner.version_of(url)
    assert version is not None
    return version


def test_a_fresh_cache_over_a_warm_directory_reads_without_a_get(blob, tmp_path):
    url, data = blob
    first, backend, _ = cache_over(tmp_path / "disk")
    assert first.read(url, ByteRange(0, len(data)), len(data)) == data
    assert backend.gets >= 1
    first.close()

    second, backend, tier = cache_over(tmp_path / "disk")
    assert second.read(url, ByteRange(100, len(data)), len(data)) == data[100:]
    assert backend.gets == 0
    figures = second.metrics.snapshot()
    assert figures["disk_cache_hits"] == 17 and figures["disk_cache_misses"] == 0
    assert figures["disk_cache_bytes_read"] == len(data)
    second.close()


def test_a_rewritten_object_is_never_answered_from_the_directory(blob, tmp_path):
    url, data = blob
    first, _, _ = cache_over(tmp_path / "disk")
    assert first.read(url, ByteRange(0, len(data)), len(data)) == data
    first.close()
    fresh = os.urandom(len(data))  # same size; the mtime may even be set back: the identity still changes
    stat = os.stat(url)
    Path(url).write_bytes(fresh)
    os.utime(url, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    second, backend, _ = cache_over(tmp_path / "disk")
    assert second.read(url, ByteRange(0, len(data)), len(data)) == fresh
    assert backend.gets >= 1
    assert second.metrics.snapshot()["disk_cache_hits"] == 0
    second.close()


def filled_disk_tier(directory: Path, url: str, data: bytes) -> DiskTier:
    """A disk tier holding every block of ``url``, written by a daemon's cache that has since closed."""
    first, _, tier = cache_over(directory)
    first.read(url, ByteRange(0, len(data)), len(data))
    first.close()
    return tier


def test_a_corrupt_block_is_dropped_and_fetched_again_its_neighbours_still_served(blob, tmp_path):
    url, data = blob
    tier = filled_disk_tier(tmp_path / "disk", url, data)
    where = tier.location(TierKey(url, version_of(url), BLOCK, 5))
    segment = bytearray(where.path.read_bytes())
    segment[where.data + 7] ^= 0xFF
    where.path.write_bytes(bytes(segment))

    second, backend, _ = cache_over(tmp_path / "disk")
    assert second.read(url, ByteRange(0, len(data)), len(data)) == data
    assert backend.gets == 1 and fetched(backend) == BLOCK, "only the damaged block is fetched again"
    figures = second.metrics.snapshot()
    assert (figures["disk_cache_corrupt"], figures["disk_cache_hits"]) == (1, 16)
    second.close()
    assert where.path.read_bytes()[where.data + 7] == data[5 * BLOCK + 7], "the refetched block was written back"

    third, backend, _ = cache_over(tmp_path / "disk")
    assert third.read(url, ByteRange(0, len(data)), len(data)) == data
    assert backend.gets == 0
    third.close()


def test_a_truncated_segment_serves_the_blocks_before_the_cut_and_refetches_the_rest(blob, tmp_path):
    url, data = blob
    tier = filled_disk_tier(tmp_path / "disk", url, data)
    where = tier.location(TierKey(url, version_of(url), BLOCK, 9))
    os.truncate(where.path, where.data + 100)  # inside block 9: blocks 10..16 are gone

    second, backend, _ = cache_over(tmp_path / "disk")
    assert second.read(url, ByteRange(0, len(data)), len(data)) == data
    figures = second.metrics.snapshot()
    assert figures["disk_cache_hits"] == 9 and figures["disk_cache_corrupt"] == 8  # their headers promise more
    assert fetched(backend) == len(data) - 9 * BLOCK
    second.close()

    third, backend, _ = cache_over(tmp_path / "disk")
    assert third.read(url, ByteRange(0, len(data)), len(data)) == data
    assert backend.gets == 0, "the refetched blocks were written back"
    third.close()


@pytest.mark.parametrize("damage", ["cut inside its table", "another segment's header", "emptied"])
def test_a_damaged_segment_is_removed_whole_and_its_blocks_fetched_again(blob, tmp_path, damage):
    url, data = blob
    tier = filled_disk_tier(tmp_path / "disk", url, data)
    where = tier.location(TierKey(url, version_of(url), BLOCK, 0))
    if damage == "cut inside its table":
        os.truncate(where.path, where.header + 10)
    elif damage == "another segment's header":
        other = tier.location(TierKey(url, "another version", BLOCK, 0))
        tier.put(TierKey(url, "another version", BLOCK, 0), b"x" * BLOCK)
        segment = bytearray(where.path.read_bytes())
        segment[:HEADER_SIZE] = other.path.read_bytes()[:HEADER_SIZE]
        where.path.write_bytes(bytes(segment))
    else:
        where.path.write_bytes(b"")

    second, backend, _ = cache_over(tmp_path / "disk")
    assert second.read(url, ByteRange(0, len(data)), len(data)) == data
    figures = second.metrics.snapshot()
    assert (figures["disk_cache_corrupt"], figures["disk_cache_hits"]) == (1, 0)
    assert fetched(backend) == len(data)
    second.close()
    assert where.path.stat().st_size > len(data), "a new segment holds the refetched blocks"


def test_the_sweeper_keeps_the_directory_in_budget_least_recently_used_first(tmp_path):
    # One block per segment, so the unit of eviction is one block here; each takes two pages (table, data):
    # the budget holds ten.
    tier = DiskTier(tmp_path / "disk", 20 * BLOCK + 2000, touch_interval=0.0, segment_bytes=BLOCK)
    keys = [TierKey("s3://a/b", "v", BLOCK, index) for index in range(12)]
    for key in keys[:10]:
        tier.put(key, os.urandom(BLOCK))
    past = time.time() - 100
    for age, key in enumerate(keys[:10]):  # make the order of use certain: keys[0] oldest
        os.utime(tier.location(key).path, (past + age, past + age))
    assert tier.get(keys[0]) is not None  # used now: the newest
    tier.put(keys[10], os.urandom(BLOCK))
    tier.put(keys[11], os.urandom(BLOCK))

    def path(key: TierKey) -> Path:
        return tier.location(key).path

    deadline = time.monotonic() + 20
    while (path(keys[1]).exists() or tier.figures()["stored_bytes"] > tier.capacity) and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = {key.index for key in keys if path(key).exists()}
    on_disk = sum(path(keys[index]).stat().st_blocks * 512 for index in kept)
    assert tier.figures()["stored_bytes"] == on_disk <= tier.capacity
    assert {0, 10, 11} <= kept and 1 not in kept and 2 not in kept
    tier.close()


def test_a_segment_is_evicted_whole_and_a_reader_holding_it_open_is_not_disturbed(tmp_path):
    tier = DiskTier(tmp_path / "disk", 1 << 30, segment_bytes=4 * BLOCK)
    blocks = {TierKey("s3://a/b", "v", BLOCK, index): os.urandom(BLOCK) for index in range(8)}  # two segments
    for key, data in blocks.items():
        tier.put(key, data)
    reading = tier.get_many(list(blocks))
    first = [next(reading)]  # the reader has both segments open now
    tier.capacity = 1
    tier.sweep()
    assert not any(tier.location(key).path.exists() for key in blocks)
    assert dict(first + list(reading)) == blocks, "an evicted segment stays readable through the open descriptor"
    assert tier.get(next(iter(blocks))) is None
    tier.close()


def test_an_unusable_directory_means_memory_only_with_one_warning(blob, tmp_path, caplog):
    url, data = blob
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with caplog.at_level(logging.WARNING, logger="refmount.cache.disk"):
        cache, backend, _ = cache_over(not_a_directory / "cache")
        assert cache.read(url, ByteRange(0, len(data)), len(data)) == data
        assert cache.read(url, ByteRange(0, len(data)), len(data)) == data
    assert len(caplog.records) == 1 and "memory cache only" in caplog.records[0].message
    cache.close()


def test_two_daemons_sharing_a_directory_read_right_bytes(blob, tmp_path):
    url, data = blob
    caches = [cache_over(tmp_path / "disk")[0] for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def reader(cache: BlockCache, start: int) -> None:
        barrier.wait()
        try:
            for offset in range(start, len(data), 997):
                cache.clear()
                assert cache.read(url, ByteRange(offset, min(len(data), offset + 3000)), len(data)) == \
                    data[offset : offset + 3000]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(caches[n % 2], n * 13)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for cache in caches:
        cache.close()


def test_tier_figures_reach_refmount_stats_and_prometheus(blob, tmp_path):
    url, data = blob
    cache, _, _ = cache_over(tmp_path / "disk")
    cache.read(url, ByteRange(0, len(data)), len(data))
    figures = cache.metrics.snapshot()
    cache.close()
    text = format_stats(figures)
    assert "disk cache bytes written" in text and "disk cache misses" in text
    exposition = render(figures, {"mountpoint": "/mnt"})
    assert f'refmount_disk_cache_bytes_written_total{{mountpoint="/mnt"}} {len(data)}' in exposition
    assert "# TYPE refmount_disk_cache_stored_bytes gauge" in exposition
    assert "shared_cache" not in exposition, "a tier that is not configured shows no figures"


def test_blocks_of_the_earlier_one_file_per_block_layout_are_removed(tmp_path):
    """They count against no budget: left in place they would fill the disk beside the bounded cache."""
    old = tmp_path / "refmount-blocks-v1" / "ab"
    old.mkdir(parents=True)
    (old / "block").write_bytes(b"x" * 4096)
    tier = DiskTier(tmp_path, 1 << 20)
    try:
        deadline = time.monotonic() + 10
        while any(p.name.startswith((".refmount-blocks-v1", "refmount-blocks-v1")) for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, list(tmp_path.iterdir())
            time.sleep(0.01)
        assert (tmp_path / "refmount-segments-v1").is_dir()
    finally:
        tier.close()


@pytest.mark.parametrize("size", [0, 1, 4095, 5 << 10, (1 << 20) + 3])
def test_the_block_checksum_is_zlibs_crc32_as_isal_computes_it(size):
    data = os.urandom(size)
    key = TierKey("s3://bucket/object", "etag", 1 << 20, 3)
    header = base.frame_header(key, data)
    assert header[-4:] == zlib.crc32(data).to_bytes(4, "big")  # the stored format: a block framed earlier still verifies
    assert base.verifies(key, header, data)
    if size:
        assert not base.verifies(key, header, bytes([data[0] ^ 1]) + data[1:])
