"""Faults of the real S3 server (SeaweedFS), injected by the proxy in front of it, seen through a real mount.

The shared :class:`~tests.fault_contract.FaultContract` runs against S3
here: the daemon reaches the store only through the fault-injecting proxy
(``-o endpoint_url=<proxy>``, credentials from the environment). The tests
below it cover what only S3 has: a share of requests throttled, conditional
GETs answered by the store itself, and reference sets written by
``refmount scan`` from an object that is overwritten afterwards.
"""

from __future__ import annotations

import json

import boto3
import botocore.exceptions
import pytest

from refmount.byterange import ByteRange
from refmount.devtools.localstore import LocalS3
from refmount.errors import StaleObject
from refmount.scan import scan_hdf5
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import BackendOptions
from refmount.store.staleness import SourceFacts
from tests.contracts.fault_contract import BOUND, FaultContract
from tests.support.datasets import write_hdf5
from tests.support.faultstores import S3FaultStore
from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


class TestS3Faults(FaultContract):
    @pytest.fixture(scope="class")
    def store(self, local_s3):
        store = S3FaultStore(local_s3)
        yield store
        store.close()

    def test_a_share_of_requests_throttled_or_failing_still_reads_every_byte(self, store, dataset, mount):
        """Like a busy store: 30 % of GETs answer 503 SlowDown or 500; every read still returns the right bytes."""
        store.proxy.reseed(7)
        store.proxy.inject("503", share=0.2, methods="GET")
        store.proxy.inject("500", share=0.1, methods="GET")
        keys = [self.fresh_key(dataset) for _ in range(8)]
        for key, expected in keys:
            result = read_file(mount.path / key, timeout=BOUND)
            assert result.ok, f"{key}: {result.error}\n{mount.log()[-3000:]}"
            assert result.data == expected
        applied = store.proxy.counts()["faults"]
        assert applied.get("503", 0) + applied.get("500", 0) > 0, "no fault was injected; the test proves nothing"
        assert "retrying GET" in mount.log()


def test_the_store_answers_if_match_on_get_as_the_backend_assumes(local_s3, s3_bucket):
    """The ESTALE check of a changed S3 object rests on the store refusing a GET whose If-Match fails.

    Checked for an object stored in one piece and for a multipart one (whose
    ETag is not an MD5), with the ETag as listed (quoted) and as refmount
    records it.
    """
    client = boto3.client("s3", **_client_args(local_s3))
    one_piece = f"{s3_bucket}/one.bin"
    local_s3.put(f"s3://{one_piece}", b"a" * 1000)
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="multi.bin")
    parts = []
    for number in (1, 2):
        etag = client.upload_part(Bucket=s3_bucket, Key="multi.bin", UploadId=upload["UploadId"],
                                  PartNumber=number, Body=bytes([number]) * (5 << 20))["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(Bucket=s3_bucket, Key="multi.bin", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    for key in ("one.bin", "multi.bin"):
        etag = client.head_object(Bucket=s3_bucket, Key=key)["ETag"]
        assert SourceFacts.from_mapping(local_s3.filesystem().info(f"{s3_bucket}/{key}")).strong_etag == etag
        got = client.get_object(Bucket=s3_bucket, Key=key, Range="bytes=0-9", IfMatch=etag)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and len(got["Body"].read()) == 10
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            client.get_object(Bucket=s3_bucket, Key=key, Range="bytes=0-9", IfMatch='"0123456789abcdef0123456789abcdef"')
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # And through the backend: a rewrite after first access is StaleObject, not the new bytes.
    credentials = {k: local_s3.storage_options()[k] for k in ("key", "secret")}
    backend = FsspecBackend(BackendOptions(endpoint_url=local_s3.endpoint_url, region="us-east-1", timeout=10,
                                           storage_options={"s3": credentials}))
    url = f"s3://{one_piece}"
    try:
        assert backend.read_ranges(url, [ByteRange(0, 10)]) == [b"a" * 10]
        local_s3.put(url, b"b" * 1000)
        with pytest.raises(StaleObject, match="changed since the references were made"):
            backend.read_ranges(url, [ByteRange(10, 20)])
    finally:
        backend.close()


def test_object_overwritten_after_refmount_scan_reads_estale(local_s3, s3_bucket, tmp_path):
    """`refmount scan` records each source's size and ETag; an object rewritten afterwards is refused."""
    h5 = tmp_path / "data.h5"
    write_hdf5(h5)
    url = f"s3://{s3_bucket}/data.h5"
    local_s3.upload(h5, url)
    refs = scan_hdf5(url, storage_options=local_s3.storage_options()).refs
    assert refs["refmount"]["sources"][url]["etag"].startswith('"')
    source = tmp_path / "refs.json"
    source.write_text(json.dumps(refs))
    chunk = next(k for k, v in refs["refs"].items() if isinstance(v, list) and k.startswith("temp/"))
    local_s3.put(url, h5.read_bytes() + b"\0" * 4096)  # the object is rewritten, longer
    env = {k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    with mounted(source, tmp_path / "mnt", ["-o", f"endpoint_url={local_s3.endpoint_url}"], env=env) as mount:
        result = read_file(mount.path / chunk, timeout=BOUND)
        assert result.error == "ESTALE", result
        log = mount.log()
        assert mount.process.poll() is None
    assert "stale object: " in log and f"{url} changed since the references were made" in log
    assert f"size {h5.stat().st_size} -> {h5.stat().st_size + 4096}" in log


def _client_args(store: LocalS3) -> dict:
    options = store.storage_options()
    return {"endpoint_url": store.endpoint_url, "aws_access_key_id": options["key"],
            "aws_secret_access_key": options["secret"], "region_name": "us-east-1"}
