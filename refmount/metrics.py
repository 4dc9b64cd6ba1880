"""Process-wide counters and latency figures of a running mount.

Counters are plain integers behind one lock: FUSE threads bump them a few
times per read, far below the cost of the read itself. Latencies go into a
bounded ring so percentiles reflect recent behaviour and memory stays fixed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

COUNTERS = (
    "reads",
    "bytes_delivered",
    "bytes_fetched",
    "gets",
    "get_retries",
    "cache_hits",
    "cache_misses",
    "errors",
    "prefetches",
    "attr_requests",
    "listed_with_attrs",
)

#: The cache tiers' counters (``refmount.read.tiers``), present only when the tier is configured.
TIER_COUNTERS = tuple(
    f"{tier}_cache_{figure}"
    for tier in ("disk", "shared")
    for figure in ("hits", "misses", "bytes_read", "bytes_written", "corrupt", "errors", "dropped")
) + ("shared_cache_leases_won", "shared_cache_leases_held", "shared_cache_lease_timeouts")
#: The cache tiers' gauges: bytes in the disk directory and its budget, uploads waiting for the shared bucket.
TIER_GAUGES = ("disk_cache_stored_bytes", "disk_cache_capacity", "shared_cache_queued")


class Metrics:
    """Counters, a latency ring and gauges supplied by callbacks."""

    def __init__(self, latency_samples: int = 4096) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._latencies: deque[float] = deque(maxlen=latency_samples)
        self._gauges: dict[str, Callable[[], float]] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def add_many(self, pairs: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            for name, amount in pairs:
                self._counters[name] = self._counters.get(name, 0) + amount

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a figure computed on demand (cache bytes, open handles)."""
        self._gauges[name] = read

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def snapshot(self) -> dict[str, float]:
        """All figures at one instant, latency percentiles in milliseconds."""
        with self._lock:
            figures: dict[str, float] = dict(self._counters)
            latencies = sorted(self._latencies)
        for name, read in self._gauges.items():
            figures[name] = read()
        for label, quantile in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            figures[f"read_latency_{label}_ms"] = (
                1000 * latencies[min(len(latencies) - 1, int(quantile * len(latencies)))] if latencies else 0.0
            )
        return figures
