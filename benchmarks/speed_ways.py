"""Every way of reading the benchmark bytes, each measured the same way.

A way is a function that reads and returns how many bytes it delivered; the
:class:`Bench` wraps it with the wall clock, the proxy's GET and byte counts
and the peak RSS of the daemon serving it, and repeats it (medians).
Failures of peers are caught and recorded with their reason.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speed_data import BUCKET, Chunk, Datasets
from speed_infra import (
    HERE,
    MountFailed,
    ProxyProcess,
    RssSampler,
    clean_env,
    cpu_seconds,
    drop_page_cache,
    foreground_mount,
    percentile,
    rclone_command,
    s3fs_command,
)

MiB = 1 << 20
READ = 1 << 20


def read_file(path: Path | str) -> int:
    """``cat`` of one file into nothing: 1 MiB reads until EOF."""
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        while True:
            block = os.read(fd, READ)
            if not block:
                return n
            n += len(block)
    finally:
        os.close(fd)


def read_crc(path: Path | str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        crc, n = 0, 0
        while True:
            block = os.read(fd, READ)
            if not block:
                return n, crc
            crc = zlib.crc32(block, crc)
            n += len(block)
    finally:
        os.close(fd)


@dataclass
class Row:
    """One line of the table: a way on a dataset in one cache state."""

    way: str
    dataset: str
    state: str
    wall_s: float = float("nan")
    delivered: int = 0
    gets: int | None = None
    fetched: int | None = None
    rss: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    runs: list[float] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return self.delivered / MiB / self.wall_s if self.wall_s and self.wall_s == self.wall_s else float("nan")


class Bench:
    """Shared state of one benchmark run."""

    def __init__(self, store: Any, proxy: ProxyProcess, data: Datasets, work: Path, repeats: int, cache_size: int,
                 log: Callable[[str], None] = print, peer_repeats: int | None = None,
                 mount_options: str = "") -> None:
        self.mount_options = mount_options
        self.peer_repeats = peer_repeats or repeats
        self.store, self.proxy, self.data, self.work = store, proxy, data, work
        self.repeats, self.cache_size, self.log = repeats, cache_size, log
        self.rows: list[Row] = []
        self._crc: dict[str, int] = {}

    # -- plumbing --------------------------------------------------------------

    def storage_options(self) -> dict[str, Any]:
        so = self.store.storage_options()
        so["client_kwargs"] = {**so["client_kwargs"], "endpoint_url": self.proxy.endpoint_url}
        return so

    def s3(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def aws_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.store.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
        env["BENCH_ENDPOINT"] = self.proxy.endpoint_url
        return env

    @contextmanager
    def refmount(self, refs: Path, name: str, options: str = "") -> Iterator[tuple[Path, int]]:
        """A fresh refmount daemon (empty block cache) on ``refs``, reading through the proxy."""
        mnt = self.work / "mnt" / name
        opts = f"endpoint_url={self.proxy.endpoint_url},allow=s3,cache_size={self.cache_size}"
        for extra in (self.mount_options, options):
            if extra:
                opts += "," + extra
        cmd = [sys.executable, "-m", "refmount", "mount", str(refs), str(mnt), "-f", "-o", opts]
        with foreground_mount(cmd, mnt, env=clean_env(self.aws_env()), probe=".zgroup", log_name="refmount") as proc:
            yield mnt, proc.pid

    def measure(self, fn: Callable[[], int], pid: int | None = None) -> dict[str, Any]:
        """Run ``fn`` once: wall time, bytes delivered, GETs and bytes through the proxy, peak RSS of ``pid``.

        With a daemon, also its CPU seconds per GiB delivered: less sensitive to a loaded machine than
        the wall clock, and the figure the daemon's own per-request cost shows up in.
        """
        self.proxy.reset()
        cpu_before = cpu_seconds(pid)
        with RssSampler(pid) as rss:
            started = time.perf_counter()
            delivered = fn()
            wall = time.perf_counter() - started
        cpu_after = cpu_seconds(pid)
        counts = self.proxy.counts()
        sample = {"wall": wall, "delivered": delivered, "gets": counts["gets"], "fetched": counts["bytes_sent"],
                  "rss": rss.peak if pid is not None else None}
        if cpu_before is not None and cpu_after is not None and delivered:
            sample["cpu_s_per_gib"] = (cpu_after - cpu_before) / (delivered / (1 << 30))
        return sample

    def record(self, way: str, dataset: str, state: str, samples: list[dict[str, Any]], **extra: Any) -> Row:
        """Median of the samples (by wall time) becomes the row."""
        samples = sorted(samples, key=lambda s: s["wall"])
        mid = samples[len(samples) // 2]
        row = Row(way, dataset, state, mid["wall"], mid["delivered"], mid["gets"], mid["fetched"],
                  max((s["rss"] or 0) for s in samples) or None, extra, runs=[s["wall"] for s in samples])
        for key in ("p50_ms", "p99_ms", "cpu_s_per_gib"):
            if all(key in s for s in samples):
                row.extra[key] = statistics.median(s[key] for s in samples)
        self.rows.append(row)
        self.log(f"  {way:<34} {dataset:<4} {state:<5} {row.wall_s:8.3f} s {row.mb_s:9.1f} MB/s "
                 f"GETs {row.gets}  {' '.join(f'{k}={v:.2f}' for k, v in row.extra.items() if isinstance(v, float))}")
        return row

    def failed(self, way: str, dataset: str, state: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:400]
        self.rows.append(Row(way, dataset, state, error=reason))
        self.log(f"  {way:<34} {dataset:<4} {state:<5} FAILED {reason}")

    def guarded(self, way: str, dataset: str, state: str, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
            if not isinstance(exc, MountFailed):
                traceback.print_exc()
            self.failed(way, dataset, state, exc)

    def crc_of(self, chunk: Chunk) -> int:
        if chunk.key not in self._crc:
            self._crc[chunk.key] = zlib.crc32(self.data.expected(chunk))
        return self._crc[chunk.key]

    # -- the limit ---------------------------------------------------------------

    def raw_limit(self, name: str) -> None:
        """Concurrent ranged GETs of exactly the referenced ranges, same client (s3fs), no decoding."""
        chunks = self.data.chunks[name] if name != "all" else self.data.all_chunks()

        def body() -> int:
            fs = self.s3()
            paths = [c.url for c in chunks]
            bodies = fs.cat_ranges(paths, [c.offset for c in chunks], [c.offset + c.length for c in chunks],
                                   batch_size=64)
            return sum(len(b) for b in bodies)

        self.record("limit: raw ranged GETs", name, "cold", [self.measure(body) for _ in range(self.repeats)])

    def local_disk(self, name: str) -> None:
        """Warm reads of a local copy of the same chunk files (page cache)."""
        chunks = self.data.chunks[name] if name != "all" else self.data.all_chunks()
        root = self.work / "localcopy"
        for c in chunks:
            target = root / c.key
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.data.expected(c))
        paths = [root / c.key for c in chunks]
        body = lambda paths=paths: sum(read_file(p) for p in paths)  # noqa: E731
        body()
        self.record("limit: local disk copy", name, "warm", [self.measure(body) for _ in range(self.repeats)])

    # -- refmount ----------------------------------------------------------------

    def refmount_cat(self, name: str) -> None:
        chunks = self.data.chunks[name]
        cold, warm = [], []
        for _ in range(self.repeats):
            with self.refmount(self.data.refs_main, "rm-cat") as (mnt, pid):
                paths = [mnt / c.key for c in chunks]
                body = lambda paths=paths: sum(read_file(p) for p in paths)  # noqa: E731
                drop_page_cache()
                cold.append(self.measure(body, pid))
                warm.append(self.measure(body, pid))
        self.record("refmount: cat chunk files", name, "cold", cold)
        self.record("refmount: cat chunk files", name, "warm", warm)

    def refmount_zarr(self, name: str) -> None:
        import zarr

        stored = sum(c.length for c in self.data.chunks[name])
        cold, warm = [], []
        for _ in range(self.repeats):
            with self.refmount(self.data.refs_main, "rm-zarr") as (mnt, pid):
                def body() -> int:
                    group = zarr.open_group(str(mnt / name), mode="r", zarr_format=2)
                    for _, array in group.arrays():
                        array[...]
                    return stored

                drop_page_cache()
                cold.append(self.measure(body, pid))
                warm.append(self.measure(body, pid))
        self.record("refmount: zarr on mountpoint", name, "cold", cold)
        self.record("refmount: zarr on mountpoint", name, "warm", warm)

    def zarr_reference_fs(self, name: str) -> None:
        """What a Python user does today: zarr over fsspec's ReferenceFileSystem, in process."""
        import zarr

        stored = sum(c.length for c in self.data.chunks[name])

        def body() -> int:
            group = zarr.open_group(
                "reference://", mode="r", zarr_format=2,
                storage_options={"fo": str(self.data.refs_each[name]), "remote_protocol": "s3",
                                 "remote_options": {**self.storage_options(), "asynchronous": True}},
            )
            for _, array in group.arrays():
                array[...]
            return stored

        self.record("in-process: zarr over ReferenceFS", name, "cold", [self.measure(body) for _ in range(self.repeats)])

    def concurrent(self, readers: int = 16) -> None:
        chunks = self.data.all_chunks()
        expected = {c.key: self.crc_of(c) for c in chunks}
        parts = [chunks[i::readers] for i in range(readers)]
        cold, warm = [], []
        for _ in range(self.repeats):
            with self.refmount(self.data.refs_main, "rm-conc") as (mnt, pid):
                def body() -> int:
                    def work(part: list[Chunk]) -> int:
                        total = 0
                        for c in part:
                            n, crc = read_crc(mnt / c.key)
                            if n != c.length or crc != expected[c.key]:
                                raise AssertionError(f"{c.key}: wrong bytes through the mount")
                            total += n
                        return total

                    with ThreadPoolExecutor(readers) as pool:
                        return sum(pool.map(work, parts))

                drop_page_cache()
                cold.append(self.measure(body, pid))
                warm.append(self.measure(body, pid))
        self.record(f"refmount: {readers} readers, verified", "all", "cold", cold)
        self.record(f"refmount: {readers} readers, verified", "all", "warm", warm)

    def random_chunks(self, count: int = 500) -> None:
        chunks = random.Random(7).sample(self.data.all_chunks(), min(count, len(self.data.all_chunks())))

        def latencies(read: Callable[[Chunk], int]) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                times: list[float] = []
                total = 0
                for c in chunks:
                    t = time.perf_counter()
                    total += read(c)
                    times.append(time.perf_counter() - t)
                return {"delivered": total, "p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3}
            return run

        def measured(run: Callable[[], dict[str, Any]], pid: int | None) -> dict[str, Any]:
            box: dict[str, Any] = {}

            def body() -> int:
                box.update(run())
                return box["delivered"]

            sample = self.measure(body, pid)
            sample.update({k: box[k] for k in ("p50_ms", "p99_ms")})
            return sample

        cold, warm, raw = [], [], []
        for _ in range(self.repeats):
            with self.refmount(self.data.refs_main, "rm-rand") as (mnt, pid):
                run = latencies(lambda c: read_file(mnt / c.key))
                drop_page_cache()
                cold.append(measured(run, pid))
                warm.append(measured(run, pid))
            fs = self.s3()
            ranged_get = lambda c, fs=fs: len(fs.cat_file(c.url, start=c.offset, end=c.offset + c.length))  # noqa: E731
            raw.append(measured(latencies(ranged_get), None))
        self.record(f"refmount: {len(chunks)} random chunk files", "all", "cold", cold)
        self.record(f"refmount: {len(chunks)} random chunk files", "all", "warm", warm)
        self.record(f"limit: {len(chunks)} single raw GETs", "all", "cold", raw)

    def listing(self) -> None:
        """``ls -lR`` and ``find`` of D4 (1M keys at full scale), against a local tree of the same shape."""
        def timed(argv: list[str]) -> Callable[[], int]:
            def body() -> int:
                out = subprocess.run(argv, capture_output=True, check=True)
                return len(out.stdout)
            return body

        for tool, argv in (("ls -lR", ["ls", "-lR"]), ("find", ["find"])):
            cold, warm = [], []
            for _ in range(self.repeats):
                with self.refmount(self.data.refs_d4, "rm-d4") as (mnt, pid):
                    body = timed([*argv, str(mnt)])
                    drop_page_cache()
                    cold.append(self.measure(body, pid))
                    warm.append(self.measure(body, pid))
            self.record(f"refmount: {tool}", "D4", "cold", cold, keys=self.data.d4_keys)
            self.record(f"refmount: {tool}", "D4", "warm", warm, keys=self.data.d4_keys)
            local = timed([*argv, str(self.data.d4_tree)])
            local()
            self.record(f"local dir: {tool}", "D4", "warm", [self.measure(local) for _ in range(self.repeats)])

    # -- peers -------------------------------------------------------------------

    def fsspec_fuse(self, name: str) -> None:
        """fsspec's FUSE: stock at the root (fails: every key ENOENT), and with an empty root."""
        mnt = self.work / "mnt" / "fsspec"
        script = str(HERE / "fsspec_fuse_proc.py")
        env = clean_env(self.aws_env())
        refs = str(self.data.refs_each[name])

        def stock() -> None:
            with foreground_mount([sys.executable, script, refs, str(mnt), "stock"], mnt, env=env, log_name="fsspec"):
                try:
                    os.stat(mnt / ".zgroup")
                except OSError as exc:
                    raise MountFailed(f"stock fsspec.fuse at the set's root: stat .zgroup -> {exc.strerror} "
                                      "(FUSEr looks keys up as '/key')") from None
        self.guarded("fsspec.fuse (stock FUSEr)", name, "cold", stock)

        def rooted() -> None:
            chunks = self.data.chunks[name]
            cold, warm = [], []
            for _ in range(self.peer_repeats):
                with foreground_mount([sys.executable, script, refs, str(mnt), "rooted"], mnt, env=env,
                                      probe=".zgroup", log_name="fsspec") as proc:
                    paths = [mnt / c.key.split("/", 1)[1] for c in chunks]
                    body = lambda paths=paths: sum(read_file(p) for p in paths)  # noqa: E731
                    drop_page_cache()
                    cold.append(self.measure(body, proc.pid))
                    warm.append(self.measure(body, proc.pid))
            self.record("fsspec.fuse (root=''): cat chunks", name, "cold", cold)
            self.record("fsspec.fuse (root=''): cat chunks", name, "warm", warm)
        self.guarded("fsspec.fuse (root=''): cat chunks", name, "cold", rooted)

    def _h5_read(self, opener: Callable[[], Any], name: str) -> Callable[[], int]:
        import h5py

        stored = sum(c.length for c in self.data.chunks[name])

        def body() -> int:
            with opener() as handle, h5py.File(handle, "r") as f:
                for key in f:
                    f[key][...]
            return stored
        return body

    def _peer_mount(self, way: str, name: str, command: list[str], mnt: Path, env: dict[str, str]) -> None:
        cold, warm = [], []
        for _ in range(self.peer_repeats):
            with foreground_mount(command, mnt, env=env, probe=f"{name}.h5", log_name="peer") as proc:
                body = self._h5_read(lambda: open(mnt / f"{name}.h5", "rb"), name)
                drop_page_cache()
                cold.append(self.measure(body, proc.pid))
                warm.append(self.measure(body, proc.pid))
        self.record(way, name, "cold", cold)
        self.record(way, name, "warm", warm)

    def rclone(self, name: str) -> None:
        mnt = self.work / "mnt" / "rclone"
        cmd, env = rclone_command(BUCKET, mnt, self.proxy.endpoint_url, self.store.access_key, self.store.secret_key)
        self.guarded("h5py on rclone mount", name, "cold", lambda: self._peer_mount("h5py on rclone mount", name, cmd, mnt, env))

    def s3fs_fuse(self, name: str) -> None:
        mnt = self.work / "mnt" / "s3fs-fuse"
        cmd = s3fs_command(BUCKET, mnt, self.proxy.endpoint_url, self.store.access_key, self.store.secret_key,
                           self.work / "s3fs.passwd")
        self.guarded("h5py on s3fs-fuse mount", name, "cold",
                     lambda: self._peer_mount("h5py on s3fs-fuse mount", name, cmd, mnt, clean_env({})))

    def s3fs_files(self, name: str) -> None:
        def run() -> None:
            body = self._h5_read(lambda: self.s3().open(self.data.urls[name], "rb"), name)
            self.record("h5py on s3fs file objects", name, "cold", [self.measure(body) for _ in range(self.peer_repeats)])
        self.guarded("h5py on s3fs file objects", name, "cold", run)
