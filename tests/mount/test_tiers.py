"""Cache tiers seen from the stores: daemons as nodes, SeaweedFS as archive and shared cache, GETs counted per bucket.

The archive bucket and the shared-cache bucket sit behind separate counting
proxies, so every figure here is what a store itself served. Each daemon is
its own process with its own mountpoint (and, for the disk tier, its own
directory unless the test shares one), standing for one node of a fleet.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from refmount.mount.control import read_stats
from refmount.read.tiers.disk import segment_shape
from tests.support.mounting import Mount, mounted
from tests.support.readers import read_file
from tests.support.s3proxy import S3Proxy

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

BLOCK = 64 << 10
SIZE = 16 * BLOCK + 1000  # 17 blocks, the last one short
KEYS = [f"k/{i}" for i in range(17)]


def _refs(url: str, sources: dict | None = None) -> dict:
    refs = {key: [url, i * BLOCK, min(BLOCK, SIZE - i * BLOCK)] for i, key in enumerate(KEYS)}
    doc: dict = {"version": 1, "refs": refs}
    if sources is not None:
        doc["refmount"] = {"sources": sources}
    return doc


def _read_all(mount: Mount) -> bytes:
    return b"".join((mount.path / key).read_bytes() for key in KEYS)


def _data_gets(proxy: S3Proxy, bucket: str) -> int:
    return sum(1 for method, path, _ in list(proxy.requests) if method == "GET" and path.startswith(f"/{bucket}/"))


@pytest.fixture
def archive(local_s3, s3_bucket, s3_proxy, tmp_path):
    """The dataset in the archive bucket and a reference set (a local file) pointing at it."""
    data = os.urandom(SIZE)
    url = f"s3://{s3_bucket}/archive/data.bin"
    local_s3.put(url, data)
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps(_refs(url)))
    return data, url, refs_path, s3_proxy


@pytest.fixture
def shared(local_s3) -> Iterator[tuple[str, S3Proxy]]:
    """A second bucket for the shared cache, behind its own counting proxy."""
    bucket = f"t-shared-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(bucket)
    with S3Proxy(local_s3.endpoint_url, local_s3) as proxy:
        yield bucket, proxy
    with contextlib.suppress(Exception):
        local_s3.delete_bucket(bucket)


def _env(local_s3) -> dict[str, str]:
    return {k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}


def _options(proxy: S3Proxy, *extra: str) -> list[str]:
    return ["-o", ",".join([f"endpoint_url={proxy.endpoint_url}", "block_size=64K", "readahead=0", "allow=s3",
                            *extra])]


def _wait_uploads(mount: Mount) -> dict:
    deadline = time.monotonic() + 30
    while True:
        figures = read_stats(str(mount.path))
        if figures["shared_cache_queued"] == 0 or time.monotonic() > deadline:
            return figures
        time.sleep(0.05)


def _shared_options(local_s3, shared_bucket: str, shared_proxy: S3Proxy, *extra: str) -> list[str]:
    return ["-o", ",".join([f"shared_cache=s3://{shared_bucket}/fleet", f"shared.endpoint_url={shared_proxy.endpoint_url}",
                            *extra])]


def _leases(local_s3, shared_bucket: str) -> list[str]:
    """The lease objects under the shared prefix (SeaweedFS also lists the emptied folder itself)."""
    found = local_s3.filesystem().find(f"{shared_bucket}/fleet/leases")
    return [name for name in found if len(name.rsplit("/", 1)[-1]) == 64]


def test_a_remount_over_a_warm_disk_cache_reads_without_archive_gets(local_s3, archive, tmp_path):
    data, _, refs_path, proxy = archive
    bucket = str(archive[1]).split("/")[2]
    disk = tmp_path / "disk-cache"
    options = _options(proxy, f"disk_cache={disk}", "disk_cache_size=64M")
    with mounted(refs_path, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        assert _read_all(mount) == data
        assert read_stats(str(mount.path))["disk_cache_bytes_written"] == SIZE
    assert _data_gets(proxy, bucket) >= 1

    proxy.reset()
    with mounted(refs_path, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        assert _read_all(mount) == data
        figures = read_stats(str(mount.path))
    assert _data_gets(proxy, bucket) == 0, proxy.requests
    assert figures["gets"] == 0 and figures["disk_cache_hits"] == len(KEYS)
    assert figures["disk_cache_bytes_read"] == SIZE

    # A damaged block is dropped and fetched again: one GET, right bytes.
    segments = [p for p in disk.rglob("*") if p.is_file() and p.parent.name != "tmp"]
    assert len(segments) == 1, "17 blocks of 64 KiB fill part of one segment"
    stored = bytearray(segments[0].read_bytes())
    stored[segment_shape(BLOCK).data_at(3) + BLOCK // 2] ^= 0x01
    segments[0].write_bytes(bytes(stored))
    proxy.reset()
    with mounted(refs_path, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        assert _read_all(mount) == data
        figures = read_stats(str(mount.path))
        assert "does not verify" in mount.log()
    assert figures["disk_cache_corrupt"] == 1 and figures["disk_cache_hits"] == len(KEYS) - 1
    assert _data_gets(proxy, bucket) == 1


def test_a_full_disk_degrades_to_memory_only_without_errors(local_s3, archive, tmp_path):
    data, _, refs_path, proxy = archive
    disk = tmp_path / "tiny"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(disk)], check=True)
    try:
        options = _options(proxy, f"disk_cache={disk}", "disk_cache_size=1G")
        with mounted(refs_path, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
            assert _read_all(mount) == data
            assert _read_all(mount) == data
            figures = read_stats(str(mount.path))
            log = mount.log()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert log.count("cannot write blocks (the disk is full); continuing with the memory cache only") == 1
    assert figures["errors"] == 0 and figures["disk_cache_errors"] == 1 and figures["disk_cache_dropped"] > 0


def test_four_nodes_read_the_archive_once_through_the_shared_cache(local_s3, archive, shared, tmp_path):
    data, _, refs_path, proxy = archive
    archive_bucket = str(archive[1]).split("/")[2]
    shared_bucket, shared_proxy = shared
    secret = local_s3.storage_options()["secret"]
    options = _options(proxy, f"shared_cache=s3://{shared_bucket}/fleet", f"shared.endpoint_url={shared_proxy.endpoint_url}",
                       f"shared.key={local_s3.storage_options()['key']}", f"shared.secret={secret}")
    env = {k: v for k, v in _env(local_s3).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    archive_credentials = ["-o", f"s3.key={local_s3.storage_options()['key']},s3.secret={secret}"]
    with contextlib.ExitStack() as nodes:
        mounts = [nodes.enter_context(mounted(refs_path, tmp_path / f"node{n}", [*options, *archive_credentials],
                                              env=env)) for n in range(4)]
        for mount in mounts:
            assert secret.encode() not in Path(f"/proc/{mount.process.pid}/cmdline").read_bytes()
        proxy.reset()
        shared_proxy.reset()
        per_node = []
        for mount in mounts:
            before = proxy.counts()["bytes_sent"]
            assert _read_all(mount) == data
            per_node.append(proxy.counts()["bytes_sent"] - before)
            _wait_uploads(mount)
        figures = [read_stats(str(mount.path)) for mount in mounts]
        # The archive served each block once, to the first node; the others read the shared bucket.
        assert per_node[0] == SIZE and per_node[1:] == [0, 0, 0], per_node
        assert proxy.counts()["bytes_sent"] == SIZE
        assert figures[0]["shared_cache_bytes_written"] == SIZE and figures[0]["shared_cache_misses"] == len(KEYS)
        for other in figures[1:]:
            assert other["gets"] == 0 and other["shared_cache_hits"] == len(KEYS)
            assert other["shared_cache_bytes_written"] == 0
        shared_served = shared_proxy.counts()
        assert all(path.startswith(f"/{shared_bucket}/fleet/") for path in shared_served["by_path"])
        # One GET per block and node (a miss costs no listing) and one PUT per block for the fleet. Before each
        # lookup a node takes the fetch lease of the 8 MiB stretch the blocks lie in (one object, taken again after
        # each deletion): a PUT, and a DELETE once its blocks are up or found.
        leases = sum(f["shared_cache_leases_won"] for f in figures)
        assert len(mounts) <= leases <= len(mounts) * len(KEYS)
        assert shared_served["by_method"] == {"GET": 4 * len(KEYS), "PUT": len(KEYS) + leases, "DELETE": leases}
        assert _leases(local_s3, shared_bucket) == [], "every lease is deleted"
        assert _data_gets(proxy, archive_bucket) == len(KEYS)

        # A damaged shared object is ignored and its block fetched from the archive, never returned.
        names = sorted(name for name in local_s3.filesystem().find(f"{shared_bucket}/fleet") if "/leases" not in name)
        assert len(names) == len(KEYS)
        stored = bytearray(local_s3.get(f"s3://{names[5]}"))
        stored[-100] ^= 0x40
        local_s3.put(f"s3://{names[5]}", bytes(stored))
        proxy.reset()
        with mounted(refs_path, tmp_path / "node5", [*options, *archive_credentials], env=env) as late:
            assert _read_all(late) == data
            late_figures = read_stats(str(late.path))
            assert "does not verify" in late.log()
        assert late_figures["shared_cache_corrupt"] == 1 and late_figures["shared_cache_hits"] == len(KEYS) - 1
        assert _data_gets(proxy, archive_bucket) == 1


def test_four_nodes_starting_at_once_read_the_archive_once_between_them(local_s3, archive, shared, tmp_path):
    data, _, refs_path, proxy = archive
    shared_bucket, shared_proxy = shared
    options = [*_options(proxy), *_shared_options(local_s3, shared_bucket, shared_proxy)]
    with contextlib.ExitStack() as nodes:
        mounts = [nodes.enter_context(mounted(refs_path, tmp_path / f"node{n}", options, env=_env(local_s3)))
                  for n in range(4)]
        proxy.reset()
        start = threading.Barrier(len(mounts))

        def job(mount: Mount) -> bytes:
            start.wait()
            return _read_all(mount)

        with concurrent.futures.ThreadPoolExecutor(len(mounts)) as pool:
            answers = list(pool.map(job, mounts))
        assert all(answer == data for answer in answers)
        figures = [_wait_uploads(mount) for mount in mounts]
        served = proxy.counts()["bytes_sent"]
        # Each block was fetched by the one node holding the lease of its stretch when it missed it; the other
        # three took it from the shared bucket (found by lookup, or waited for under the lease).
        assert served == SIZE, f"the archive sent {served / SIZE:.2f}x the dataset to 4 nodes at once"
        assert sum(f["shared_cache_hits"] for f in figures) == 3 * len(KEYS)
        assert sum(f["shared_cache_leases_held"] for f in figures) >= 1, "the nodes did meet each other's leases"
        assert sum(f["shared_cache_lease_timeouts"] for f in figures) == 0
        assert sum(f["shared_cache_bytes_written"] for f in figures) == SIZE
        assert _leases(local_s3, shared_bucket) == []


def test_a_node_killed_holding_a_lease_delays_the_others_by_the_wait_only(local_s3, archive, shared, tmp_path):
    data, _, refs_path, proxy = archive
    shared_bucket, shared_proxy = shared
    with S3Proxy(local_s3.endpoint_url, local_s3) as stalled:  # the doomed node's archive: its GET never returns
        stalled.inject("stall", count=100, methods=frozenset({"GET"}))
        doomed_options = [*_options(stalled), *_shared_options(local_s3, shared_bucket, shared_proxy)]
        with mounted(refs_path, tmp_path / "doomed", doomed_options, env=_env(local_s3)) as doomed:
            reading = threading.Thread(target=read_file, args=(doomed.path / KEYS[0],), kwargs={"timeout": 60},
                                       daemon=True)
            reading.start()
            deadline = time.monotonic() + 30
            while not _leases(local_s3, shared_bucket) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(_leases(local_s3, shared_bucket)) == 1, doomed.log()
            doomed.process.kill()  # dies holding block 0's lease: it never uploads the block nor deletes the lease
            doomed.process.wait(10)
        stalled.release()
    proxy.reset()
    options = [*_options(proxy), *_shared_options(local_s3, shared_bucket, shared_proxy, "shared_cache_wait=1")]
    with mounted(refs_path, tmp_path / "survivor", options, env=_env(local_s3)) as survivor:
        started = time.monotonic()
        assert _read_all(survivor) == data
        waited = time.monotonic() - started
        figures = _wait_uploads(survivor)
        assert "did not arrive within 1.0 s" in survivor.log()
    # Block 0 waited out the dead node's lease; the survivor then cleared it and read the rest as it would alone.
    assert figures["shared_cache_lease_timeouts"] == 1 and figures["shared_cache_leases_held"] >= 1
    assert figures["errors"] == 0
    assert waited >= 1.0, "the lease was honoured for its wait"
    assert proxy.counts()["bytes_sent"] == SIZE
    assert _leases(local_s3, shared_bucket) == [], "the survivor's upload of block 0 ended the dead node's lease"
    assert len([name for name in local_s3.filesystem().find(f"{shared_bucket}/fleet") if "/leases" not in name]) == len(KEYS)


def test_a_rewritten_archive_object_is_never_served_from_a_tier(local_s3, archive, shared, tmp_path):
    data, url, refs_path, proxy = archive
    shared_bucket, shared_proxy = shared
    options = _options(proxy, f"disk_cache={tmp_path / 'disk'}", f"shared_cache=s3://{shared_bucket}/fleet",
                       f"shared.endpoint_url={shared_proxy.endpoint_url}")
    info = local_s3.filesystem().info(url)
    recorded = tmp_path / "recorded.json"  # references that recorded the version they were made from
    recorded.write_text(json.dumps(_refs(url, {url: {"size": SIZE, "etag": info["ETag"]}})))
    with mounted(recorded, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        assert _read_all(mount) == data
        _wait_uploads(mount)

    fresh = os.urandom(SIZE)
    local_s3.put(url, fresh)
    # References that recorded the old version: ESTALE, not the cached old bytes.
    with mounted(recorded, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        result = read_file(mount.path / KEYS[0], timeout=30)
        assert result.error == "ESTALE", result
    # References without recorded facts: the new version has other keys, so the bytes are the new ones.
    with mounted(refs_path, tmp_path / "mnt", options, env=_env(local_s3)) as mount:
        assert _read_all(mount) == fresh
        figures = read_stats(str(mount.path))
    assert figures["disk_cache_hits"] == 0 and figures["shared_cache_hits"] == 0
    assert figures["bytes_fetched"] == SIZE
