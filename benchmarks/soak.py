"""Soak test: many concurrent readers over a cache smaller than the data, every byte verified.

One command runs it (the CI test runs the same code for ~30 s)::

    python benchmarks/soak.py --duration 3600 --data-mib 2048 --cache-mib 256

It builds a dataset on local disk (a raw object of random bytes cut into
unaligned keys, and an HDF5 file scanned by ``refmount scan`` for zarr),
mounts it, and runs ``--readers`` concurrent readers for ``--duration``
seconds: ``cat`` loops, threads doing random ``pread``s, and zarr readers,
spread over several processes. Each byte read is compared with the source
files. Meanwhile the daemon's RSS, threads and open file descriptors are
sampled. It prints a JSON summary and exits non-zero when any read failed
or returned wrong bytes, when RSS went above the cache budget + 200 MiB, or
when threads or descriptors grew between the middle and the end of the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RAW_KEY_SIZES = (4_000, 65_536, 200_001, 1_000_000)


@dataclass
class Summary:
    duration: float = 0.0
    readers: int = 0
    reads: int = 0
    bytes_verified: int = 0
    errors: list[str] = field(default_factory=list)
    rss_max_mib: float = 0.0
    rss_limit_mib: float = 0.0
    threads_mid: int = 0
    threads_end: int = 0
    fds_mid: int = 0
    fds_end: int = 0

    def problems(self) -> list[str]:
        found = list(self.errors[:10])
        if self.reads == 0:
            found.append("no reads happened")
        if self.rss_max_mib > self.rss_limit_mib:
            found.append(f"RSS {self.rss_max_mib:.0f} MiB above {self.rss_limit_mib:.0f} MiB")
        if self.threads_end > self.threads_mid + 12:  # libfuse keeps up to 10 idle workers
            found.append(f"threads grew from {self.threads_mid} to {self.threads_end}")
        if self.fds_end > self.fds_mid + 4:
            found.append(f"file descriptors grew from {self.fds_mid} to {self.fds_end}")
        return found


# -- dataset -------------------------------------------------------------------------


def build_dataset(base: Path, data_mib: int) -> Path:
    """Raw keys over one object plus a scanned HDF5 array; returns the reference file."""
    import h5py
    import numpy as np

    from refmount.scan import scan_hdf5

    raw_size = max(2, data_mib // 2) << 20
    rng = random.Random(11)
    (base / "raw.bin").write_bytes(os.urandom(raw_size))
    refs: dict = {}
    offset, i = 0, 0
    while True:
        length = RAW_KEY_SIZES[i % len(RAW_KEY_SIZES)]
        if offset + length > raw_size:
            break
        refs[f"raw/{i}"] = [str(base / "raw.bin"), offset, length]
        offset += length + rng.randrange(0, 5000)
        i += 1
    depth = max(1, (data_mib << 20) // 2 // (256 * 256 * 4))
    array = np.random.default_rng(5).normal(size=(depth, 256, 256)).astype("f4")
    with h5py.File(base / "grid.h5", "w") as f:
        f.create_dataset("v", data=array, chunks=(1, 64, 64), compression="gzip", compression_opts=1)
    scanned = scan_hdf5(str(base / "grid.h5")).refs
    np.save(base / "grid.npy", array)
    for key, value in scanned["refs"].items():
        refs["grid/" + key] = value
    doc = {"version": 1, "templates": scanned.get("templates", {}), "refs": refs,
           "refmount": scanned.get("refmount", {})}
    path = base / "refs.json"
    path.write_text(json.dumps(doc))
    return path


# -- workers (each runs in its own process) -----------------------------------------------


def _raw_keys(refs_path: Path) -> list[tuple[str, int, int]]:
    refs = json.loads(refs_path.read_text())["refs"]
    return [(k, v[1], v[2]) for k, v in refs.items() if k.startswith("raw/")]


def worker(kind: str, mountpoint: Path, refs_path: Path, threads: int, seconds: float) -> dict:
    """Run ``threads`` readers of one kind for ``seconds``; return counts and errors."""
    base = refs_path.parent
    raw = (base / "raw.bin").read_bytes()
    keys = _raw_keys(refs_path)
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    result = {"reads": 0, "bytes": 0, "errors": []}

    def note(nbytes: int = 0, error: str | None = None) -> None:
        with lock:
            if error:
                result["errors"].append(error)
            else:
                result["reads"] += 1
                result["bytes"] += nbytes

    def pread_loop(seed: int) -> None:
        rng = random.Random(seed)
        # O_DIRECT bypasses the kernel's page cache, so these reads reach the daemon's block cache
        # (and its eviction) every time instead of being served from pages read before.
        flags = os.O_RDONLY | (os.O_DIRECT if seed % 2 == 0 else 0)
        while time.monotonic() < stop_at:
            key, offset, length = rng.choice(keys)
            start = rng.randrange(0, length)
            size = rng.randrange(1, 300_000)
            try:
                fd = os.open(mountpoint / key, flags)
                try:
                    got = os.pread(fd, size, start)
                finally:
                    os.close(fd)
            except OSError as exc:
                note(error=f"pread {key}: {exc}")
                continue
            want = raw[offset + start : offset + min(length, start + size)]
            note(len(got)) if got == want else note(error=f"pread {key}@{start}+{size}: wrong bytes")

    def cat_loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            key, offset, length = rng.choice(keys)
            done = subprocess.run(["cat", str(mountpoint / key)], capture_output=True, timeout=120)
            if done.returncode != 0:
                note(error=f"cat {key}: {done.stderr.decode(errors='replace').strip()}")
            elif hashlib.sha256(done.stdout).digest() != hashlib.sha256(raw[offset : offset + length]).digest():
                note(error=f"cat {key}: wrong bytes")
            else:
                note(length)

    def zarr_loop(seed: int) -> None:
        import numpy as np
        import zarr

        rng = random.Random(seed)
        expected = np.load(base / "grid.npy", mmap_mode="r")
        group = zarr.open_group(str(mountpoint / "grid"), mode="r", zarr_format=2)
        array = group["v"]
        while time.monotonic() < stop_at:
            z = rng.randrange(array.shape[0])
            y, x = rng.randrange(0, 192), rng.randrange(0, 192)
            try:
                got = array[z, y : y + 64, x : x + 64]
            except Exception as exc:  # noqa: BLE001 - any failure is a soak error
                note(error=f"zarr [{z},{y},{x}]: {type(exc).__name__}: {exc}")
                continue
            if np.array_equal(got, expected[z, y : y + 64, x : x + 64]):
                note(got.nbytes)
            else:
                note(error=f"zarr [{z},{y},{x}]: wrong values")

    loop = {"pread": pread_loop, "cat": cat_loop, "zarr": zarr_loop}[kind]
    pool = [threading.Thread(target=loop, args=(n + hash(kind) % 1000,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return result


# -- the run -----------------------------------------------------------------------------


def _proc(pid: int) -> tuple[float, int, int]:
    """RSS (MiB), threads and open descriptors of ``pid``."""
    rss, threads = 0.0, 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


def plan(readers: int) -> list[tuple[str, int]]:
    """Split readers over processes: half pread threads (two processes), a quarter cat, a quarter zarr."""
    quarter = max(1, readers // 4)
    pread = readers - 2 * quarter
    return [("pread", pread - pread // 2), ("pread", pread // 2), ("cat", quarter), ("zarr", quarter)]


def run(duration: float, readers: int, data_mib: int, cache_mib: int, workdir: Path | None = None) -> Summary:
    from tests.support.mounting import mounted

    base = Path(workdir or tempfile.mkdtemp(prefix="refmount-soak-"))
    refs_path = build_dataset(base, data_mib)
    summary = Summary(readers=readers, rss_limit_mib=cache_mib + 200)
    options = ["--cache-size", f"{cache_mib}M", "--block-size", "256K", "--max-request", "1M", "--log-level", "info"]
    with mounted(refs_path, base / "mnt", options) as m:
        pid = m.process.pid
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", kind, "--threads", str(n), "--duration", str(duration),
                 "--mountpoint", str(m.path), "--refs", str(refs_path)],
                stdout=subprocess.PIPE, text=True,
            )
            for kind, n in plan(readers) if n > 0
        ]
        mid_taken = False
        while any(p.poll() is None for p in procs):
            rss, threads, fds = _proc(pid)
            summary.rss_max_mib = max(summary.rss_max_mib, rss)
            if not mid_taken and time.monotonic() - started > duration / 2:
                summary.threads_mid, summary.fds_mid, mid_taken = threads, fds, True
            time.sleep(0.5)
        for p in procs:
            out, _ = p.communicate(timeout=duration + 300)
            if p.returncode != 0:
                summary.errors.append(f"worker exited with {p.returncode}")
                continue
            part = json.loads(out.strip().splitlines()[-1])
            summary.reads += part["reads"]
            summary.bytes_verified += part["bytes"]
            summary.errors.extend(part["errors"])
        time.sleep(1.0)
        rss, summary.threads_end, summary.fds_end = _proc(pid)
        summary.rss_max_mib = max(summary.rss_max_mib, rss)
        if not mid_taken:
            summary.threads_mid, summary.fds_mid = summary.threads_end, summary.fds_end
        summary.duration = time.monotonic() - started
        if m.process.poll() is not None:
            summary.errors.append(f"daemon exited with {m.process.returncode}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of reading")
    parser.add_argument("--readers", type=int, default=64, help="concurrent readers in all")
    parser.add_argument("--data-mib", type=int, default=512, help="size of the dataset")
    parser.add_argument("--cache-mib", type=int, default=64, help="cache budget (smaller than the data)")
    parser.add_argument("--workdir", type=Path, help="where to build the dataset (default: a new temporary directory)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mountpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--refs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.mountpoint, args.refs, args.threads, args.duration)))
        return 0
    summary = run(args.duration, args.readers, args.data_mib, args.cache_mib, args.workdir)
    problems = summary.problems()
    print(json.dumps({**asdict(summary), "errors": summary.errors[:20], "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
