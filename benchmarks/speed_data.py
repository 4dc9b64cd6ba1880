"""The four benchmark datasets: generated as HDF5 (or references), stored in the bucket, referenced.

Sizes are the issue's full sizes times ``scale`` (``--quick`` uses 1/16):
D1 ~1 GiB float32 in ~1 MiB chunks, gzip+shuffle; D2 ~512 MiB uncompressed
in ~4 MiB chunks; D3 ~100k chunks of 64 KiB; D4 1M keys whose bytes do not
matter (metadata only). D1-D3 are scanned with refmount's own scanner and
merged into one reference set under ``D1/``, ``D2/``, ``D3/`` so one daemon
serves them; D4 is its own set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refmount.scan import scan_hdf5

BUCKET = "bench"


@dataclass
class Chunk:
    """One chunk file: its path in the tree and the bytes it references."""

    key: str
    url: str
    offset: int
    length: int


@dataclass
class Datasets:
    """What the ways read: local originals, object URLs, reference files and chunk lists."""

    root: Path
    local: dict[str, Path] = field(default_factory=dict)  # name -> local HDF5 original
    urls: dict[str, str] = field(default_factory=dict)  # name -> s3 URL of the original
    chunks: dict[str, list[Chunk]] = field(default_factory=dict)  # name -> range chunks
    refs_main: Path | None = None  # merged D1-D3 reference set
    refs_each: dict[str, Path] = field(default_factory=dict)  # D1..D3 unprefixed sets
    refs_d4: Path | None = None
    d4_keys: int = 0
    d4_tree: Path | None = None  # local directory with the same tree as D4

    def all_chunks(self) -> list[Chunk]:
        return [c for name in ("D1", "D2", "D3") for c in self.chunks.get(name, [])]

    def expected(self, chunk: Chunk) -> bytes:
        name = chunk.key.split("/", 1)[0]
        with open(self.local[name], "rb") as f:
            f.seek(chunk.offset)
            return f.read(chunk.length)


def _write_h5(path: Path, name: str, scale: float, rng: np.random.Generator) -> None:
    """Write dataset ``name`` at ``scale`` of its full size."""
    with h5py.File(path, "w") as f:
        if name == "D1":  # float32, 1 MiB chunks, gzip + shuffle, compressible-ish data
            n = max(4, round(1024 * scale))
            dset = f.create_dataset("temp", shape=(n, 512, 512), dtype="<f4", chunks=(1, 512, 512),
                                    compression="gzip", compression_opts=4, shuffle=True)
            base = np.add.outer(np.sin(np.linspace(0, 6, 512)), np.cos(np.linspace(0, 9, 512))).astype("<f4")
            for i in range(n):
                dset[i] = np.round(base * 10 + rng.normal(0, 0.5, (512, 512)), 2).astype("<f4")
        elif name == "D2":  # float64, 4 MiB chunks, no filters
            n = max(2, round(128 * scale))
            dset = f.create_dataset("wind", shape=(n, 1024, 512), dtype="<f8", chunks=(1, 1024, 512))
            for i in range(n):
                dset[i] = rng.random((1024, 512))
        elif name == "D3":  # many 64 KiB chunks, no filters
            n = max(64, round(100_000 * scale))
            dset = f.create_dataset("obs", shape=(n, 16384), dtype="<f4", chunks=(1, 16384))
            step = 1024
            for i in range(0, n, step):
                m = min(step, n - i)
                dset[i : i + m] = rng.random((m, 16384), dtype=np.float32)


def _resolve(refs: dict[str, Any]) -> dict[str, Any]:
    """Kerchunk v1 with templates -> plain key -> reference dict."""
    templates = refs.get("templates", {})
    out: dict[str, Any] = {}
    for key, value in refs["refs"].items():
        if isinstance(value, list) and value and isinstance(value[0], str):
            url = value[0]
            for name, target in templates.items():
                url = url.replace("{{" + name + "}}", target)
            value = [url, *value[1:]]
        out[key] = value
    return out


def build(root: Path, scale: float, store: Any, log: Any = print, d3_scale: float | None = None,
          chunked: tuple[str, ...] = ("D1", "D2", "D3")) -> Datasets:
    """Generate (or reuse, when the same scale was built before) and upload everything.

    ``d3_scale`` shrinks D3 separately: its 100k GETs of 64 KiB dominate a run on a small machine.
    ``chunked`` names the HDF5 datasets to build (none for a run of the listing alone, which reads D4 only).
    """
    root.mkdir(parents=True, exist_ok=True)
    data = Datasets(root)
    rng = np.random.default_rng(42)
    store.create_bucket(BUCKET)
    merged: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2})}
    for name in chunked:
        path = root / f"{name}.h5"
        url = f"s3://{BUCKET}/{name}.h5"
        stamp = root / f"{name}.scale"
        this_scale = d3_scale if name == "D3" and d3_scale is not None else scale
        if not (path.exists() and stamp.exists() and stamp.read_text() == str(this_scale)):
            log(f"generating {name} (scale {this_scale})")
            _write_h5(path, name, this_scale, rng)
            stamp.write_text(str(this_scale))
        log(f"uploading {name}: {path.stat().st_size / 2**20:.0f} MiB")
        store.upload(path, url)
        refs = _resolve(scan_hdf5(str(path), url=url, inline_threshold=0).refs)
        each = root / f"{name}.refs.json"
        each.write_text(json.dumps({"version": 1, "refs": refs}))
        data.refs_each[name] = each
        data.local[name] = path
        data.urls[name] = url
        chunks = []
        for key, value in refs.items():
            merged[f"{name}/{key}"] = value
            if isinstance(value, list) and len(value) == 3:
                chunks.append(Chunk(f"{name}/{key}", value[0], int(value[1]), int(value[2])))
        data.chunks[name] = sorted(chunks, key=lambda c: c.offset)
    data.refs_main = root / "main.refs.json"
    data.refs_main.write_text(json.dumps({"version": 1, "refs": merged}))
    _build_d4(data, scale, store)
    return data


def _build_d4(data: Datasets, scale: float, store: Any) -> None:
    """1M keys in 16 arrays, each a 64-byte range of one object; plus a local tree of the same shape."""
    total = max(1600, round(1_000_000 * scale))
    arrays, per = 16, total // 16
    url = f"s3://{BUCKET}/D4.bin"
    store.put(url, bytes(64 * per))
    refs: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2})}
    tree = data.root / f"D4-tree-{total}"
    fresh = not tree.exists()
    for a in range(arrays):
        name = f"v{a:02d}"
        zarray = {"zarr_format": 2, "shape": [per * 16], "chunks": [16], "dtype": "<f4", "compressor": None,
                  "fill_value": None, "filters": None, "order": "C"}
        refs[f"{name}/.zarray"] = json.dumps(zarray)
        if fresh:
            (tree / name).mkdir(parents=True, exist_ok=True)
            (tree / name / ".zarray").write_text(json.dumps(zarray))
        for i in range(per):
            refs[f"{name}/{i}"] = [url, 64 * i, 64]
            if fresh:
                fd = os.open(tree / name / str(i), os.O_CREAT | os.O_WRONLY, 0o644)
                os.ftruncate(fd, 64)
                os.close(fd)
    if fresh:
        (tree / ".zgroup").write_text(refs[".zgroup"])
    data.refs_d4 = data.root / "D4.refs.json"
    data.refs_d4.write_text(json.dumps({"version": 1, "refs": refs}))
    data.d4_keys = len(refs)
    data.d4_tree = tree.resolve()  # the directory itself, should the work directory link to it
