"""One reference set reaching several protocols at once, with per-protocol options from -o."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.mounting import mounted

pytestmark = pytest.mark.fuse


def test_s3_http_and_local_objects_in_one_set_with_per_protocol_options(local_s3, s3_bucket, http_server, tmp_path):
    on_s3, on_http, on_disk = os.urandom(300_000), os.urandom(200_000), os.urandom(100_000)
    local_s3.put(f"s3://{s3_bucket}/a.bin", on_s3)
    (http_server.root / "b.bin").write_bytes(on_http)
    (tmp_path / "c.bin").write_bytes(on_disk)
    refs = {
        "version": 1,
        "templates": {"s3": f"s3://{s3_bucket}/a.bin", "web": http_server.url_for("b.bin")},
        "refs": {
            "s3/range": ["{{s3}}", 1000, 50_000],
            "s3/whole": ["{{s3}}"],
            "web/range": ["{web}", 7, 100_000],
            "web/whole": ["{{web}}"],
            "disk/range": [str(tmp_path / "c.bin"), 99, 1],
            "inline": "base64:" + __import__("base64").b64encode(b"\x00\x01binary").decode(),
        },
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    # Credentials only through -o s3.*: nothing in the environment.
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    options = ["-o", f"endpoint_url={local_s3.endpoint_url},s3.key={local_s3.access_key},"
                     f"s3.secret={local_s3.secret_key},s3.default_block_size=1048576"]
    with mounted(tmp_path / "refs.json", tmp_path / "mnt", options, env=env) as mount:
        expected = {
            "s3/range": on_s3[1000:51_000],
            "s3/whole": on_s3,
            "web/range": on_http[7:100_007],
            "web/whole": on_http,
            "disk/range": on_disk[99:100],
            "inline": b"\x00\x01binary",
        }
        for key, data in expected.items():
            assert (mount.path / key).stat().st_size == len(data), key
            assert (mount.path / key).read_bytes() == data, key
        assert local_s3.secret_key not in mount.log()
