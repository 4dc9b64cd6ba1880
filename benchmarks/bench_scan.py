"""Scan time per file and per 10k chunks.

Usage: python benchmarks/bench_scan.py [FILE ...]
Without files, generates datasets of 10k, 100k and 300k chunks in a temp directory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refmount.scan import scan_hdf5  # noqa: E402


def generate(directory: Path, n_chunks: int) -> Path:
    """One dataset of ``n_chunks`` chunks of 16 float64."""
    path = directory / f"chunks_{n_chunks}.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("big", data=np.arange(n_chunks * 16, dtype="<f8"), chunks=(16,))
    return path


def bench(path: str) -> None:
    """Scan once and print time per file and per 10k chunks."""
    start = time.perf_counter()
    result = scan_hdf5(path, inline_threshold=0)
    elapsed = time.perf_counter() - start
    chunks = result.report.chunks + result.report.inlined_chunks
    per10k = elapsed / chunks * 10_000 if chunks else float("nan")
    print(f"{path}: {elapsed:.3f}s, {chunks} chunks, {per10k:.3f}s per 10k chunks")


def main() -> None:
    if len(sys.argv) > 1:
        for path in sys.argv[1:]:
            bench(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10_000, 100_000, 300_000):
            bench(str(generate(Path(tmp), n)))


if __name__ == "__main__":
    main()
