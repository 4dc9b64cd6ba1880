"""Real servers for the test suite: an HTTP range server and a fault-injecting S3 proxy.

Both count what they serve so tests can assert on request counts (how many
GETs a read caused) rather than on timings, and both can misbehave on demand
so error paths are exercised against real sockets instead of mocks.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestStats"]


@dataclass
class RequestStats:
    """Thread-safe request counters shared by the test servers.

    Handlers run on many threads at once, so every update takes the lock;
    :meth:`snapshot` returns plain copies that tests can compare freely.
    """

    total: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, method: str, path: str) -> None:
        """Count one request (called when it arrives, before any fault is applied)."""
        with self._lock:
            self.total += 1
            self.by_method[method] += 1
            self.by_path[path] += 1

    def add_sent(self, n: int) -> None:
        """Add ``n`` body bytes sent to the client."""
        with self._lock:
            self.bytes_sent += n

    def add_received(self, n: int) -> None:
        """Add ``n`` request body bytes received from the client."""
        with self._lock:
            self.bytes_received += n

    def reset(self) -> None:
        """Zero every counter, e.g. after a test's setup uploads."""
        with self._lock:
            self.total = 0
            self.by_method = Counter()
            self.by_path = Counter()
            self.bytes_sent = 0
            self.bytes_received = 0

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy: ``{"total", "by_method", "by_path", "bytes_sent", "bytes_received"}``."""
        with self._lock:
            return {
                "total": self.total,
                "by_method": dict(self.by_method),
                "by_path": dict(self.by_path),
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
            }
