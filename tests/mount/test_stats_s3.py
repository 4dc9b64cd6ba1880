"""`refmount stats` against what the store itself saw: GETs and bytes counted at a proxy in front of real S3.

The reference set lives in the bucket too, so the daemon's first GET (at
load, by the reference loader, not the block backend) reaches the proxy
before any figure exists; it is counted separately and left out of the
comparison on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refmount.mount.control import read_stats
from tests.support.datasets import kerchunk_references, write_hdf5
from tests.support.mounting import mounted
from tests.support.opsfixtures import code_env

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

BLOCK = 64 * 1024


def _requests_to(proxy, method: str, path: str) -> int:
    return sum(1 for m, p, _ in list(proxy.requests) if m == method and p.split("?", 1)[0] == path)


def _stats_cli(mountpoint, *extra: str) -> str:
    return subprocess.run([sys.executable, "-m", "refmount", "stats", *extra, str(mountpoint)], capture_output=True,
                          text=True, env=code_env(), check=True, timeout=60).stdout


def test_stats_gets_and_bytes_equal_what_the_store_served(local_s3, s3_bucket, s3_proxy, tmp_path):
    h5 = tmp_path / "data.h5"
    write_hdf5(h5)
    data_url = f"s3://{s3_bucket}/archive/data.h5"
    refs_url = f"s3://{s3_bucket}/refs/data.json"
    local_s3.upload(h5, data_url)
    refs = kerchunk_references(h5, data_url)
    local_s3.put(refs_url, json.dumps(refs).encode())
    ranged = [k for k, v in refs["refs"].items() if isinstance(v, list) and len(v) == 3]
    chunks = sorted(ranged, key=lambda k: refs["refs"][k][1])  # by offset: first and last share no block
    first_three_end = max(refs["refs"][k][1] + refs["refs"][k][2] for k in chunks[:3])
    assert refs["refs"][chunks[-1]][1] // BLOCK > first_three_end // BLOCK
    data_path, refs_path = f"/{s3_bucket}/archive/data.h5", f"/{s3_bucket}/refs/data.json"
    secret = local_s3.storage_options()["secret"]
    env = {k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    options = ["-o", f"endpoint_url={s3_proxy.endpoint_url},block_size={BLOCK // 1024}K,readahead=0"]
    s3_proxy.reset()
    with mounted(refs_url, tmp_path / "mnt", options, env=env) as mount:
        # Loading: the reference file was fetched (and is not a figure of the block backend); no data yet.
        assert _requests_to(s3_proxy, "GET", refs_path) == 1
        assert _requests_to(s3_proxy, "GET", data_path) == 0
        at_load = read_stats(str(mount.path))
        assert at_load["gets"] == 0 and at_load["bytes_fetched"] == 0
        s3_proxy.reset()

        expected = h5.read_bytes()
        for key in chunks[:3]:
            _, offset, length = refs["refs"][key]
            assert (mount.path / key).read_bytes() == expected[offset : offset + length]
        clean = read_stats(str(mount.path))
        served = s3_proxy.counts()
        assert set(served["by_path"]) == {data_path}, "only the data object may have been asked for"
        assert clean["gets"] == _requests_to(s3_proxy, "GET", data_path) == served["by_method"]["GET"] >= 1
        assert clean["bytes_fetched"] == served["bytes_sent"]
        assert clean["heads"] == served["by_method"].get("HEAD", 0) == 1  # the object checked once, at first access
        assert clean["get_retries"] == 0

        # A store that throttles twice: each retry is one more request, seen on both sides.
        s3_proxy.inject("503", count=2, methods="GET")
        key = chunks[-1]
        _, offset, length = refs["refs"][key]
        assert (mount.path / key).read_bytes() == expected[offset : offset + length]
        after = read_stats(str(mount.path))
        assert after["gets"] - clean["gets"] == s3_proxy.gets() - served["by_method"]["GET"] >= 3
        assert after["get_retries"] - clean["get_retries"] == 2 == s3_proxy.counts()["faults"]["503"]

        text, as_json = _stats_cli(mount.path), _stats_cli(mount.path, "--json")
    assert "GET requests" in text and json.loads(as_json)["gets"] == after["gets"]
    for output in (text, as_json):
        assert secret not in output, "refmount stats printed the S3 secret key"
