"""Cache tiers benchmark: disk-tier reads against local-disk reads, and archive bytes per node in a fleet.

Run as root (the page cache is dropped between runs): ``python benchmarks/bench_tiers.py [--size-mib 32]
[--repeats 3] [--block-size 256K] [--disk-only] [--work DIR]``. A local SeaweedFS server holds the archive
and the shared-cache bucket, each behind its own counting proxy (a child process), and every daemon is a
separate refmount process with its own mountpoint, standing for a node.

1. Disk tier: a file of SIZE random bytes, referenced as 1 MiB chunk keys, is read once through a
   mount with ``disk_cache`` (filling it), then, page cache dropped and the daemon restarted (empty
   memory cache), read again: every block now comes from the disk directory. The same bytes read from
   a plain local file (page cache dropped) are the baseline; the target is >= 0.8x its throughput.
   Timing starts after the daemon's first contact with the object (one HEAD per object and mount,
   which tells the version the tier keys by); the same mount read again from memory shows what the
   FUSE path itself allows. The daemon's CPU seconds per GiB are shown for both mounted reads; on a shared
   machine each repeat's own ratios (its reads follow each other within seconds) are steadier than the
   ratio of medians.
2. Fleet: 1, 2 and 4 daemons sharing one ``shared_cache`` prefix (fresh per fleet size and order) read
   the whole dataset, one node after another, then all at once, then all at once without fetch leases
   (``shared_cache_wait=0``, the fleet before leases); printed: bytes the archive served per node (the
   target: about SIZE / nodes, the archive serving each block once, in every order), the shared
   bucket's figures, the leases the nodes took and waited on, and the slowest node's read time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_infra import (  # noqa: E402
    REPO,
    ProxyProcess,
    clean_env,
    cpu_seconds,
    drop_page_cache,
    foreground_mount,
)
from refmount.devtools.localstore import LocalS3  # noqa: E402
from refmount.mount.control import read_stats  # noqa: E402

CHUNK = 1 << 20
READ = 1 << 20


def read_through(root: Path, keys: list[str]) -> tuple[int, float]:
    """Bytes and seconds to read ``keys`` under ``root`` in 1 MiB reads, one after another."""
    started = time.perf_counter()
    total = 0
    for key in keys:
        with open(root / key, "rb", buffering=0) as handle:
            while chunk := handle.read(READ):
                total += len(chunk)
    return total, time.perf_counter() - started


def wait_for_first_contact(mountpoint: Path) -> None:
    """Let the daemon's one lookup of the object (size and version, made once per mount) finish before timing."""
    deadline = time.monotonic() + 30
    while read_stats(str(mountpoint)).get("heads", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)


def mount_command(refs: Path, mountpoint: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "refmount", "mount", str(refs), str(mountpoint), "-f", "--log-level", "warning",
            "-o", ",".join(options)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", default="256K", help="the mounts' block_size (the tier's unit)")
    parser.add_argument("--disk-only", action="store_true", help="measure the disk tier only, not the fleets")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="refmount-bench-tiers-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    keys = [f"data/{i}" for i in range(size // CHUNK)]
    print(f"# cache tiers, {args.size_mib} MiB, block_size {args.block_size}, load average "
          f"{os.getloadavg()[0]:.1f} at the start, {os.cpu_count()} CPUs")
    with ExitStack() as stack:
        store = LocalS3(work / "seaweedfs")
        store.start()
        stack.callback(store.close)
        archive = ProxyProcess(store.endpoint_url)
        stack.callback(archive.close)
        shared = ProxyProcess(store.endpoint_url)
        stack.callback(shared.close)
        bucket, shared_bucket = f"bench-archive-{uuid.uuid4().hex[:8]}", f"bench-shared-{uuid.uuid4().hex[:8]}"
        store.create_bucket(bucket)
        store.create_bucket(shared_bucket)
        data = os.urandom(size)
        url = f"s3://{bucket}/data.bin"
        store.put(url, data)
        local = work / "local.bin"
        local.write_bytes(data)
        refs = work / "refs.json"
        refs.write_text(json.dumps({"version": 1, "refs": {key: [url, i * CHUNK, CHUNK] for i, key in enumerate(keys)}}))
        env = clean_env({k: v for k, v in store.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
                        | {"PYTHONPATH": str(REPO)})
        # The memory cache holds the whole dataset twice over, so the memory row is all memory.
        base = [f"endpoint_url={archive.endpoint_url}", "allow=s3", f"cache_size={max(256, 2 * args.size_mib)}M",
                f"block_size={args.block_size}"]

        # 1. Disk tier against local disk.
        disk = work / "disk-cache"
        mountpoint = work / "mnt"
        with foreground_mount(mount_command(refs, mountpoint, *base, f"disk_cache={disk}"), mountpoint, env=env):
            read_through(mountpoint, keys)
        local_rates, tier_rates, memory_rates, archive_gets = [], [], [], []
        tier_cpu, memory_cpu = [], []
        for _ in range(args.repeats):
            drop_page_cache()
            total, seconds = read_through(local.parent, [local.name])
            local_rates.append(total / seconds)
            archive.reset()
            with foreground_mount(mount_command(refs, mountpoint, *base, f"disk_cache={disk}"), mountpoint,
                                  env=env) as daemon:
                wait_for_first_contact(mountpoint)
                drop_page_cache()
                before = cpu_seconds(daemon.pid) or 0.0
                total, seconds = read_through(mountpoint, keys)
                assert total == size
                tier_rates.append(total / seconds)
                between = cpu_seconds(daemon.pid) or 0.0
                drop_page_cache()  # the same mount again: every block in memory, the FUSE path's own ceiling
                total, seconds = read_through(mountpoint, keys)
                memory_rates.append(total / seconds)
                after = cpu_seconds(daemon.pid) or 0.0
            tier_cpu.append((between - before) / (size / 2**30))
            memory_cpu.append((after - between) / (size / 2**30))
            archive_gets.append(archive.counts()["gets"])
        local_rate, tier_rate = statistics.median(local_rates), statistics.median(tier_rates)
        # The machine is shared: a ratio of two medians taken minutes apart mixes loads, so each repeat's own
        # ratio (its three reads follow each other within seconds) is shown too.
        own = statistics.median(t / local for t, local in zip(tier_rates, local_rates, strict=True))
        ceiling = statistics.median(t / m for t, m in zip(tier_rates, memory_rates, strict=True))
        print(f"\n| read of the same bytes, page cache dropped | MiB/s (median of {args.repeats}) | daemon CPU s/GiB |")
        print("| --- | ---: | ---: |")
        print(f"| local disk (one file, 1 MiB reads) | {local_rate / 2**20:.0f} | |")
        print(f"| refmount, every block from the disk tier (fresh daemon) | {tier_rate / 2**20:.0f} | "
              f"{statistics.median(tier_cpu):.2f} |")
        print(f"| refmount, every block in its memory cache (same daemon) | {statistics.median(memory_rates) / 2**20:.0f} | "
              f"{statistics.median(memory_cpu):.2f} |")
        print(f"| disk tier / local disk | {tier_rate / local_rate:.2f}x; per repeat, median {own:.2f}x (target >= 0.8x) | |")
        print(f"| disk tier / memory cache (per repeat, median) | {ceiling:.2f}x | |")
        print("\nper repeat (MiB/s): local " + ", ".join(f"{r / 2**20:.0f}" for r in local_rates)
              + "; disk tier " + ", ".join(f"{r / 2**20:.0f}" for r in tier_rates)
              + "; memory " + ", ".join(f"{r / 2**20:.0f}" for r in memory_rates))
        print(f"\narchive GETs during the disk-tier reads: {archive_gets}")
        if args.disk_only:
            print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
            return

        # 2. Fleets sharing one bucket.
        print("\n| nodes | order | archive bytes per node | archive / dataset | shared GETs | shared bytes out "
              "| leases taken / waited on / timed out | uploads dropped | slowest node |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for nodes in (1, 2, 4):
            for order in ("one after another", "all at once", "all at once, no leases"):
                prefix = f"s3://{shared_bucket}/{nodes}-{uuid.uuid4().hex[:8]}"
                options = [*base, f"shared_cache={prefix}", f"shared.endpoint_url={shared.endpoint_url}",
                           "readahead=8M", *(["shared_cache_wait=0"] if "no leases" in order else [])]
                with ExitStack() as fleet:
                    points = [work / f"node{n}" for n in range(nodes)]
                    for point in points:
                        fleet.enter_context(foreground_mount(mount_command(refs, point, *options), point, env=env))
                    archive.reset()
                    shared.reset()
                    if order == "one after another":
                        seconds = []
                        for point in points:
                            seconds.append(read_through(point, keys)[1])
                            wait_for_uploads(point)
                    else:
                        with concurrent.futures.ThreadPoolExecutor(nodes) as pool:
                            seconds = [taken for _, taken in pool.map(lambda point: read_through(point, keys), points)]
                        for point in points:
                            wait_for_uploads(point)
                    served, from_shared = archive.counts(), shared.counts()
                    figures = [read_stats(str(point)) for point in points]
                leases = "/".join(str(sum(f.get(f"shared_cache_{name}", 0) for f in figures))
                                  for name in ("leases_won", "leases_held", "lease_timeouts"))
                print(f"| {nodes} | {order} | {served['bytes_sent'] / nodes / 2**20:.1f} MiB | "
                      f"{served['bytes_sent'] / size:.2f}x | {from_shared['gets']} | "
                      f"{from_shared['bytes_sent'] / 2**20:.1f} MiB | {leases} | "
                      f"{sum(f.get('shared_cache_dropped', 0) for f in figures)} | {max(seconds):.2f} s |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def wait_for_uploads(point: Path) -> None:
    """Until the node's upload queue is empty (at most a minute), so the next node can find its blocks."""
    deadline = time.monotonic() + 60
    while read_stats(str(point))["shared_cache_queued"] and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
