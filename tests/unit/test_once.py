"""Fetch each key once: one producer per missing key, failures never remembered, budget kept."""

import threading
import time

import pytest

from refmount.once import Flights, OnceCache


def test_concurrent_askers_of_one_key_cause_one_production():
    cache: OnceCache[str, bytes] = OnceCache(1 << 20, len)
    calls = []
    gate = threading.Event()

    def produce() -> bytes:
        calls.append(1)
        gate.wait(5)
        return b"x" * 100

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", produce))) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1
    assert results == [b"x" * 100] * 16
    assert cache.waits == 15


def test_a_failure_reaches_every_waiter_and_is_not_cached():
    cache: OnceCache[str, bytes] = OnceCache(1 << 20, len)
    gate = threading.Event()
    errors: list[BaseException] = []

    def failing() -> bytes:
        gate.wait(5)
        raise OSError("store down")

    def ask() -> None:
        try:
            cache.get("k", failing)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(errors) == 4
    assert cache.get("k", lambda: b"healed") == b"healed"  # the next ask produces again


def test_the_byte_budget_evicts_least_recently_used_and_oversized_values_are_served_not_kept():
    cache: OnceCache[str, bytes] = OnceCache(250, len)
    cache.get("a", lambda: b"a" * 100)
    cache.get("b", lambda: b"b" * 100)
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    cache.get("c", lambda: b"c" * 100)
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.size <= 250
    assert cache.get("huge", lambda: b"h" * 1000) == b"h" * 1000
    assert "huge" not in cache


def test_flights_claim_many_keys_at_once():
    flights: Flights[int, str] = Flights()
    waiting, mine = flights.claim([1, 2, 3])
    assert not waiting and sorted(mine) == [1, 2, 3]
    waiting2, mine2 = flights.claim([2, 3, 4])
    assert sorted(waiting2) == [2, 3] and sorted(mine2) == [4]
    with flights.lock:
        flights.resolve_locked(2, "two")
    flights.fail([3], ValueError("bad"))
    assert waiting2[2].result(1) == "two"
    with pytest.raises(ValueError):
        waiting2[3].result(1)
    assert not flights.in_flight(3) and flights.in_flight(1) and flights.in_flight(4)
