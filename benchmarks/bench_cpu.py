"""The daemon's CPU per GiB on steady cold sequential reads: the figure a loaded machine disturbs least.

    python benchmarks/bench_cpu.py --seconds 20                      # D1+D2, default options
    python benchmarks/bench_cpu.py -o block_size=1M                   # try a lever
    python benchmarks/bench_cpu.py --py-spy /tmp/prof.txt             # also a py-spy profile (GIL holders)

One refmount daemon with a 64 MiB block cache, smaller than D1+D2 at the quick sizes (70 MiB), so
every pass (page cache dropped first) reads cold from the store; passes repeat for ``--seconds``.
The readahead window is capped at an eighth of the cache (8 MiB here); ``--scale 0.25 --cache-size
268435456`` reads 280 MiB per pass through a 256 MiB cache and the default 32 MiB window.
A run of ``benchmarks/run.py --quick`` lasts well under a second per way and its CPU per GiB carries
the daemon's fixed costs (first lookups, client warm-up); this loop measures the per-byte cost.
Prints MiB/s, the daemon's user and system CPU seconds per GiB delivered, and GETs per GiB.
Run as root (page cache drop). ``--py-spy`` writes py-spy's raw (collapsed) format, sampling only
the thread holding the GIL, i.e. where the Python CPU goes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402
from speed_data import build  # noqa: E402
from speed_infra import ProxyProcess, drop_page_cache  # noqa: E402
from speed_ways import Bench, read_file  # noqa: E402

from refmount.devtools.localstore import LocalS3  # noqa: E402

GiB = 1 << 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sets", default="D1,D2", help="datasets read each pass")
    parser.add_argument("--cache-size", type=int, default=64 << 20)
    parser.add_argument("--scale", type=float, default=1 / 16,
                        help="dataset size (1/16: D1+D2 70 MiB; 1/4 with --cache-size 256M gives the default 32 MiB window)")
    parser.add_argument("-o", "--mount-options", default="", help="extra refmount -o options")
    parser.add_argument("--py-spy", type=Path, default=None, help="also record a py-spy profile (raw format) here")
    parser.add_argument("--work", type=Path, default=Path("/tmp/refmount-bench-cpu"))
    args = parser.parse_args(argv)

    store = LocalS3()
    store.start()
    proxy = ProxyProcess(store.endpoint_url)
    try:
        data = build(args.work / "data", args.scale, store, d3_scale=1 / 64)
        bench = Bench(store, proxy, data, args.work, 1, args.cache_size, mount_options=args.mount_options)
        chunks = [c for name in args.sets.split(",") for c in data.chunks[name]]
        with bench.refmount(data.refs_main, "cpu") as (mnt, pid):
            daemon = psutil.Process(pid)
            spy = None
            if args.py_spy is not None:
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "-o", str(args.py_spy),
                                        "--duration", str(int(args.seconds)), "--rate", "200", "--threads", "--gil"],
                                       stdout=subprocess.DEVNULL)
            proxy.reset()
            before = daemon.cpu_times()
            delivered, started = 0, time.monotonic()
            while time.monotonic() - started < args.seconds:
                drop_page_cache()
                delivered += sum(read_file(mnt / c.key) for c in chunks)
            wall = time.monotonic() - started
            after = daemon.cpu_times()
            if spy is not None:
                spy.wait()
        gib = delivered / GiB
        print(f"{delivered / (1 << 20):.0f} MiB in {wall:.1f} s ({delivered / (1 << 20) / wall:.0f} MiB/s); "
              f"daemon CPU user {(after.user - before.user) / gib:.2f} + system {(after.system - before.system) / gib:.2f} "
              f"s/GiB; {proxy.counts()['gets'] / gib:.0f} GETs/GiB")
    finally:
        proxy.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
