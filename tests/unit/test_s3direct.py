"""S3 GETs through presigned URLs (store/s3direct): against the real local S3 server.

The RangeReader and fault contracts already run every S3 read through this
path; here is what only this path has: the watchdog that bounds a request,
a signature that stopped working, a bucket that needs botocore, and which
filesystems may use it at all.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest
import s3fs

from refmount.byterange import ByteRange
from refmount.errors import BackendError, StaleObject, errno_for
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import BackendOptions
from refmount.store.s3direct import ObjectName, Watchdog, eligible


def test_the_watchdog_fires_after_the_deadline_and_not_once_disarmed():
    watchdog = Watchdog()
    fired: list[str] = []
    done = threading.Event()
    watchdog.arm(time.monotonic() + 0.3, lambda: fired.append("late"))
    kept = watchdog.arm(time.monotonic() + 0.05, lambda: (fired.append("first"), done.set()))
    cancelled = watchdog.arm(time.monotonic() + 0.1, lambda: fired.append("disarmed"))
    watchdog.disarm(cancelled)
    assert done.wait(2)
    time.sleep(0.5)
    assert fired == ["first", "late"]
    watchdog.disarm(kept)  # already fired: nothing happens


@pytest.fixture
def backend(local_s3) -> Iterator[FsspecBackend]:
    credentials = {k: local_s3.storage_options()[k] for k in ("key", "secret")}
    backend = FsspecBackend(BackendOptions(endpoint_url=local_s3.endpoint_url, region="us-east-1", timeout=5,
                                           storage_options={"s3": credentials}))
    yield backend
    backend.close()


@pytest.fixture
def stored(local_s3, s3_bucket):
    data = os.urandom(3 << 20)
    url = f"s3://{s3_bucket}/object.bin"
    local_s3.put(url, data)
    return url, data


def test_reads_go_through_presigned_urls_and_a_signature_that_stopped_working_is_made_again(backend, stored):
    url, data = stored
    assert backend.read_ranges(url, [ByteRange(0, 100)]) == [data[:100]]
    direct = backend._direct["s3"]
    name = ObjectName(url.split("/")[2], "object.bin")
    signed, at = direct.urls._urls[name]
    assert "X-Amz-Signature=" in signed  # SigV4, not botocore's SigV2 default for presigned URLs
    spoiled = signed.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    direct.urls._urls[name] = (spoiled, at)  # as if its credentials had been replaced since
    assert backend.read_pieces(url, [ByteRange(1 << 20, 3 << 20)], 1 << 20) == [
        [data[1 << 20 : 2 << 20], data[2 << 20 :]]
    ]
    assert direct.urls._urls[name][0] != spoiled  # signed again (the same URL within the same second)
    assert direct.serves(name.bucket)


def test_a_refusal_that_a_new_signature_does_not_cure_leaves_the_bucket_to_botocore(backend, stored):
    url, data = stored
    backend.size(url)  # first contact with good credentials
    fs = backend._filesystems["s3"]
    fs.s3._request_signer._credentials.secret_key = "not-the-secret"  # both paths now sign wrongly
    with pytest.raises(BackendError) as failure:
        backend.read_ranges(url, [ByteRange(0, 10)])
    assert errno_for(failure.value) == errno.EIO
    assert str(failure.value).endswith("object.bin [0, 10): access denied")  # botocore's answer, classified
    assert not backend._direct["s3"].serves(url.split("/")[2])


def test_an_object_rewritten_after_the_first_contact_is_stale_not_other_bytes(local_s3, backend, stored):
    url, data = stored
    assert backend.read_ranges(url, [ByteRange(0, 10)]) == [data[:10]]
    local_s3.put(url, os.urandom(len(data)))
    with pytest.raises(StaleObject):
        backend.read_ranges(url, [ByteRange(10, 20)])


def test_requests_a_presigned_url_cannot_carry_keep_the_botocore_path(local_s3, monkeypatch):
    options = local_s3.storage_options()
    assert eligible(s3fs.S3FileSystem(**options, skip_instance_cache=True))
    assert not eligible(s3fs.S3FileSystem(**options, requester_pays=True, skip_instance_cache=True))
    assert not eligible(s3fs.S3FileSystem(**options, config_kwargs={"proxies": {"http": "http://proxy:3128"}},
                                          skip_instance_cache=True))
    assert not eligible(object())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert not eligible(s3fs.S3FileSystem(**options, skip_instance_cache=True))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # the endpoint is reached directly
    assert eligible(s3fs.S3FileSystem(**options, skip_instance_cache=True))
