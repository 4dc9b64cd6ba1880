"""The one seam between the read path and object stores: ranged reads and sizes of URLs.

The block cache and the reader see only :class:`RangeReader`. Keeping it
this narrow ("these byte ranges of this URL", "how big is this object") is
what lets tests wrap a real store (counting GETs, adding delay) and lets
another store implementation slot in without the cache knowing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from refmount.byterange import ByteRange


class RangeReader(Protocol):
    """What the cache and the reader need from an object store."""

    def read_ranges(self, url: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of every range, in order, each exactly ``len(range)`` long.

        A range the object cannot fill (past its end, a body cut short) is an
        error, never shorter data; an empty ``ranges`` is ``[]`` without a request.
        """
        ...

    def read_pieces(self, url: str, ranges: Sequence[ByteRange], piece_size: int) -> list[list[bytes]]:
        """:meth:`read_ranges`, each range's bytes cut into pieces of ``piece_size`` from its start (the last shorter).

        The block cache keeps blocks, not GET bodies: a store that can read a
        body piece by piece from the socket hands the blocks over without
        the copy that cutting one buffer would cost.
        """
        ...

    def size(self, url: str) -> int:
        """The size of the object at ``url``; an error if the store does not say."""
        ...

    def known_size(self, url: str) -> int | None:
        """The object's size if the store reports one, else None (the caller then trusts its references).

        The cache asks on every read to cut blocks at the object's real end,
        so after the first contact with an object this must answer without a
        request.
        """
        ...
