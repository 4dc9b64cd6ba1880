"""The tiers below the memory cache, consulted in order on a miss and filled from what the archive sent.

Order is fastest first: the local disk, then the shared bucket. A block
found in a slower tier is copied into the faster ones that missed it (a
node's disk learns from the fleet's bucket); a block fetched from the
archive goes to every tier. A tier's answer shorter than the block the
reader may need (cut at another reference set's extent) is treated as
missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from refmount.read.tiers.base import CacheTier, TierKey


class TierStack:
    """Look blocks up tier by tier and keep fetched blocks in all of them."""

    def __init__(self, tiers: Sequence[CacheTier]) -> None:
        self.tiers = tuple(tiers)

    def __bool__(self) -> bool:
        return bool(self.tiers)

    def lookup(self, keys: Mapping[int, TierKey], minimum: Mapping[int, int],
               found: Callable[[int, bytes], None]) -> set[int]:
        """Hand ``found`` each block (by index) a tier holds at least ``minimum[index]`` bytes of, as it comes.

        Returns the indices found.
        """
        wanted = {key: index for index, key in keys.items()}
        answered: set[int] = set()
        missed_in: list[CacheTier] = []
        for tier in self.tiers:
            if not wanted:
                break
            for key, data in tier.get_many(list(wanted)):
                index = wanted[key]
                if len(data) < minimum[index]:
                    continue
                del wanted[key]
                answered.add(index)
                found(index, data)
                for faster in missed_in:
                    faster.put(key, data)
            missed_in.append(tier)
        return answered

    def store(self, blocks: Iterable[tuple[TierKey, bytes]]) -> None:
        """Keep blocks just fetched from the archive in every tier."""
        for key, data in blocks:
            for tier in self.tiers:
                tier.put(key, data)

    def figures(self) -> dict[str, int]:
        """Every tier's figures, named ``TIER_cache_FIGURE`` (``disk_cache_hits``)."""
        return {f"{tier.name}_cache_{name}": value for tier in self.tiers for name, value in tier.figures().items()}

    def flush(self, timeout: float) -> bool:
        return all(tier.flush(timeout) for tier in self.tiers)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
