"""Sequential read of a whole dataset: the netCDF view beside the decoded view and the original file.

Usage: python benchmarks/bench_netcdf.py [--mib N] [--repeats N] [--where local,s3] [--work DIR]

Writes a compressed NetCDF4 file (float32, zlib+shuffle, chunks of 1 x 256 x 512, about N MiB
decoded), scans it with ``refmount scan``'s library, and times each way cold (page cache dropped,
a fresh mount for every run), reporting the median of ``--repeats`` runs.

``local``: the original and its references on local disk, so decoding and assembly, not a store:

* ``cat`` of the netCDF view's ``.nc`` file; ``cat`` of every chunk file of the decoded view;
* ``nccopy`` of the virtual ``.nc`` file, and of the original (libnetcdf + HDF5), to a local file.

``s3``: the original uploaded to a local SeaweedFS (``LocalS3``), the references pointing at
``s3://``, every way reading it through the S3 API on loopback:

* refmount's netCDF view: ``cat`` of the ``.nc`` file, and ``nccopy`` of it to local disk;
* refmount's decoded view: ``cat`` of every chunk file (the decoded view's sequential read);
* ``nccopy`` of the original NetCDF4/HDF5 file through an s3fs-fuse mount and through an
  rclone mount (``--vfs-cache-mode off``), the ways a netCDF user reads a file on S3 today;
* two limits: every stored chunk fetched by concurrent ranged GETs (s3fs, no decoding), and every
  chunk decoded in one process from memory (numcodecs, one core, no store).

Figures: seconds, MiB/s of decoded data, the ratio to the decoded view's ``cat``, the refmount
daemon's CPU seconds per GiB delivered, and the CPU of the tool (cat, nccopy) itself.
Run as root so the page cache can be dropped; scripts/setup-bench installs the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from speed_infra import (  # noqa: E402
    REPO,
    clean_env,
    cpu_seconds,
    drop_page_cache,
    foreground_mount,
    rclone_command,
    s3fs_command,
)

from refmount.devtools.localstore import LocalS3  # noqa: E402
from refmount.scan import scan_hdf5  # noqa: E402

NY, NX = 256, 512  # one chunk: 512 KiB decoded
BUCKET = "bench-nc"
MiB, GiB = 1 << 20, 1 << 30


def write_dataset(path: Path, mib: int) -> None:
    steps = max(1, mib * MiB // (NY * NX * 4))
    rng = np.random.default_rng(5)
    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time", steps)
        f.createDimension("y", NY)
        f.createDimension("x", NX)
        var = f.createVariable("field", "f4", ("time", "y", "x"), zlib=True, shuffle=True, complevel=1,
                               chunksizes=(1, NY, NX))
        base = rng.normal(280, 5, (NY, NX)).astype("f4")
        for step in range(steps):
            var[step] = base + np.float32(step) * 0.01


@dataclass
class Sample:
    wall: float
    daemon_cpu: float | None = None
    tool_cpu: float | None = None


@dataclass
class Row:
    """One way, measured ``len(samples)`` times; the median run by wall time stands for it."""

    section: str
    way: str
    nbytes: int
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples) if self.samples else float("nan")

    @property
    def mib_s(self) -> float:
        return self.nbytes / MiB / self.wall

    def per_gib(self, name: str) -> float | None:
        values = [getattr(s, name) for s in self.samples]
        if not values or any(v is None for v in values):
            return None
        return statistics.median(values) / (self.nbytes / GiB)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


class Bench:
    def __init__(self, work: Path, repeats: int, nbytes: int, mount_options: str) -> None:
        self.work, self.repeats, self.nbytes, self.mount_options = work, repeats, nbytes, mount_options
        self.rows: list[Row] = []

    def way(self, section: str, way: str, mount: Callable[[], Iterator[tuple[Path, int | None]]],
            action: Callable[[Path], None], after: Callable[[], None] = lambda: None) -> None:
        """``repeats`` cold runs of ``action`` on a fresh ``mount`` each; a failure is a result, not a crash."""
        row = Row(section, way, self.nbytes)
        self.rows.append(row)
        try:
            for _ in range(self.repeats):
                with contextmanager(mount)() as (path, pid):
                    drop_page_cache()
                    daemon_before, tool_before = cpu_seconds(pid), children_cpu()
                    started = time.perf_counter()
                    action(path)
                    wall = time.perf_counter() - started
                    daemon_after = cpu_seconds(pid)
                    daemon = daemon_after - daemon_before if daemon_before is not None and daemon_after is not None else None
                    row.samples.append(Sample(wall, daemon, children_cpu() - tool_before))
                after()
        except Exception as exc:  # noqa: BLE001 - a peer failing is recorded with its reason
            row.error = f"{type(exc).__name__}: {exc}"[:300]
        self.log(row)

    def limit(self, section: str, way: str, action: Callable[[], None]) -> None:
        row = Row(section, way, self.nbytes)
        self.rows.append(row)
        for _ in range(self.repeats):
            drop_page_cache()
            started = time.perf_counter()
            action()
            row.samples.append(Sample(time.perf_counter() - started))
        self.log(row)

    def log(self, row: Row) -> None:
        if row.error:
            print(f"  {row.way:<58} FAILED {row.error}", flush=True)
        else:
            runs = " ".join(f"{s.wall:.2f}" for s in row.samples)
            print(f"  {row.way:<58} {row.wall:7.2f} s {row.mib_s:8.1f} MiB/s  (runs {runs})", flush=True)

    def refmount(self, refs: Path, name: str, options: str, env: dict[str, str], probe: str
                 ) -> Callable[[], Iterator[tuple[Path, int | None]]]:
        mnt = self.work / "mnt" / name
        opts = ",".join(filter(None, [options, self.mount_options]))
        command = [sys.executable, "-m", "refmount", "mount", str(refs), str(mnt), "-f", "-o", opts]

        def mount() -> Iterator[tuple[Path, int | None]]:
            with foreground_mount(command, mnt, env=clean_env({**env, "PYTHONPATH": str(REPO)}), probe=probe,
                                  log_name="refmount") as proc:
                yield mnt, proc.pid
        return mount

    def peer(self, name: str, command: list[str], env: dict[str, str] | None, probe: str
             ) -> Callable[[], Iterator[tuple[Path, int | None]]]:
        mnt = self.work / "mnt" / name

        def mount() -> Iterator[tuple[Path, int | None]]:
            with foreground_mount(command, mnt, env=env, probe=probe, log_name=name) as proc:
                yield mnt, proc.pid
        return mount

    @staticmethod
    def local() -> Callable[[], Iterator[tuple[Path, int | None]]]:
        def mount() -> Iterator[tuple[Path, int | None]]:
            yield Path("/"), None
        return mount

    def table(self) -> str:
        base = {row.section: row for row in self.rows if row.way.startswith("refmount decoded view") and not row.error}
        lines = ["| where | read | s | MiB/s | x decoded view | refmount CPU s/GiB | tool CPU s/GiB |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in self.rows:
            if row.error:
                lines.append(f"| {row.section} | {row.way} | failed: {row.error} | | | | |")
                continue
            ref = base.get(row.section)
            ratio = f"{row.mib_s / ref.mib_s:.2f}" if ref else ""
            daemon, tool = row.per_gib("daemon_cpu"), row.per_gib("tool_cpu")
            lines.append(f"| {row.section} | {row.way} | {row.wall:.2f} | {row.mib_s:.0f} | {ratio} | "
                         f"{'' if daemon is None else f'{daemon:.2f}'} | {'' if tool is None else f'{tool:.2f}'} |")
        return "\n".join(lines)


def chunk_keys(refs: dict) -> list[str]:
    """The keys of ``field``'s chunks, in the order of the time steps."""
    keys = [k for k in refs["refs"] if k.startswith("field/") and not k.split("/")[-1].startswith(".")]
    return sorted(keys, key=lambda k: [int(i) for i in k.split("/")[-1].split(".")])


def chunk_paths(refs: dict, root: Path) -> list[Path]:
    return [root / key for key in chunk_keys(refs)]


def cat(paths: list[Path]) -> None:
    run(["cat", *map(str, paths)])


def nccopy(source: Path, out: Path, *flags: str) -> None:
    try:
        run(["nccopy", *flags, str(source), str(out)])
    finally:
        out.unlink(missing_ok=True)


def local_section(bench: Bench, original: Path, refs_path: Path, refs: dict) -> None:
    print("== local disk: the original and its references on local disk", flush=True)
    out = bench.work / "copy.nc"
    nc = bench.refmount(refs_path, "nc", "view=netcdf", {}, "bench.nc")
    bench.way("local", "refmount netCDF view: cat bench.nc", nc, lambda m: cat([m / "bench.nc"]))
    dec = bench.refmount(refs_path, "dec", "view=decoded", {}, "field/.zarray")
    bench.way("local", "refmount decoded view: cat every chunk file", dec, lambda m: cat(chunk_paths(refs, m)))
    bench.way("local", "refmount netCDF view: nccopy bench.nc to local disk", nc,
              lambda m: nccopy(m / "bench.nc", out))
    bench.way("local", "nccopy of the original (libnetcdf + HDF5)", bench.local(),
              lambda _: nccopy(original, out, "-k", "64-bit-offset"))


def s3_section(bench: Bench, original: Path, stored: int) -> None:
    print("== S3: the original on a local SeaweedFS, references pointing at s3://", flush=True)
    store = LocalS3(bench.work / "s3")
    try:
        store.start()
        store.create_bucket(BUCKET)
        url = f"s3://{BUCKET}/{original.name}"
        started = time.perf_counter()
        store.upload(original, url)
        print(f"uploaded {stored / MiB:.0f} MiB in {time.perf_counter() - started:.1f} s", flush=True)
        refs = scan_hdf5(str(original), url=url, inline_threshold=0).refs
        refs_path = bench.work / "s3refs" / "bench.json"
        refs_path.parent.mkdir(exist_ok=True)
        refs_path.write_text(json.dumps(refs))
        env = {k: v for k, v in store.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
        store_options = f"endpoint_url={store.endpoint_url},allow=s3"
        out = bench.work / "copy.nc"

        nc = bench.refmount(refs_path, "nc", f"view=netcdf,{store_options}", env, "bench.nc")
        bench.way("s3", "refmount netCDF view: cat bench.nc", nc, lambda m: cat([m / "bench.nc"]))
        bench.way("s3", "refmount netCDF view: nccopy bench.nc to local disk", nc,
                  lambda m: nccopy(m / "bench.nc", out))
        dec = bench.refmount(refs_path, "dec", f"view=decoded,{store_options}", env, "field/.zarray")
        bench.way("s3", "refmount decoded view: cat every chunk file", dec, lambda m: cat(chunk_paths(refs, m)))

        s3fs_mnt = bench.work / "mnt" / "s3fs-fuse"
        s3fs = s3fs_command(BUCKET, s3fs_mnt, store.endpoint_url, store.access_key, store.secret_key,
                            bench.work / "s3fs.passwd")
        bench.way("s3", "nccopy of the original through s3fs-fuse", bench.peer("s3fs-fuse", s3fs, clean_env({}), original.name),
                  lambda m: nccopy(m / original.name, out, "-k", "64-bit-offset"))
        rclone, rclone_env = rclone_command(BUCKET, bench.work / "mnt" / "rclone", store.endpoint_url,
                                            store.access_key, store.secret_key)
        bench.way("s3", "nccopy of the original through rclone (vfs-cache off)",
                  bench.peer("rclone", rclone, rclone_env, original.name),
                  lambda m: nccopy(m / original.name, out, "-k", "64-bit-offset"))
        limits(bench, original, refs, store)
    finally:
        store.close()


def limits(bench: Bench, original: Path, refs: dict, store: LocalS3) -> None:
    """What bounds the ways: the store's transfer of the stored chunks, and decoding them on one core."""
    import numcodecs
    import s3fs

    chunks = [refs["refs"][key] for key in chunk_keys(refs)]
    url = f"{BUCKET}/{original.name}"

    def fetch() -> None:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **store.storage_options())
        fs.cat_ranges([url] * len(chunks), [c[1] for c in chunks], [c[1] + c[2] for c in chunks], batch_size=64)

    bench.limit("s3", "limit: every stored chunk by concurrent ranged GETs (s3fs)", fetch)
    with open(original, "rb") as handle:
        stored = [(handle.seek(c[1]), handle.read(c[2]))[1] for c in chunks]
    zlib, shuffle = numcodecs.Zlib(), numcodecs.Shuffle(4)
    bench.limit("s3", "limit: decode every chunk in memory, one core (numcodecs)",
                lambda: [shuffle.decode(zlib.decode(data)) for data in stored])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="decoded size of the dataset")
    parser.add_argument("--repeats", type=int, default=3, help="cold runs of each way; the median is reported")
    parser.add_argument("--where", default="local,s3", help="sections to run: local, s3 or both")
    parser.add_argument("--mount-options", default="", help="extra refmount -o options, e.g. readahead=0")
    parser.add_argument("--work", type=Path, help="work here (the dataset is kept for the next run)")
    args = parser.parse_args()
    where = set(args.where.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        original = work / f"bench-{args.mib}.nc"
        if not original.exists():
            started = time.perf_counter()
            write_dataset(original, args.mib)
            print(f"wrote {original} in {time.perf_counter() - started:.1f} s", flush=True)
        with netCDF4.Dataset(original) as f:
            nbytes = int(np.prod(f["field"].shape)) * 4
        stored = original.stat().st_size
        print(f"dataset: {nbytes / MiB:.0f} MiB decoded, {stored / MiB:.0f} MiB stored; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        bench = Bench(work, args.repeats, nbytes, args.mount_options)
        if "local" in where:
            refs = scan_hdf5(str(original), inline_threshold=0).refs
            refs_path = work / "localrefs" / "bench.json"
            refs_path.parent.mkdir(exist_ok=True)
            refs_path.write_text(json.dumps(refs))
            local_section(bench, original, refs_path, refs)
        if "s3" in where:
            s3_section(bench, original, stored)
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(bench.table())


if __name__ == "__main__":
    main()
