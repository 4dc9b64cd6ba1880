"""A counting wrapper around a real backend, to see exactly which GETs the cache issues."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from refmount.byterange import ByteRange
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import BackendOptions
from refmount.store.policy import UrlPolicy


class CountingBackend:
    """Delegates to a real FsspecBackend and records every range asked for."""

    def __init__(self, inner: FsspecBackend | None = None, delay: float = 0.0) -> None:
        self.inner = inner or FsspecBackend(BackendOptions(policy=UrlPolicy(local_allowed=True)))
        self.delay = delay
        self.requests: list[tuple[str, ByteRange]] = []
        self._lock = threading.Lock()

    def read_ranges(self, url: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        with self._lock:
            self.requests.extend((url, r) for r in ranges)
        if self.delay:
            time.sleep(self.delay)
        return self.inner.read_ranges(url, ranges)

    def read_pieces(self, url: str, ranges: Sequence[ByteRange], piece_size: int) -> list[list[bytes]]:
        with self._lock:
            self.requests.extend((url, r) for r in ranges)
        if self.delay:
            time.sleep(self.delay)
        return self.inner.read_pieces(url, ranges, piece_size)

    def size(self, url: str) -> int:
        return self.inner.size(url)

    def known_size(self, url: str) -> int | None:
        """The size the inner backend has seen (or was told), without a lookup of its own.

        So every contact with the store goes through :meth:`read_ranges` and is
        in :attr:`requests`, and a failed first read fails there.
        """
        return self.inner.guard.known_size(url)

    @property
    def gets(self) -> int:
        with self._lock:
            return len(self.requests)
