"""Fetch leases: while one node of a fleet fetches a block from the archive, the others wait for it in the shared bucket.

Without them, nodes that miss the same block at the same moment each fetch
it: a job started on every node at once reads the archive once per node,
however the shared tier is filled afterwards. Before it looks blocks up in
the shared bucket, a node creates a small lease object for each *stretch*
they lie in (:data:`LEASE_SPAN` bytes of the object, aligned, so one
readahead run takes one lease) with a conditional PUT
(``If-None-Match: *``). The store lets exactly one creator succeed; every
other learns from the refusal (412, or 409 for a create racing another)
that a node is fetching in that stretch now, and waits for the blocks its
lookup missed to appear in the bucket instead of fetching them. The holder
fetches the blocks its lookup missed, uploads them and then deletes the
lease. Leasing before the lookup is what makes the lease exact: a lease is
deleted only after its holder's uploads, so a node that wins it afterwards
finds those blocks in its lookup. When a lease is gone, a waiter leases the
blocks it still misses anew and looks them up (the holder needed other
blocks of the stretch, or could not keep them), so again one node fetches
each; a block later removed from the bucket (a lifecycle rule) is leased
afresh by the next node that misses it. Per stretch a node reads, a lease
costs a PUT and a DELETE, whether its lookups hit or miss.

How long a lease is honoured is decided by each waiter alone, on its own
clock: it looks for the block at growing intervals (:class:`WaitSchedule`)
for at most ``shared_cache_wait`` seconds after meeting the lease, then
fetches the block from the archive itself, uploads it and deletes the
lease. No two nodes' clocks are compared, and a holder that died (or lost
its upload) costs each waiter that one bounded wait, once: once the block
is uploaded, nodes find it by lookup and never meet the lease again.

A store that ignores ``If-None-Match`` lets every node win: the fleet then
fetches as it would without leases, never less correctly. Lease objects
carry no data any reader trusts (their body only names the holder, for an
operator), so a forged lease can delay a node by the wait, nothing more.

This module is the part without I/O: where a lease lives, what it says,
how an answer of the store is read, and when to look again. The requests
are :class:`~refmount.read.tiers.shared.SharedTier`'s.
"""

from __future__ import annotations

import json

from refmount.read.tiers.base import TierKey

#: The folder of lease objects under the shared prefix (blocks live in two-hex-digit folders beside it).
LEASE_FOLDER = "leases"
#: Bytes of an object one lease covers (aligned): the default ``max_request``, one GET of a readahead run.
#: Every node must use the same value, so it is not an option.
LEASE_SPAN = 8 << 20
#: Seconds before a waiter first looks for a leased block (a block of 1 MiB takes milliseconds on a LAN).
FIRST_LOOK = 0.005
#: The longest pause between two looks at a lease (a HEAD), so blocks are picked up soon after it ends.
LONGEST_PAUSE = 0.1
#: Error codes with which S3 stores refuse a conditional create because the object exists or is being created.
HELD_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def stretch_of(key: TierKey) -> TierKey:
    """The stretch ``key``'s block lies in, named by the stretch's first block (the same on every node)."""
    blocks = max(1, LEASE_SPAN // key.block_size)
    return TierKey(key.url, key.version, key.block_size, key.index - key.index % blocks)


def lease_object(base: str, key: TierKey) -> str:
    """``BUCKET/PREFIX/leases/XY/NAME``: the lease of stretch ``key``, named like the stretch's first block."""
    name = key.name
    return f"{base}/{LEASE_FOLDER}/{name[:2]}/{name}"


def lease_body(holder: str, since: float) -> bytes:
    """What a lease says, for an operator listing the bucket: who fetches the block, since when (Unix time)."""
    return json.dumps({"holder": holder, "since": round(since, 3)}).encode()


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs wraps botocore's ClientError in an OSError), if there is one."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = error.get("Code") if isinstance(error, dict) else None
            if code is not None:
                return str(code)
            if status is not None:
                return str(status)
    return None


def held_elsewhere(exc: BaseException) -> bool:
    """Whether a failed conditional create means another node holds the lease (as opposed to a failure)."""
    return isinstance(exc, FileExistsError) or error_code(exc) in HELD_CODES


class WaitSchedule:
    """When a node waiting for leased blocks looks again, and when it gives up.

    Pauses double from ``first`` up to ``longest`` and never reach past
    ``limit`` seconds after ``started``; once that moment has come,
    :meth:`pause` answers None and the waiter fetches what is still missing.
    """

    def __init__(self, limit: float, started: float, *, first: float = FIRST_LOOK,
                 longest: float = LONGEST_PAUSE) -> None:
        self.deadline = started + limit
        self._next = first
        self._longest = longest

    def pause(self, now: float) -> float | None:
        """Seconds to sleep before the next look; None when the wait is over."""
        left = self.deadline - now
        if left <= 0:
            return None
        pause = min(self._next, left)
        self._next = min(self._next * 2, self._longest)
        return pause
