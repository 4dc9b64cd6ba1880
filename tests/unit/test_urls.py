"""The one URL redactor and the one "is it local?" rule."""

import pytest

from refmount.urls import is_local, is_plain_path, protocol_of, redact_url


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:pw@host/x.json", "https://***@host/x.json"),
        ("https://:pw@host:8080/x.json?a=1", "https://***@host:8080/x.json"),
        ("https://bucket.s3.amazonaws.com/k.nc?X-Amz-Signature=abc&X-Amz-Credential=AKIA", "https://bucket.s3.amazonaws.com/k.nc"),
        ("https://host?token=secret", "https://host"),
        ("https://host/x.json", "https://host/x.json"),
        ("s3://bucket/refs.json", "s3://bucket/refs.json"),
        ("/local/path", "/local/path"),
    ],
)
def test_redact_url_drops_userinfo_and_query(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url, local, plain",
    [
        ("/data/x.json", True, True),
        ("data/x.json", True, True),
        ("file:///data/x.json", True, False),
        ("local:///data/x.json", True, False),
        ("s3://b/x.json", False, False),
        ("S3A://b/x.json", False, False),
        ("simplecache::s3://b/x.json", False, False),
        ("https://h/x.json", False, False),
    ],
)
def test_local_and_plain_paths(url, local, plain):
    assert is_local(url) is local
    assert is_plain_path(url) is plain


def test_protocol_spellings():
    assert protocol_of("S3A://b/k") == "s3"
    assert protocol_of("/p") == "file"
    assert protocol_of("simplecache::s3://b/k") == "simplecache"
