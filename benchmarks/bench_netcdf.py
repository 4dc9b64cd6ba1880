"""Sequential read of a whole dataset: the netCDF view beside the decoded view and the original file.

Usage: python benchmarks/bench_netcdf.py [--mib N] [--keep DIR]

Writes a compressed NetCDF4 file (float32, zlib+shuffle, chunks of 1 x 256 x 512, about N MiB
decoded), scans it with ``refmount scan``, and times, each from a cold mount:

* ``cat`` of the netCDF view's ``.nc`` file (one sequential stream, chunk readahead);
* ``cat`` of every chunk file of the decoded view (the decoded view's own sequential read);
* ``nccopy`` of the virtual ``.nc`` file to a local netCDF classic file;
* ``nccopy`` of the original NetCDF4 file (the local-disk reference: libnetcdf + HDF5 decoding).

The original and the references are on local disk, so this measures decoding and assembly, not the
object store; ``benchmarks/run.py`` measures the store side (s3fs-fuse, rclone) for the raw view.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refmount.scan import scan_hdf5  # noqa: E402
from tests.support.mounting import mounted  # noqa: E402

NY, NX = 256, 512  # one chunk: 512 KiB decoded


def write_dataset(path: Path, mib: int) -> None:
    steps = max(1, mib * (1 << 20) // (NY * NX * 4))
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


def timed(label: str, nbytes: int, action) -> None:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {elapsed:7.2f} s  {nbytes / elapsed / (1 << 20):8.1f} MiB/s")


def cat(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="decoded size of the dataset")
    parser.add_argument("--keep", type=Path, help="work here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        original = base / "bench.nc"
        if not original.exists():
            write_dataset(original, args.mib)
        refs = base / "bench.json"
        refs.write_text(json.dumps(scan_hdf5(str(original), inline_threshold=0).refs))
        size = int(np.prod(netCDF4.Dataset(original)["field"].shape)) * 4
        print(f"dataset: {size / (1 << 20):.0f} MiB decoded, {original.stat().st_size / (1 << 20):.0f} MiB stored")
        with mounted(refs, base / "nc-mnt", ["-o", "view=netcdf"]) as m:
            timed("netcdf view: cat bench.nc", size, lambda: cat([m.path / "bench.nc"]))
        with mounted(refs, base / "dec-mnt", ["-o", "view=decoded"]) as m:
            chunks = sorted((m.path / "field").glob("[0-9]*"), key=lambda p: int(p.name.split(".")[0]))
            timed("decoded view: cat every chunk file", size, lambda: cat(chunks))
        with mounted(refs, base / "nc-mnt", ["-o", "view=netcdf"]) as m:
            out = base / "copy.nc"
            timed("netcdf view: nccopy bench.nc", size,
                  lambda: subprocess.run(["nccopy", str(m.path / "bench.nc"), str(out)], check=True))
        out.unlink()
        timed("original on local disk: nccopy (HDF5)", size,
              lambda: subprocess.run(["nccopy", "-k", "64-bit-offset", str(original), str(out)], check=True))
        os.unlink(out)


if __name__ == "__main__":
    main()
