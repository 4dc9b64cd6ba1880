"""The block cache seen from the object store: GETs counted at a proxy in front of the real S3 server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from refmount.byterange import ByteRange
from refmount.read.ranges import blocks_covering, plan_fetches
from tests.support.datasets import kerchunk_references, write_hdf5
from tests.support.mounting import mounted

pytestmark = pytest.mark.fuse

BLOCK = 64 * 1024


def drop_page_cache() -> None:
    """Make the next read of a mounted file reach the daemon (the kernel keeps pages otherwise)."""
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


@pytest.fixture
def proxied_mount(local_s3, s3_bucket, s3_proxy, tmp_path):
    h5 = tmp_path / "data.h5"
    write_hdf5(h5)
    url = f"s3://{s3_bucket}/data.h5"
    local_s3.upload(h5, url)
    refs = kerchunk_references(h5, url)
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps(refs))
    options = ["-o", f"endpoint_url={s3_proxy.endpoint_url},block_size=64K,readahead=0,allow=s3"]
    env = {k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    with mounted(refs_path, tmp_path / "mnt", options, env=env) as mount:
        s3_proxy.reset()
        yield mount, refs["refs"], s3_proxy


def expected_gets(ref: list, extent: int) -> int:
    """GETs a cold read of one reference needs: its blocks, adjacent ones merged."""
    _, offset, length = ref
    blocks = blocks_covering(ByteRange(offset, offset + length), BLOCK)
    return len(plan_fetches(blocks, BLOCK, extent, max_request=16 << 20))


def test_a_second_read_of_the_same_range_costs_no_get(proxied_mount):
    mount, refs, proxy = proxied_mount
    key = "temp/0.0.0"
    extent = max(v[1] + v[2] for v in refs.values() if isinstance(v, list))
    first = (mount.path / key).read_bytes()
    assert proxy.gets() == expected_gets(refs[key], extent) >= 1
    drop_page_cache()
    assert (mount.path / key).read_bytes() == first
    assert proxy.gets() == expected_gets(refs[key], extent)


def test_concurrent_readers_of_one_block_cause_one_get(proxied_mount):
    mount, refs, proxy = proxied_mount
    # Several chunk keys whose bytes all lie in the first cache block of the object.
    keys = [k for k, v in refs.items() if isinstance(v, list) and v[1] + v[2] <= BLOCK]
    assert len(keys) >= 2, "dataset should have several chunks in the first block"
    barrier = threading.Barrier(16)
    results: list[bytes] = []

    def reader(key: str) -> None:
        barrier.wait()
        results.append((mount.path / key).read_bytes())

    threads = [threading.Thread(target=reader, args=(keys[i % len(keys)],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 16
    assert proxy.gets() == 1
