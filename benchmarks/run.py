"""The speed benchmark: every way of reading the same bytes, side by side, on this machine.

    python benchmarks/run.py            # full sizes (D1 ~1 GiB, D3 100k chunks, D4 1M keys)
    python benchmarks/run.py --quick    # 1/16 of the sizes, a few minutes

Starts a SeaweedFS S3 server on loopback (refmount.localstore.LocalS3) with
the counting proxy in front, generates and uploads the datasets, runs every
way cold (fresh daemon, page cache dropped) and warm, prints the table with
the target verdicts and writes benchmarks/results/{results.json,table.md,
speed.png}. Run as root so the page cache can be dropped. Setup: scripts/setup-bench.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from speed_data import build  # noqa: E402
from speed_infra import ProxyProcess, force_unmount  # noqa: E402
from speed_report import plot, table, targets, write_json  # noqa: E402
from speed_ways import Bench  # noqa: E402

from refmount.config.options import parse_size  # noqa: E402
from refmount.devtools.localstore import LocalS3  # noqa: E402

SECTIONS = ("limit", "refmount", "zarr", "concurrent", "random", "listing", "fsspec", "rclone", "s3fs-fuse", "s3fs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes / 16 (same as --scale 0.0625)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full dataset sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--peer-repeats", type=int, default=None,
                        help="runs of the peers (fsspec.fuse, rclone, s3fs); default --repeats, 1 with --quick")
    parser.add_argument("--d3-scale", type=float, default=None,
                        help="separate scale of D3 (default --scale; 1/64 with --quick: 1.5k chunks)")
    parser.add_argument("--cache-size", default=None, help="refmount block cache budget (default 1G, 256M with --quick)")
    parser.add_argument("--mount-options", default="", help="extra refmount -o options, e.g. readahead=32M")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/refmount-bench"), help="datasets and mountpoints")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    scale = 1 / 16 if args.quick else args.scale
    cache_size = parse_size(args.cache_size or ("256M" if args.quick else "1G"))
    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    store = LocalS3()
    proxy = None
    bench = None
    try:
        store.start()
        proxy = ProxyProcess(store.endpoint_url)
        d3_scale = args.d3_scale if args.d3_scale is not None else (1 / 64 if args.quick else None)
        chunked = ("D1", "D2", "D3") if only - {"listing"} else ()  # the listing reads D4 alone
        data = build(args.work / "data", scale, store, d3_scale=d3_scale, chunked=chunked)
        peer_repeats = args.peer_repeats or (1 if args.quick else args.repeats)
        bench = Bench(store, proxy, data, args.work, args.repeats, cache_size, peer_repeats=peer_repeats,
                      mount_options=args.mount_options)
        for name in chunked:
            print(f"== {name}")
            if "limit" in only:
                bench.guarded("limit: raw ranged GETs", name, "cold", lambda name=name: bench.raw_limit(name))
                bench.guarded("limit: local disk copy", name, "warm", lambda name=name: bench.local_disk(name))
            if "refmount" in only:
                bench.guarded("refmount: cat chunk files", name, "cold", lambda name=name: bench.refmount_cat(name))
            if "zarr" in only:
                bench.guarded("refmount: zarr on mountpoint", name, "cold", lambda name=name: bench.refmount_zarr(name))
                bench.guarded("in-process: zarr over ReferenceFS", name, "cold", lambda name=name: bench.zarr_reference_fs(name))
            if "fsspec" in only:
                bench.fsspec_fuse(name)
            if "rclone" in only:
                bench.rclone(name)
            if "s3fs-fuse" in only:
                bench.s3fs_fuse(name)
            if "s3fs" in only:
                bench.s3fs_files(name)
        if chunked:
            print("== all of D1-D3")
        if "concurrent" in only:
            bench.guarded("limit: raw ranged GETs", "all", "cold", lambda: bench.raw_limit("all"))
            bench.guarded("refmount: 16 readers, verified", "all", "cold", bench.concurrent)
        if "random" in only:
            bench.guarded("refmount: 500 random chunk files", "all", "cold", bench.random_chunks)
        if "listing" in only:
            print("== D4")
            bench.guarded("refmount: ls -lR", "D4", "cold", bench.listing)
    finally:
        if proxy is not None:
            proxy.close()
        store.close()
        mnt = args.work / "mnt"
        if mnt.exists():
            for path in mnt.iterdir():
                if path.is_dir():
                    force_unmount(path)
    rows = bench.rows if bench else []
    verdicts = targets(rows, cache_size)
    meta = {"scale": scale, "d3_scale": args.d3_scale or (1 / 64 if args.quick else scale),
            "peer_repeats": args.peer_repeats or (1 if args.quick else args.repeats), "repeats": args.repeats,
            "cache_size": cache_size, "seconds": round(time.time() - started),
            "machine": f"{platform.node()} {platform.machine()} {shutil.os.cpu_count()} cpus",
            "load_average_end": [round(x, 2) for x in shutil.os.getloadavg()],
            "date": time.strftime("%Y-%m-%d")}
    text = table(rows, verdicts)
    print(text)
    (args.out / "table.md").write_text(text)
    write_json(rows, verdicts, meta, args.out / "results.json")
    plot(rows, args.out / "speed.png", f"refmount speed benchmark, scale {scale:g}, median of {args.repeats}")
    print(f"wrote {args.out}/table.md, results.json, speed.png in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
