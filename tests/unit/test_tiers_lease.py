"""Fetch leases in the shared tier: the pure rules, then two or more "nodes" (tiers, block caches) on a real SeaweedFS.

Each node is its own SharedTier (its own s3fs client) on one prefix, as
separate daemons would be; the archive is a real local file read through a
counting backend, so every byte a node fetched from the archive is seen.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import botocore.exceptions
import pytest

from refmount.byterange import ByteRange
from refmount.metrics import Metrics
from refmount.read.cache import BlockCache
from refmount.read.tiers import SharedTier, TierKey, TierStack
from refmount.read.tiers.lease import LEASE_SPAN, WaitSchedule, error_code, held_elsewhere, lease_object, stretch_of
from tests.support.backends import CountingBackend

BLOCK = 4096


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


# -- the pure rules --------------------------------------------------------------


def test_the_wait_looks_again_at_doubling_pauses_and_ends_at_its_limit():
    schedule = WaitSchedule(1.0, started=100.0, first=0.01, longest=0.08)
    now, pauses = 100.0, []
    while (pause := schedule.pause(now)) is not None:
        pauses.append(pause)
        now += pause
    assert pauses[:5] == [0.01, 0.02, 0.04, 0.08, 0.08]
    assert now == pytest.approx(101.0) and sum(pauses) == pytest.approx(1.0)
    assert schedule.pause(101.5) is None
    assert WaitSchedule(0.0, started=5.0).pause(5.0) is None


@pytest.mark.parametrize(("code", "status", "held"), [
    ("PreconditionFailed", 412, True),  # the lease exists
    ("ConditionalRequestConflict", 409, True),  # another create of it is in flight
    ("AccessDenied", 403, False),
    ("NoSuchBucket", 404, False),
    ("NotImplemented", 501, False),  # a store without conditional writes
])
def test_only_an_exists_answer_means_another_node_holds_the_lease(code, status, held):
    error = client_error(code, status)
    wrapped = OSError(22, "wrapped")  # how s3fs hands botocore's errors on
    wrapped.__cause__ = error
    assert held_elsewhere(error) is held and held_elsewhere(wrapped) is held
    assert error_code(wrapped) == code
    assert held_elsewhere(TimeoutError()) is False and error_code(TimeoutError()) is None


def test_a_lease_covers_an_aligned_stretch_named_alike_on_every_node():
    per_stretch = LEASE_SPAN // BLOCK
    first, last, next_one = (TierKey("s3://a/x", "v", BLOCK, index) for index in (0, per_stretch - 1, per_stretch))
    assert stretch_of(first) == stretch_of(last) == first
    assert stretch_of(next_one) == next_one != first
    assert stretch_of(TierKey("s3://a/x", "v", 2 * LEASE_SPAN, 7)).index == 7, "a block larger than a stretch: its own"
    assert lease_object("b/p", first).startswith("b/p/leases/") and lease_object("b/p", first) != lease_object(
        "b/p", next_one)


# -- nodes on a real S3 server ----------------------------------------------------


@pytest.fixture
def nodes(local_s3, s3_bucket):
    """A factory of shared tiers on one prefix, each a separate client standing for one node; all closed after."""
    made: list[SharedTier] = []
    prefix = f"s3://{s3_bucket}/fleet"

    def node(lease_wait: float = 10.0, endpoint_url: str | None = None) -> SharedTier:
        options = {**local_s3.storage_options(), "skip_instance_cache": True}
        if endpoint_url is not None:
            options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": endpoint_url}
        tier = SharedTier(prefix, options, timeout=10, lease_wait=lease_wait)
        made.append(tier)
        return tier

    yield node, s3_bucket
    for tier in made:
        tier.close()


def keys(*indices: int, url: str = "s3://archive/data.h5") -> list[TierKey]:
    return [TierKey(url, 'etag:1:"x"', BLOCK, index) for index in indices]


SECOND_STRETCH = LEASE_SPAN // BLOCK  # the first block of the object's second stretch


def lease_exists(local_s3, bucket: str, key: TierKey) -> bool:
    return bool(local_s3.filesystem().exists(lease_object(f"{bucket}/fleet", stretch_of(key))))


@pytest.mark.s3
def test_one_node_wins_each_stretch_and_the_other_waits_for_the_uploaded_blocks(nodes, local_s3):
    node, bucket = nodes
    first, second = node(), node()
    k = keys(0, 1, SECOND_STRETCH)
    assert first.lease_many(k[:2]) == set()
    assert second.lease_many(k) == {k[0], k[1]}  # the second stretch is the second node's
    body = json.loads(local_s3.get(f"s3://{lease_object(f'{bucket}/fleet', k[0])}"))
    assert body["holder"].endswith(f":{os.getpid()}") and body["since"] > 0

    blocks = {key: os.urandom(BLOCK) for key in k}
    arrived: dict[TierKey, bytes] = {}
    waiter = threading.Thread(target=lambda: arrived.update(second.await_blocks(k[:2])))
    waiter.start()
    first.put(k[0], blocks[k[0]])
    assert first.flush(30) and lease_exists(local_s3, bucket, k[0]), "the lease lasts until its last block is up"
    first.put(k[1], blocks[k[1]])
    waiter.join(30)
    assert not waiter.is_alive()
    assert arrived == {key: blocks[key] for key in k[:2]}
    assert first.flush(30) and second.flush(30)
    assert not lease_exists(local_s3, bucket, k[0]), "the stretch's lease is deleted once its blocks are up"
    assert lease_exists(local_s3, bucket, k[2])
    # The waiter leased the first stretch anew when its lease ended, and found both blocks under it.
    assert (first.figures()["leases_won"], second.figures()["leases_won"]) == (1, 2)
    assert second.figures()["leases_held"] == 2 and second.figures()["lease_timeouts"] == 0
    second.release([k[2]])  # the second node's fetch failed: its lease goes, nothing is uploaded
    assert second.flush(30) and not lease_exists(local_s3, bucket, k[2])
    assert second.get(k[2]) is None
    assert node().lease_many([k[2]]) == set(), "a released lease is free again"


@pytest.mark.s3
def test_a_lease_taken_after_its_holder_finished_is_followed_by_a_lookup_that_finds_the_block(nodes, local_s3):
    node, bucket = nodes
    first, second = node(), node()
    (key,) = keys(5)
    assert first.lease_many([key]) == set()
    data = os.urandom(BLOCK)
    first.put(key, data)  # the first node fetched the block: its upload, then its lease's deletion
    assert first.flush(30) and not lease_exists(local_s3, bucket, key)
    # The second node wins the stretch now; its lookup, made under the lease, finds the block: nothing to fetch.
    assert second.lease_many([key]) == set()
    assert second.get(key) == data
    assert second.flush(30) and not lease_exists(local_s3, bucket, key), "a lease whose blocks are found is deleted"
    assert second.figures()["leases_won"] == 1 and second.figures()["hits"] == 1


@pytest.mark.s3
def test_a_lease_whose_holder_is_gone_costs_one_bounded_wait_then_the_waiter_clears_it(nodes, local_s3, caplog):
    node, bucket = nodes
    gone, waiter = node(), node(lease_wait=0.3)
    (key,) = keys(3)
    assert gone.lease_many([key]) == set()
    gone.close()  # died holding the lease: it never uploads, never releases
    assert waiter.lease_many([key]) == {key}
    with caplog.at_level(logging.INFO, logger="refmount.cache.shared"):
        assert list(waiter.await_blocks([key])) == []
    assert "did not arrive within 0.3 s" in caplog.text
    figures = waiter.figures()
    assert figures["lease_timeouts"] == 1 and figures["leases_held"] == 1 and figures["hits"] == 0
    data = os.urandom(BLOCK)
    waiter.put(key, data)  # the waiter fetched it itself: the upload ends the dead holder's lease
    assert waiter.flush(30)
    assert not lease_exists(local_s3, bucket, key) and node().get(key) == data


@pytest.mark.s3
def test_a_waiter_stops_waiting_once_the_lease_is_gone_without_the_block(nodes):
    node, _ = nodes
    holder, waiter = node(), node(lease_wait=60)
    (key,) = keys(1)
    assert holder.lease_many([key]) == set()
    assert waiter.lease_many([key]) == {key}
    holder.release([key])  # its fetch failed (or its upload queue was full): the lease goes, no block comes
    assert holder.flush(30)
    started = time.monotonic()
    assert list(waiter.await_blocks([key])) == []
    assert time.monotonic() - started < 30, "the waiter gave up when the lease went, not at its 60 s limit"
    assert waiter.figures()["lease_timeouts"] == 0


@pytest.mark.s3
def test_no_leases_are_taken_with_a_zero_wait_or_from_a_store_that_refuses_them(nodes, local_s3, caplog):
    node, bucket = nodes
    (key,) = keys(1)
    assert node(lease_wait=0).lease_many([key]) == set()
    assert not lease_exists(local_s3, bucket, key)
    with socket.socket() as closed:  # a port nobody listens on: every request is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    broken = node(endpoint_url=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="refmount.cache.shared"):
        assert broken.lease_many([key]) == set(), "a failed lease request leaves the block to this node"
        assert broken.lease_many([key]) == set()
    assert caplog.text.count("cannot take fetch leases") == 1, "one warning, then a pause"
    assert broken.figures()["errors"] == 1 and broken.figures()["leases_won"] == 0


@pytest.mark.s3
def test_block_caches_missing_the_same_blocks_at_once_fetch_each_from_the_archive_once(nodes, tmp_path):
    node, _ = nodes
    data = os.urandom(24 * BLOCK + 321)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    url = str(path)
    count = 4
    backends = [CountingBackend(delay=0.05) for _ in range(count)]
    caches = [BlockCache(backend, capacity=1 << 20, block_size=BLOCK, max_request=8 * BLOCK, metrics=Metrics(),
                         tiers=TierStack([node()]), versions=backend.inner.version_of) for backend in backends]
    start = threading.Barrier(count)
    answers: list[bytes] = [b""] * count
    failures: list[BaseException] = []

    def read(n: int) -> None:
        try:
            start.wait()
            answers[n] = caches[n].read(url, ByteRange(0, len(data)), len(data))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    readers = [threading.Thread(target=read, args=(n,)) for n in range(count)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert not failures and all(answer == data for answer in answers)
    figures = [cache.tiers.figures() for cache in caches]
    fetched = sum(rng.length for backend in backends for _, rng in backend.requests)
    blocks = 25
    assert fetched == len(data), f"the archive sent {fetched / len(data):.2f}x the data; {figures}"
    # All 25 blocks lie in one stretch: one lease at a time; a node may win it after the holder is done, and
    # then finds every block in its lookup.
    assert 1 <= sum(f["shared_cache_leases_won"] for f in figures) <= count
    # The others took each block from the shared tier: found by lookup, or waited for under the lease.
    assert sum(f["shared_cache_hits"] for f in figures) == (count - 1) * blocks
    assert all(f["shared_cache_lease_timeouts"] == 0 for f in figures)
    for cache in caches:
        cache.close()
