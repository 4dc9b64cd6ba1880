"""The half-open byte interval every layer speaks in: the reader's request, the cache's blocks, the store's GETs.

A value type of its own, below the store and the read path, so that both can
use it without one importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The half-open interval ``[start, stop)`` of byte offsets."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.stop < self.start:
            raise ValueError(f"invalid byte range [{self.start}, {self.stop})")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return self.stop - self.start

    def shift(self, delta: int) -> ByteRange:
        """The same range moved by ``delta`` bytes (file offsets to object offsets)."""
        return ByteRange(self.start + delta, self.stop + delta)
