"""What a single key of a reference set points at.

Three shapes exist in the kerchunk spec and nothing else is needed:
bytes stored in the set itself, a byte range of a remote object, and a
whole remote object whose size is only known by asking the store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Inline:
    """Bytes carried in the reference set (metadata, small chunks)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Range:
    """``length`` bytes of ``url`` starting at ``offset``."""

    url: str
    offset: int
    length: int

    @property
    def size(self) -> int:
        return self.length


@dataclass(frozen=True, slots=True)
class Whole:
    """The whole object at ``url``; its size is looked up lazily from the store."""

    url: str


Reference = Inline | Range | Whole


def known_size(ref: Reference) -> int | None:
    """The size of a reference without asking the store; None for a whole object (only the store knows)."""
    if isinstance(ref, Inline):
        return len(ref.data)
    if isinstance(ref, Range):
        return ref.length
    return None
