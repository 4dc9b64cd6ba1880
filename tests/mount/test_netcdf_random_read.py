"""A slice of a long time series read through ``-o view=netcdf`` fetches only the chunks of that slice.

The original NetCDF4 file (200 time steps, one zlib+shuffle chunk per step)
lives on the S3 server behind the counting proxy; its references are a local
file. ``ncks -d time,100,101`` (real NCO) reads two steps of the virtual
``.nc`` file. The chunks that must be fetched are those two of ``field`` and
the coordinate variables ``ncks`` copies with it. Beside them the store may
only have served, in blocks (the block cache's unit of fetching), the chunks
under the bytes the reader and the kernel ask for without needing them:
netCDF-C reads whole pages (at most ``st_blksize``), so the step before the
slice; the kernel reads ahead up to the mount's readahead (1 MiB) past the
first page at open and past the slice. A chunk anywhere else, which any
readahead of refmount's own would fetch, fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from refmount.fs.fuse_adapter import MAX_READ
from refmount.scan import scan_hdf5
from tests.support.mounting import mounted
from tests.support.s3proxy import S3Proxy

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

STEPS, NY, NX = 200, 128, 256  # a chunk: 128 KiB decoded, about 75 KB stored
FIRST, LAST = 100, 101
BLOCK = 16 << 10  # several blocks per stored chunk, so a neighbour's chunk cannot hide in a shared block


def write_series(path: Path) -> None:
    rng = np.random.default_rng(3)
    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time", STEPS)
        f.createDimension("y", NY)
        f.createDimension("x", NX)
        f.createVariable("time", "f8", ("time",))[:] = np.arange(STEPS) * 3600.0
        f["time"].units = "seconds since 2000-01-01"
        f.createVariable("y", "f4", ("y",))[:] = np.linspace(-60, 60, NY)
        f.createVariable("x", "f4", ("x",))[:] = np.linspace(0, 359, NX)
        field = f.createVariable("field", "f4", ("time", "y", "x"), zlib=True, shuffle=True, complevel=1,
                                 chunksizes=(1, NY, NX))
        base = 280 + 10 * np.sin(np.linspace(0, 6, NY))[:, None] * np.cos(np.linspace(0, 9, NX))[None, :]
        for step in range(STEPS):
            field[step] = (base + rng.normal(0, 1, (NY, NX))).astype("f4")


def blocks_of(start: int, stop: int) -> set[int]:
    """Cache blocks holding bytes ``[start, stop)`` of the object."""
    return set(range(start // BLOCK, (stop - 1) // BLOCK + 1))


def fetched_blocks(requests: list[tuple[str, str, str | None]], path: str) -> set[int]:
    """Blocks of the object at ``path`` that GETs asked for (each GET a ``bytes=a-b`` range)."""
    blocks: set[int] = set()
    for method, request_path, byte_range in requests:
        if method != "GET" or request_path.split("?", 1)[0] != path:
            continue
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", byte_range or "")
        assert match, f"a GET of the whole object, or an unexpected range: {byte_range!r}"
        blocks |= blocks_of(int(match.group(1)), int(match.group(2)) + 1)
    return blocks


def settled(proxy: S3Proxy, quiet: float = 1.0, limit: float = 15.0) -> list[tuple[str, str, str | None]]:
    """The proxy's requests once none has arrived for ``quiet`` seconds: readahead runs after the reader returns."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline:
        requests = list(proxy.requests)
        if len(requests) == seen:
            return requests
        seen = len(requests)
        time.sleep(quiet)
    raise AssertionError(f"the store was still being asked after {limit} s: {len(proxy.requests)} requests")


def test_ncks_slice_fetches_only_the_chunks_of_its_steps(local_s3, s3_bucket, s3_proxy, tmp_path):
    original = tmp_path / "series.nc"
    write_series(original)
    url = f"s3://{s3_bucket}/archive/series.nc"
    local_s3.upload(original, url)
    refs = scan_hdf5(str(original), url=url, inline_threshold=0).refs
    refs_path = tmp_path / "series.json"
    refs_path.write_text(json.dumps(refs))

    chunk_keys = [k for k, v in refs["refs"].items() if isinstance(v, list) and len(v) == 3]
    assert sum(1 for k in chunk_keys if k.startswith("field/")) == STEPS
    needed = [f"field/{step}.0.0" for step in range(FIRST, LAST + 1)] + ["time/0", "y/0", "x/0"]
    expected: set[int] = set()
    for key in needed:
        _, offset, length = refs["refs"][key]
        expected |= blocks_of(offset, offset + length)
    for key in (f"field/{FIRST - 1}.0.0", f"field/{LAST + 1}.0.0"):  # the test can tell a neighbour was fetched
        _, offset, length = refs["refs"][key]
        assert blocks_of(offset, offset + length) - expected, key

    env = {k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    options = ["-o", f"view=netcdf,endpoint_url={s3_proxy.endpoint_url},allow=s3,block_size={BLOCK // 1024}K"]
    out = tmp_path / "slice.nc"
    s3_proxy.reset()
    with mounted(refs_path, tmp_path / "mnt", options, env=env) as mount:
        virtual = mount.path / "series.nc"
        result = subprocess.run(["ncks", "-O", "-d", f"time,{FIRST},{LAST}", "-v", "field", str(virtual), str(out)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        requests = settled(s3_proxy)
        facts = virtual.stat()

    # Where each step lies in the virtual file: field is its last variable (coordinates come first).
    step = NY * NX * 4
    begin = facts.st_size - STEPS * step
    unasked = [(0, MAX_READ), (begin + FIRST * step - facts.st_blksize, begin + (LAST + 1) * step + MAX_READ)]
    tolerated = {f"field/{s}.0.0" for s in range(STEPS)
                 if any(lo < begin + (s + 1) * step and begin + s * step < hi for lo, hi in unasked)}
    allowed = set(expected)
    for key in tolerated:
        _, offset, length = refs["refs"][key]
        allowed |= blocks_of(offset, offset + length)

    got = fetched_blocks(requests, f"/{s3_bucket}/archive/series.nc")
    stray = sorted(k for k in chunk_keys if blocks_of(refs["refs"][k][1], sum(refs["refs"][k][1:])) & (got - allowed))
    assert got <= allowed, f"blocks of chunks the slice does not need were fetched: {stray}"
    assert expected <= got, "a needed chunk was not fetched from the store"
    assert len(got) * BLOCK < original.stat().st_size / 8

    with netCDF4.Dataset(original) as want, netCDF4.Dataset(out) as sliced:
        assert sliced["field"].shape == (LAST - FIRST + 1, NY, NX)
        np.testing.assert_array_equal(sliced["field"][:], want["field"][FIRST : LAST + 1])
        np.testing.assert_array_equal(sliced["time"][:], want["time"][FIRST : LAST + 1])
        np.testing.assert_array_equal(sliced["y"][:], want["y"][:])
