"""Fetch each key once: concurrent askers of one missing key wait for a single producer.

Three caches need this rule — fetched blocks, decoded chunks, decoded Parquet
record files — and it is easy to get subtly wrong (a failure remembered
forever, a waiter woken before the value is stored, a lock held across I/O).
It lives here once:

* :class:`Flights` is the bare rule over any set of keys: ``claim`` sorts
  keys into the ones someone else is already producing (wait on their
  future) and the ones the caller now owns (produce, then ``resolve`` or
  ``fail``). It lets a caller claim many keys at once and produce them in one
  request, which the block cache needs for coalesced GETs.
* :class:`OnceCache` is the common case: a byte- or count-bounded LRU in
  front of ``Flights``, with ``get(key, produce)``.

A failure is never cached: every waiter receives the exception, the key is
released, and the next ask produces again. No lock is held while producing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    """Keys being produced right now, each by exactly one owner."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        # A caller that guards its own state with a lock may share it, so a claim and a
        # lookup of that state happen atomically.
        self.lock = lock or threading.Lock()
        self._inflight: dict[K, Future[V]] = {}

    def claim_locked(self, keys: Iterable[K]) -> tuple[dict[K, Future[V]], dict[K, Future[V]]]:
        """``(waiting, mine)`` for ``keys``; the caller holds :attr:`lock`."""
        waiting: dict[K, Future[V]] = {}
        mine: dict[K, Future[V]] = {}
        for key in keys:
            future = self._inflight.get(key)
            if future is not None:
                waiting[key] = future
            else:
                future = self._inflight[key] = Future()
                mine[key] = future
        return waiting, mine

    def claim(self, keys: Iterable[K]) -> tuple[dict[K, Future[V]], dict[K, Future[V]]]:
        with self.lock:
            return self.claim_locked(keys)

    def in_flight(self, key: K) -> bool:
        return key in self._inflight

    def resolve_locked(self, key: K, value: V) -> None:
        """Publish ``value`` to every waiter of ``key`` (the caller holds :attr:`lock`)."""
        future = self._inflight.pop(key)
        future.set_result(value)

    def fail(self, keys: Iterable[K], exc: BaseException) -> None:
        """Hand ``exc`` to every waiter of the unresolved ``keys`` and release them."""
        with self.lock:
            for key in keys:
                future = self._inflight.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(exc)


class OnceCache(Generic[K, V]):
    """An LRU of produced values; a missing key is produced once however many ask at the same time.

    ``capacity`` is in the unit of ``getsizeof`` (bytes for ``len``, or a count
    when ``getsizeof`` is None). A value larger than the whole capacity is
    handed to its askers and not kept.
    """

    def __init__(self, capacity: int, getsizeof: Callable[[V], int] | None = None) -> None:
        self._values: LRUCache[K, V] = LRUCache(maxsize=max(1, capacity), getsizeof=getsizeof)
        self._flights: Flights[K, V] = Flights()
        self.hits = 0
        self.waits = 0

    @property
    def capacity(self) -> int:
        return int(self._values.maxsize)

    @property
    def size(self) -> int:
        return int(self._values.currsize)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: K) -> bool:
        with self._flights.lock:
            return key in self._values

    def peek(self, key: K) -> V | None:
        """The cached value of ``key`` without producing it (and without refreshing its age)."""
        with self._flights.lock:
            return self._values.get(key)

    def busy(self, key: K) -> bool:
        """Whether ``key`` is cached or being produced (a prefetch need not start)."""
        with self._flights.lock:
            return key in self._values or self._flights.in_flight(key)

    def get(self, key: K, produce: Callable[[], V]) -> V:
        with self._flights.lock:
            value = self._values.get(key)
            if value is not None:
                self.hits += 1
                return value
            waiting, mine = self._flights.claim_locked((key,))
        if waiting:
            self.waits += 1
            return waiting[key].result()
        try:
            value = produce()
        except BaseException as exc:
            self._flights.fail((key,), exc)
            raise
        with self._flights.lock:
            try:
                self._values[key] = value
            except ValueError:  # larger than the whole budget: serve it, do not keep it
                pass
            self._flights.resolve_locked(key, value)
        return value

    def clear(self) -> None:
        with self._flights.lock:
            self._values.clear()
