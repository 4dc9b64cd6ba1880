"""Cache tiers below the memory cache: a local disk directory and a bucket shared by a fleet.

:mod:`~refmount.read.tiers.base` is the interface (:class:`CacheTier`, keyed
by :class:`TierKey`) and the framing every tier stores; one module per
tier (:mod:`~refmount.read.tiers.disk`, :mod:`~refmount.read.tiers.shared`);
:mod:`~refmount.read.tiers.stack` consults them in order for the block
cache (:mod:`refmount.read.cache`). :func:`open_tiers` builds the stack
from a mount's options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refmount.read.tiers.base import CacheTier, TierKey
from refmount.read.tiers.disk import DiskTier
from refmount.read.tiers.shared import SharedTier
from refmount.read.tiers.stack import TierStack

__all__ = ["CacheTier", "DiskTier", "SharedTier", "TierKey", "TierStack", "open_tiers"]


def open_tiers(*, disk_cache: str | None, disk_cache_size: int, shared_cache: str | None,
               shared_options: Mapping[str, Any], timeout: float, queue_bytes: int,
               lease_wait: float = 0.0) -> TierStack:
    """The tiers a mount asked for, fastest first (none: an empty stack, and the cache is memory only)."""
    tiers: list[CacheTier] = []
    if disk_cache:
        tiers.append(DiskTier(disk_cache, disk_cache_size))
    if shared_cache:
        tiers.append(SharedTier(shared_cache, shared_options, timeout=timeout, queue_bytes=queue_bytes,
                                lease_wait=lease_wait))
    return TierStack(tiers)
