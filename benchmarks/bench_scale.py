"""Scale benchmark: a 10M-reference Parquet set and a 1M-reference JSON set, mounted for real.

Prints each target beside its measurement. Run:
``python benchmarks/bench_scale.py [WORKDIR] [--only parquet|json] [--view raw|decoded]``
(needs /dev/fuse; writes ~200 MB of sets, a 1M-entry local directory, and takes a few minutes).
Sets already in WORKDIR are reused, so a second run measures only. ``--view decoded`` mounts with
``-o view=decoded``: the view wraps the tree lazily, so the targets are the same as for raw.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mounting import mounted  # noqa: E402

RECORD_SIZE = 100_000
URLS = [f"s3://bucket/archive/file{i:03d}.nc" for i in range(100)]
CHUNK = 4096


def zarray(shape: list[int]) -> dict:
    return {"shape": shape, "chunks": [1] * len(shape), "dtype": "<f4", "compressor": None, "fill_value": 0,
            "filters": None, "order": "C", "zarr_format": 2}


def write_parquet_set(root: Path, fields: dict[str, list[int]]) -> int:
    """Record files written straight from numpy: row n is CHUNK bytes of URLS[n % 100]."""
    root.mkdir(parents=True)
    metadata: dict = {".zgroup": {"zarr_format": 2}}
    dictionary = pa.array(URLS)
    total = 0
    for field, shape in fields.items():
        metadata[f"{field}/.zarray"] = zarray(shape)
        metadata[f"{field}/.zattrs"] = {"_ARRAY_DIMENSIONS": [f"{field}_{i}" for i in range(len(shape))]}
        count = int(np.prod(shape))
        total += count
        (root / field).mkdir()
        for record in range((count + RECORD_SIZE - 1) // RECORD_SIZE):
            n = np.arange(record * RECORD_SIZE, min(count, (record + 1) * RECORD_SIZE), dtype=np.int64)
            table = pa.table({
                "path": dictionary.take(pa.array(n % len(URLS))),
                "offset": pa.array((n // len(URLS)) * CHUNK),
                "size": pa.array(np.full(len(n), CHUNK, np.int64)),
                "raw": pa.nulls(len(n), pa.binary()),
            })
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd", write_statistics=False)
            (root / field / f"refs.{record}.parq").write_bytes(sink.getvalue())
    (root / ".zmetadata").write_text(json.dumps({"metadata": metadata, "record_size": RECORD_SIZE}))
    return total


def write_json_set(path: Path, shape: list[int]) -> int:
    refs: dict = {".zgroup": {"zarr_format": 2}, "v/.zarray": zarray(shape)}
    count = int(np.prod(shape))
    for n in range(count):
        refs[f"v/{n // shape[1]}.{n % shape[1]}"] = [URLS[n % len(URLS)], (n // len(URLS)) * CHUNK, CHUNK]
    path.write_bytes(orjson.dumps({"version": 1, "refs": refs}))
    return count


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine is shared, so every figure says how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed_ls(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["ls", "-U1", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


VIEW_OPTIONS: list[str] = []  # ["-o", "view=decoded"] under --view decoded


def mount_ready(source: Path, mountpoint: Path):
    started = time.perf_counter()
    context = mounted(source, mountpoint, ["--log-level", "info", *VIEW_OPTIONS], timeout=120)
    mount = context.__enter__()
    return context, mount, time.perf_counter() - started


def row(name: str, measured: str, target: str, ok: bool) -> None:
    print(f"  {name:<44} {measured:>14}   target {target:<12} {'OK' if ok else 'MISSED'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", nargs="?", help="where the sets live (reused if present); default: a new temp dir")
    parser.add_argument("--only", choices=("parquet", "json"), help="run one of the two halves")
    parser.add_argument("--view", choices=("raw", "decoded"), default="raw", help="the view to mount the sets in")
    args = parser.parse_args()
    VIEW_OPTIONS[:] = ["-o", f"view={args.view}"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work} (view: {args.view}); load average {load_average()}")

    local = work / "local-1M"
    if not local.exists():
        local.mkdir()
        for i in range(1_000_000):
            os.close(os.open(local / f"{i // 1000}.{i % 1000}", os.O_CREAT | os.O_WRONLY, 0o644))
    timed_ls(local)
    local_ls = min(timed_ls(local) for _ in range(2))

    if args.only != "json":
        bench_parquet(work, local_ls)
    if args.only != "parquet":
        bench_json(work, local_ls)
    print(f"(local directory with 1M entries: ls -U1 takes {local_ls:.2f} s; load average now {load_average()})")


def bench_parquet(work: Path, local_ls: float) -> None:
    parquet = work / "set-10M.parq"
    if not parquet.exists():
        started = time.perf_counter()
        total = write_parquet_set(parquet, {"big": [3000, 3000], "w": [1000, 1000]})
        print(f"wrote {total} Parquet references in {time.perf_counter() - started:.1f} s")
    print("Parquet, 10M chunk references:")
    context, mount, ready = mount_ready(parquet, work / "mnt-parquet")
    try:
        row("mount ready", f"{ready:.2f} s", "< 2 s", ready < 2)
        rng = random.Random(1)
        cold = []
        for _ in range(10_000):  # 90 record files of `big`, at most record_cache (32) held: most stats find theirs cold
            n = rng.randrange(9_000_000)
            path = mount.path / f"big/{n // 3000}.{n % 3000}"
            started = time.perf_counter()
            os.stat(path)
            cold.append(time.perf_counter() - started)
        cold.sort()
        p50, p99 = cold[len(cold) // 2] * 1e3, cold[int(len(cold) * 0.99)] * 1e3
        row("stat of 10k random chunks, records cold (p50)", f"{p50:.3f} ms", "-", True)
        row("stat of 10k random chunks, records cold (p99)", f"{p99:.3f} ms", "<= 2 ms", p99 <= 2)
        memory = rss(mount.process.pid)
        row("daemon RSS after stat of 10k random chunks", f"{memory / 2**20:.0f} MiB", "<= 200 MiB", memory <= 200 << 20)
        os.stat(mount.path / "big/2999.0")  # loads the record holding row 2999
        latencies = []
        for column in range(1, 2001):
            started = time.perf_counter()
            os.stat(mount.path / f"big/2999.{column}")
            latencies.append(time.perf_counter() - started)
        p50 = statistics.median(latencies) * 1e3
        row("stat of a chunk, record loaded (p50)", f"{p50:.3f} ms", "< 1 ms", p50 < 1)
        cold = timed_ls(mount.path / "w")
        warm = timed_ls(mount.path / "w")
        row("ls of a 1M-chunk variable (records cold)", f"{cold / local_ls:.2f}x local", "<= 3x", cold <= 3 * local_ls)
        row("ls of a 1M-chunk variable (records cached)", f"{warm / local_ls:.2f}x local", "<= 3x", warm <= 3 * local_ls)
    finally:
        context.__exit__(None, None, None)



def bench_json(work: Path, local_ls: float) -> None:
    source = work / "set-1M.json"
    if not source.exists():
        count = write_json_set(source, [1000, 1000])
        print(f"wrote {count} JSON references ({source.stat().st_size / 2**20:.0f} MiB)")
    print("JSON, 1M chunk references:")
    context, mount, ready = mount_ready(source, work / "mnt-json")
    try:
        row("mount ready", f"{ready:.2f} s", "< 5 s", ready < 5)
        memory = rss(mount.process.pid)
        row("daemon RSS per reference", f"{memory / 1e6:.0f} B", "< 150 B", memory / 1e6 < 150)
        ls = timed_ls(mount.path / "v")
        row("ls of a 1M-chunk variable", f"{ls / local_ls:.2f}x local", "<= 3x", ls <= 3 * local_ls)
    finally:
        context.__exit__(None, None, None)


if __name__ == "__main__":
    main()
