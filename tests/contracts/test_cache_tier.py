"""The cache-tier contract: one test body that the disk tier and the shared tier (real SeaweedFS) both pass.

A tier answers a block only if it is the block of that key, whole and
unchanged; anything else (absent, cut short, a flipped bit, another key's
block) is a miss, counted, never bytes. Subclasses say how to make the tier
and how to read and write what it stores underneath, bypassing the tier
(:meth:`raw_write`, :meth:`raw_read`), so the body can damage it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from refmount.read.tiers.base import HEADER_SIZE, CacheTier, TierKey, announced_length, frame
from refmount.read.tiers.disk import DiskTier
from refmount.read.tiers.shared import SharedTier

BLOCK = 4096
KEY = TierKey("s3://archive/data.h5", 'etag:1000000:"abc"', BLOCK, 3)


class CacheTierContract:
    """Subclasses provide :meth:`make_tier`, :meth:`raw_write` and :meth:`raw_read`."""

    def make_tier(self, tmp_path: Path) -> CacheTier:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw_write(self, tier: CacheTier, key: TierKey, stored: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw_read(self, tier: CacheTier, key: TierKey) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def tier(self, tmp_path):
        tier = self.make_tier(tmp_path)
        yield tier
        tier.close()

    def stored(self, tier: CacheTier, key: TierKey, data: bytes) -> None:
        tier.put(key, data)
        assert tier.flush(30), "the tier did not finish writing"

    def test_a_block_put_is_got_back_and_counted(self, tier):
        data = os.urandom(BLOCK)
        assert tier.get(KEY) is None
        self.stored(tier, KEY, data)
        assert tier.get(KEY) == data
        figures = tier.figures()
        assert (figures["hits"], figures["misses"]) == (1, 1)
        assert figures["bytes_read"] == figures["bytes_written"] == BLOCK

    def test_every_part_of_the_key_tells_blocks_apart(self, tier):
        self.stored(tier, KEY, b"a" * BLOCK)
        others = [
            TierKey("s3://archive/other.h5", KEY.version, BLOCK, KEY.index),
            TierKey(KEY.url, 'etag:1000000:"def"', BLOCK, KEY.index),  # the object was rewritten
            TierKey(KEY.url, KEY.version, 2 * BLOCK, KEY.index),
            TierKey(KEY.url, KEY.version, BLOCK, KEY.index + 1),
        ]
        assert dict(tier.get_many(others)) == {}
        assert dict(tier.get_many([KEY, *others])) == {KEY: b"a" * BLOCK}

    def test_a_later_put_replaces_the_block(self, tier):
        self.stored(tier, KEY, b"short")
        self.stored(tier, KEY, b"longer block")
        assert tier.get(KEY) == b"longer block"

    @pytest.mark.parametrize("damage", ["flipped bit", "cut short", "header only", "empty", "another key's block"])
    def test_a_damaged_block_is_a_miss_never_bytes(self, tier, damage):
        data = os.urandom(BLOCK)
        self.stored(tier, KEY, data)
        stored = self.raw_read(tier, KEY)
        assert data in stored, "the tier stores the bytes framed, not transformed"
        if damage == "flipped bit":
            middle = len(stored) - BLOCK // 2
            broken = stored[:middle] + bytes([stored[middle] ^ 0x10]) + stored[middle + 1 :]
        elif damage == "cut short":
            broken = stored[:-1]
        elif damage == "header only":
            broken = stored[: len(stored) - BLOCK]
        elif damage == "empty":
            broken = b""
        else:
            broken = frame(TierKey(KEY.url, KEY.version, BLOCK, KEY.index + 1), data)
        self.raw_write(tier, KEY, broken)
        assert tier.get(KEY) is None
        assert tier.figures()["corrupt"] == 1
        # Fetched again and put back, the block is served again.
        self.stored(tier, KEY, data)
        assert tier.get(KEY) == data


class TestDiskTier(CacheTierContract):
    """The disk tier keeps a frame's header in its segment's table and its bytes in their slot."""

    def make_tier(self, tmp_path):
        return DiskTier(tmp_path / "disk-cache", 1 << 30)

    def raw_write(self, tier, key, stored):
        """Header and bytes replaced by ``stored``'s, the segment file ending where they end.

        So a frame cut short is a segment truncated there, as a crash or a full disk leaves it
        (KEY is the segment's last block); an empty frame cuts the segment inside its table.
        """
        where = tier.location(key)
        assert where.path.exists()
        header, data = stored[:HEADER_SIZE], stored[HEADER_SIZE:]
        with open(where.path, "r+b") as handle:
            handle.seek(where.header)
            handle.write(header)
            if len(header) < HEADER_SIZE:
                handle.truncate(where.header + len(header))
                return
            handle.seek(where.data)
            handle.write(data)
            handle.truncate(where.data + len(data))

    def raw_read(self, tier, key):
        where = tier.location(key)
        with open(where.path, "rb") as handle:
            handle.seek(where.header)
            header = handle.read(HEADER_SIZE)
            length = announced_length(header)
            assert length is not None, "no block header where the block should be"
            handle.seek(where.data)
            return header + handle.read(length)


class TestSharedTier(CacheTierContract):
    @pytest.fixture
    def tier(self, local_s3, s3_bucket):
        self.store = local_s3
        self.prefix = f"s3://{s3_bucket}/fleet/cache"
        tier = SharedTier(self.prefix, {**local_s3.storage_options(), "skip_instance_cache": True}, timeout=10)
        yield tier
        tier.close()

    def raw_write(self, tier, key, stored):
        self.store.put(f"{self.prefix}/{key.name[:2]}/{key.name}", stored)

    def raw_read(self, tier, key):
        return self.store.get(f"{self.prefix}/{key.name[:2]}/{key.name}")
