"""Tests of the test servers themselves: if these lie, every other test lies with them."""

from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session
import pytest

from refmount.devtools.localstore import LocalS3
from tests.support.http_range_server import RangeHTTPServer
from tests.support.s3proxy import S3Proxy

PAYLOAD = bytes(range(256)) * 64  # 16 KiB, every offset distinguishable


def _raw_client(endpoint: str, store: LocalS3, *, attempts: int = 1, read_timeout: float = 5) -> Any:
    """A botocore client without retries, so a single injected fault is seen as is."""
    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        config=botocore.config.Config(
            retries={"total_max_attempts": attempts},
            connect_timeout=2,
            read_timeout=read_timeout,
        ),
    )


def _http_get(
    server: RangeHTTPServer, rel: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, "/" + rel, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- LocalS3


def test_local_s3_put_get_and_ranged_read(local_s3: LocalS3, s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/dir/obj.bin"
    local_s3.put(url, PAYLOAD)
    src = tmp_path / "up.bin"
    src.write_bytes(PAYLOAD[::-1])
    local_s3.upload(src, f"s3://{s3_bucket}/uploaded.bin")

    fs = local_s3.filesystem()
    assert fs is not local_s3.filesystem()  # never a cached instance
    assert fs.info(url)["size"] == len(PAYLOAD)
    assert fs.cat_file(url) == PAYLOAD
    assert fs.cat_file(url, start=1000, end=1100) == PAYLOAD[1000:1100]
    assert fs.cat_file(f"s3://{s3_bucket}/uploaded.bin", start=0, end=3) == PAYLOAD[::-1][:3]
    assert local_s3.endpoint_url.startswith("http://127.0.0.1:")
    assert local_s3.storage_options()["client_kwargs"]["endpoint_url"] == local_s3.endpoint_url
    env = local_s3.env()
    assert env["AWS_ENDPOINT_URL"] == local_s3.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == local_s3.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == local_s3.secret_key


def test_local_s3_rejects_wrong_secret(local_s3: LocalS3, s3_bucket: str) -> None:
    """Credentials are really checked, so signature problems cannot go unnoticed."""
    local_s3.put(f"s3://{s3_bucket}/k", b"x")
    wrong = LocalS3.__new__(LocalS3)
    wrong.access_key, wrong.secret_key = local_s3.access_key, "not-the-secret"
    client = _raw_client(local_s3.endpoint_url, wrong)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.get_object(Bucket=s3_bucket, Key="k")
    assert info.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")


def test_local_s3_restart_keeps_data_and_ports(local_s3: LocalS3, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/survives"
    local_s3.put(url, PAYLOAD)
    endpoint, old_pid = local_s3.endpoint_url, local_s3.pid
    assert old_pid is not None

    local_s3.restart()

    assert local_s3.endpoint_url == endpoint
    assert local_s3.pid not in (None, old_pid)
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)  # the old server (and its group) is gone
    assert local_s3.filesystem().cat_file(url, start=10, end=20) == PAYLOAD[10:20]


# --------------------------------------------------------------------------- HTTP range server


@pytest.fixture
def served(http_server: RangeHTTPServer) -> RangeHTTPServer:
    (http_server.root / "data.bin").write_bytes(PAYLOAD)
    return http_server


def test_http_full_get_head_and_headers(served: RangeHTTPServer) -> None:
    resp, body = _http_get(served, "data.bin")
    assert resp.status == 200 and body == PAYLOAD
    assert resp.getheader("Content-Length") == str(len(PAYLOAD))
    assert resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("ETag") and resp.getheader("Last-Modified")
    resp, body = _http_get(served, "data.bin", method="HEAD")
    assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == str(len(PAYLOAD))
    assert _http_get(served, "missing.bin")[0].status == 404
    assert _http_get(served, "../../etc/passwd")[0].status == 404
    assert served.url_for("data.bin") == f"{served.url}/data.bin"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0), ("bytes=100-199", 100, 199), ("bytes=16000-", 16000, 16383),
        ("bytes=-10", 16374, 16383), ("bytes=16380-99999", 16380, 16383),
    ],
)
def test_http_ranges(served: RangeHTTPServer, header: str, start: int, end: int) -> None:
    resp, body = _http_get(served, "data.bin", {"Range": header})
    assert resp.status == 206
    assert body == PAYLOAD[start : end + 1]
    assert resp.getheader("Content-Range") == f"bytes {start}-{end}/{len(PAYLOAD)}"
    assert resp.getheader("Content-Length") == str(end - start + 1)


def test_http_unsatisfiable_range_is_416(served: RangeHTTPServer) -> None:
    resp, body = _http_get(served, "data.bin", {"Range": f"bytes={len(PAYLOAD)}-"})
    assert resp.status == 416 and body == b""
    assert resp.getheader("Content-Range") == f"bytes */{len(PAYLOAD)}"


def test_http_counts_requests_and_bytes_across_threads(served: RangeHTTPServer) -> None:
    def fetch(i: int) -> None:
        _http_get(served, "data.bin", {"Range": f"bytes={i * 100}-{i * 100 + 99}"})

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _http_get(served, "data.bin", method="HEAD")
    counts = served.counts()
    assert counts["total"] == 21
    assert counts["by_method"] == {"GET": 20, "HEAD": 1}
    assert counts["by_path"] == {"/data.bin": 21}
    assert counts["bytes_sent"] == 20 * 100
    assert len(served.requests) == 21
    served.reset()
    assert served.counts()["total"] == 0 and served.counts()["bytes_sent"] == 0 and not served.requests


def test_http_ignore_range_sends_whole_body(served: RangeHTTPServer) -> None:
    served.bad.ignore_range = True
    resp, body = _http_get(served, "data.bin", {"Range": "bytes=10-19"})
    assert resp.status == 200 and body == PAYLOAD and resp.getheader("Content-Range") is None


def test_http_wrong_content_length(served: RangeHTTPServer) -> None:
    served.bad.content_length_delta = -5  # claims fewer bytes: a client sees a silently short body
    resp, body = _http_get(served, "data.bin", {"Range": "bytes=0-99"})
    assert resp.status == 206 and body == PAYLOAD[:95]
    served.bad.content_length_delta = +5  # claims more bytes than it sends
    with pytest.raises(http.client.IncompleteRead):
        _http_get(served, "data.bin", {"Range": "bytes=0-99"})


def test_http_body_cut_short(served: RangeHTTPServer) -> None:
    served.bad.cut_body = 30
    with pytest.raises(http.client.IncompleteRead) as info:
        _http_get(served, "data.bin", {"Range": "bytes=0-99"})
    assert len(info.value.partial) == 70


def test_http_delay_and_fail_next(served: RangeHTTPServer) -> None:
    served.bad.delay = 2.0
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=0.2)
    with pytest.raises(TimeoutError):  # the delayed answer misses a short client timeout
        conn.request("GET", "/data.bin", headers={"Range": "bytes=0-0"})
        conn.getresponse().read()
    conn.close()
    served.behave()
    served.fail_next(2, status=503)
    assert [_http_get(served, "data.bin")[0].status for _ in range(3)] == [503, 503, 200]
    assert served.counts()["by_method"]["GET"] == 4


# --------------------------------------------------------------------------- S3 proxy


@pytest.fixture
def obj(local_s3: LocalS3, s3_bucket: str, s3_proxy: S3Proxy) -> str:
    """An object in the store, with the proxy's counters zeroed afterwards."""
    url = f"s3://{s3_bucket}/obj.bin"
    local_s3.put(url, PAYLOAD)
    s3_proxy.reset()
    return url


def test_proxy_counts_each_ranged_get(s3_proxy: S3Proxy, obj: str) -> None:
    fs = s3_proxy.filesystem()
    ranges = [(0, 10), (500, 1500), (16000, 16384)]
    for start, end in ranges:
        assert fs.cat_file(obj, start=start, end=end) == PAYLOAD[start:end]
    counts = s3_proxy.counts()
    assert counts["by_method"] == {"GET": 3}
    assert s3_proxy.gets() == 3
    assert counts["bytes_sent"] == sum(e - s for s, e in ranges)
    assert [r[2] for r in s3_proxy.requests] == [f"bytes={s}-{e - 1}" for s, e in ranges]


def test_proxy_writes_verify_through_host_header(local_s3: LocalS3, s3_bucket: str, s3_proxy: S3Proxy) -> None:
    """Signed PUTs through the proxy land in the store (SigV4 signs Host, the proxy keeps it)."""
    fs = s3_proxy.filesystem()
    fs.pipe_file(f"s3://{s3_bucket}/via-proxy", b"hello")
    assert local_s3.get(f"s3://{s3_bucket}/via-proxy") == b"hello"
    assert s3_proxy.counts()["by_method"]["PUT"] == 1
    assert s3_proxy.counts()["bytes_received"] >= 5


@pytest.mark.parametrize(("kind", "code"), [("503", "SlowDown"), ("500", "InternalError")])
def test_proxy_error_status_is_s3_xml_and_retried(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str, kind: str, code: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    s3_proxy.inject(kind, count=1, methods="GET")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _raw_client(s3_proxy.endpoint_url, local_s3).get_object(Bucket=bucket, Key=key)
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == int(kind)

    s3_proxy.inject(kind, count=2, methods="GET")
    assert s3_proxy.filesystem().cat_file(obj, start=0, end=8) == PAYLOAD[:8]
    assert s3_proxy.gets() == 1 + 3
    assert s3_proxy.counts()["faults"] == {kind: 3}


def test_proxy_faults_select_by_method(s3_proxy: S3Proxy, obj: str) -> None:
    s3_proxy.inject("503", count=5, methods={"PUT"})
    assert s3_proxy.filesystem().cat_file(obj, start=0, end=4) == PAYLOAD[:4]
    assert s3_proxy.counts()["faults"] == {}


def test_proxy_connection_reset(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    s3_proxy.inject("reset", count=1, methods="GET")
    with pytest.raises((botocore.exceptions.ConnectionClosedError, botocore.exceptions.ConnectionError)):
        _raw_client(s3_proxy.endpoint_url, local_s3).get_object(Bucket=bucket, Key=key)
    s3_proxy.inject("reset", count=1, methods="GET")
    assert s3_proxy.filesystem().cat_file(obj, start=0, end=4) == PAYLOAD[:4]
    assert s3_proxy.counts()["faults"] == {"reset": 2}


def test_proxy_short_body_is_detected(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    s3_proxy.inject("cut", count=1, methods="GET", keep=0.25)
    resp = _raw_client(s3_proxy.endpoint_url, local_s3).get_object(Bucket=bucket, Key=key, Range="bytes=0-999")
    with pytest.raises((botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError)):
        resp["Body"].read()
    s3_proxy.inject("cut", count=1, methods="GET")
    assert s3_proxy.filesystem().cat_file(obj, start=0, end=1000) == PAYLOAD[:1000]


def test_proxy_wrong_content_length(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    client = _raw_client(s3_proxy.endpoint_url, local_s3)
    # Announces one byte fewer than it has: the client gets a consistent, silently short body.
    s3_proxy.inject("bad_length", count=1, methods="GET", delta=-1)
    resp = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-99")
    assert resp["Body"].read() == PAYLOAD[:99]
    # Announces more than it sends: a truncated body.
    s3_proxy.inject("bad_length", count=1, methods="GET", delta=+10)
    resp = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-99")
    with pytest.raises((botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError)):
        resp["Body"].read()


def test_proxy_stall_until_timeout_or_release(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    s3_proxy.inject("stall", count=1, methods="GET")  # forever, until released
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        _raw_client(s3_proxy.endpoint_url, local_s3, read_timeout=0.5).get_object(Bucket=bucket, Key=key)
    s3_proxy.release()

    # A bounded stall: the request is held, then forwarded and answered correctly.
    s3_proxy.inject("stall", count=1, methods="GET", seconds=0.3)
    resp = _raw_client(s3_proxy.endpoint_url, local_s3).get_object(Bucket=bucket, Key=key, Range="bytes=0-9")
    assert resp["Body"].read() == PAYLOAD[:10]
    assert s3_proxy.counts()["faults"] == {"stall": 2}


def test_proxy_pause_refuses_connections(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    port = s3_proxy.port
    s3_proxy.pause()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        _raw_client(s3_proxy.endpoint_url, local_s3).get_object(Bucket=bucket, Key=key)
    s3_proxy.resume()
    assert s3_proxy.port == port
    assert s3_proxy.filesystem().cat_file(obj, start=0, end=2) == PAYLOAD[:2]


def test_proxy_share_is_seeded(s3_proxy: S3Proxy, local_s3: LocalS3, obj: str) -> None:
    """The same seed picks the same requests, so flaky-looking tests replay exactly."""
    bucket, key = obj.removeprefix("s3://").split("/", 1)
    client = _raw_client(s3_proxy.endpoint_url, local_s3)

    def outcomes() -> list[bool]:
        result = []
        for _ in range(12):
            try:
                client.head_object(Bucket=bucket, Key=key)
                result.append(True)
            except botocore.exceptions.ClientError:
                result.append(False)
        return result

    s3_proxy.inject("503", share=0.5, methods="HEAD")
    s3_proxy.reseed(42)
    first = outcomes()
    s3_proxy.reseed(42)
    assert outcomes() == first
    assert True in first and False in first
