"""The tiers below the memory cache, consulted in order on a miss and filled from what the archive sent.

Order is fastest first: the local disk, then the shared bucket. A block
found in a slower tier is copied into the faster ones that missed it (a
node's disk learns from the fleet's bucket); a block fetched from the
archive goes to every tier. A tier's answer shorter than the block the
reader may need (cut at another reference set's extent) is treated as
missing.

A tier shared by a fleet may also hand out fetch leases
(:class:`~refmount.read.tiers.base.LeasingTier`): :meth:`TierStack.lookup`
takes them just before asking that tier and says which of the blocks it
misses another node is fetching now; :meth:`TierStack.await_fleet` waits
(bounded) for those to arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from refmount.read.tiers.base import CacheTier, LeasingTier, TierKey


class TierStack:
    """Look blocks up tier by tier and keep fetched blocks in all of them."""

    def __init__(self, tiers: Sequence[CacheTier]) -> None:
        self.tiers = tuple(tiers)
        self._leasing = next((tier for tier in self.tiers if isinstance(tier, LeasingTier)), None)

    def __bool__(self) -> bool:
        return bool(self.tiers)

    def lookup(self, keys: Mapping[int, TierKey], minimum: Mapping[int, int],
               found: Callable[[int, bytes], None]) -> tuple[set[int], set[int]]:
        """Hand ``found`` each block (by index) a tier holds at least ``minimum[index]`` bytes of, as it comes.

        Returns the indices found, and those of the rest that another node is
        fetching now (it holds their lease in the shared tier, taken here just
        before that tier is asked): :meth:`await_fleet` waits for those.
        """
        wanted = {key: index for index, key in keys.items()}
        answered: set[int] = set()
        held: set[TierKey] = set()
        for position, tier in enumerate(self.tiers):
            if not wanted:
                break
            if tier is self._leasing:
                held = self._leasing.lease_many(list(wanted))
            answered |= self._hand_over(tier.get_many(list(wanted)), wanted, minimum, found, self.tiers[:position])
        return answered, {index for key, index in wanted.items() if key in held}

    def await_fleet(self, keys: Mapping[int, TierKey], minimum: Mapping[int, int],
                    found: Callable[[int, bytes], None]) -> set[int]:
        """Hand ``found`` each leased block as it arrives in the shared tier (bounded wait); the indices found.

        What arrives is kept in the faster tiers too, as a lookup's find is;
        the blocks still missing are the caller's to fetch (and store).
        """
        if self._leasing is None or not keys:
            return set()
        wanted = {key: index for index, key in keys.items()}
        faster = self.tiers[: self.tiers.index(self._leasing)]
        return self._hand_over(self._leasing.await_blocks(list(wanted)), wanted, minimum, found, faster)

    @staticmethod
    def _hand_over(answers: Iterable[tuple[TierKey, bytes]], wanted: dict[TierKey, int], minimum: Mapping[int, int],
                   found: Callable[[int, bytes], None], faster: Sequence[CacheTier]) -> set[int]:
        """Hand ``found`` the answers long enough for their readers (taken out of ``wanted``), and keep them in the
        faster tiers, which missed them; the indices handed over."""
        answered: set[int] = set()
        for key, data in answers:
            index = wanted[key]
            if len(data) < minimum[index]:
                continue
            del wanted[key]
            answered.add(index)
            found(index, data)
            for tier in faster:
                tier.put(key, data)
        return answered

    def release(self, keys: Iterable[TierKey]) -> None:
        """End this node's leases of blocks it could not fetch."""
        if self._leasing is not None:
            self._leasing.release(keys)

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
