"""What every cache tier below the memory cache is: a key, the interface, and the framing of a stored block.

A tier (the disk directory, the shared bucket) holds blocks that outlive
the daemon, so its key must say exactly which bytes a block is: the
object's URL, the *version* of the object they were read from (ETag, or
size and mtime, as the store first saw it: see
:meth:`~refmount.store.fsspec_store.FsspecBackend.version_of`), the block
size and the block index. A rewritten object has another version and so
other keys: its old blocks are never found again, only aged out.

Every stored block is framed (:func:`frame`): a header naming the key it
belongs to, the length and a CRC-32 of the bytes. :func:`unframe` answers
the bytes only when all of that checks out, so a truncated file, a
flipped bit, or an object written under the wrong name reads as a miss,
never as data. CRC-32 detects accidents (disk errors, cut uploads), not
forgery: anyone who may write to a tier may also compute a checksum, so
write access to a tier must be given only to the nodes that use it.

The checksum is zlib's CRC-32 computed by ISA-L (the ``isal`` package),
which gives the same values about 20 times as fast as zlib here (57
against 2.9 GB per CPU-second); every block read from a tier is checked,
so zlib's CRC-32 alone was about 0.4 s of CPU per GiB served from the
disk tier.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from isal.isal_zlib import crc32  # zlib's CRC-32, same values, with carry-less multiplication

#: The first bytes of every stored block; the digit is the format's version.
MAGIC = b"RMBLOCK1"
_HEADER = struct.Struct(">8s32sQI")  # magic, key digest, data length, CRC-32 of the data
HEADER_SIZE = _HEADER.size

#: The figures each tier keeps; counters, except the gauges listed below.
FIGURES = ("hits", "misses", "bytes_read", "bytes_written", "corrupt", "errors", "dropped")


@dataclass(frozen=True, slots=True)
class TierKey:
    """One block of one version of one object, in a given block size."""

    url: str
    version: str
    block_size: int
    index: int

    @property
    def digest(self) -> bytes:
        """32 bytes that name this block wherever it is stored; the same on every node."""
        identity = "\0".join((self.url, self.version, str(self.block_size), str(self.index)))
        return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=32).digest()

    @property
    def name(self) -> str:
        """The digest as hexadecimal text: the file or object name of the block."""
        return self.digest.hex()


def frame_header(key: TierKey, data: bytes) -> bytes:
    """The :data:`HEADER_SIZE` bytes that prove ``data`` is ``key``'s block, complete (kept apart by the disk tier)."""
    return _HEADER.pack(MAGIC, key.digest, len(data), crc32(data))


def frame(key: TierKey, data: bytes) -> bytes:
    """``data`` with the header that lets :func:`unframe` prove it is ``key``'s bytes, complete."""
    return frame_header(key, data) + data


def announced_length(header: bytes) -> int | None:
    """How many bytes of data a block header says follow it; None if ``header`` is not one."""
    if len(header) < HEADER_SIZE:
        return None
    magic, _, length, _ = _HEADER.unpack_from(header)
    return int(length) if magic == MAGIC else None


def verifies(key: TierKey, header: bytes, data: bytes) -> bool:
    """Whether ``header`` names ``key`` and ``data`` is exactly the bytes it was made for."""
    if len(header) < HEADER_SIZE:
        return False
    magic, digest, length, checksum = _HEADER.unpack_from(header)
    return bool(magic == MAGIC and digest == key.digest and length == len(data) and crc32(data) == checksum)


def unframe(key: TierKey, stored: bytes) -> bytes | None:
    """The block ``stored`` holds if it is ``key``'s, whole and unchanged; None otherwise."""
    data = stored[HEADER_SIZE:]
    return data if verifies(key, stored[:HEADER_SIZE], data) else None


class TierFigures:
    """Counters of one tier, safe to bump from any thread."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        """Every tier counts :data:`FIGURES`; ``extra`` names the counters only this tier keeps."""
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((*FIGURES, *extra), 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class CacheTier(Protocol):
    """A store of framed blocks below the memory cache: a miss costs a lookup, never an error."""

    #: Short name for figures and logs: ``disk`` or ``shared``.
    name: str

    def get(self, key: TierKey) -> bytes | None:
        """The block stored under ``key`` if it is there and verifies; None for a miss or any failure."""
        ...

    def get_many(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """The blocks of ``keys`` that :meth:`get` would answer, each as soon as it is found.

        A tier may look them up concurrently; yielding early lets a reader waiting for the
        first block go on while the others are still being read.
        """
        ...

    def put(self, key: TierKey, data: bytes) -> None:
        """Keep ``data`` under ``key`` if the tier can (now or in the background); failures are only counted."""
        ...

    def figures(self) -> dict[str, int]:
        """Hits, misses, bytes read and written, corrupt blocks dropped, errors, and tier-specific gauges."""
        ...

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for writes in the background; whether none is left."""
        ...

    def close(self) -> None:
        """Finish or abandon background work; later calls miss and keep nothing."""
        ...


@runtime_checkable
class LeasingTier(CacheTier, Protocol):
    """A tier shared by several nodes that can tell one of them to fetch a block while the others wait.

    See :mod:`refmount.read.tiers.lease`. Every failure of the lease
    requests means "fetch it yourself": a lease can delay a read by the
    tier's bounded wait, never fail it.
    """

    def lease_many(self, keys: Iterable[TierKey]) -> set[TierKey]:
        """Take the fetch leases of blocks about to be looked up in this tier: the keys another node holds now.

        Leasing before the lookup is what makes a lease exact: a holder ends
        its lease only after its uploads, so a lookup made under a lease just
        won finds them. The caller waits for the keys returned that its
        lookup misses (:meth:`await_blocks`); the other misses it fetches and
        puts (or calls :meth:`release` if it could not), which ends its leases.
        """
        ...

    def await_blocks(self, keys: Iterable[TierKey]) -> Iterator[tuple[TierKey, bytes]]:
        """The blocks of ``keys`` as they arrive in the tier, for a bounded time; those missing at its end
        the caller fetches and puts, which clears the leases it waited on."""
        ...

    def release(self, keys: Iterable[TierKey]) -> None:
        """End this node's leases of ``keys`` without a block (its fetch failed), in the background."""
        ...
