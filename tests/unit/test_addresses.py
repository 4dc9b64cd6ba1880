"""Which hosts a remote reference set may reach: internal addresses, origins and ``allow`` prefixes."""

from __future__ import annotations

import pytest

from refmount.store.addresses import is_internal, refusal
from refmount.store.policy import UrlPolicy, origin_of

REMOTE = UrlPolicy.for_source("http://127.0.0.1:8000/sets/refs.json", ())


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "fe80::1", "10.1.2.3", "172.16.0.1", "172.31.255.255",
    "192.168.1.1", "fc00::1", "fd12:3456::1", "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
])
def test_internal_addresses(address):
    assert is_internal(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"])
def test_public_addresses(address):
    assert not is_internal(address)


def test_origins_make_default_ports_explicit_and_ignore_paths():
    assert origin_of("http://127.0.0.1:8000/a/b?x") == "http://127.0.0.1:8000"
    assert origin_of("HTTPS://Example.ORG/x") == "https://example.org:443"
    assert origin_of("s3://bucket/key") is None and origin_of("/etc/passwd") is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8001/x", "http://169.254.169.254/latest/meta-data/", "http://localhost:8000/x",
    "http://2130706433/x", "http://0x7f.1:8000/x", "http://10.0.0.5/x",
])
def test_a_remote_set_is_refused_internal_hosts_and_told_which_allow_admits_them(url):
    reason = refusal(REMOTE, url)
    assert reason is not None and "internal address" in reason and "-o allow=" in reason, (url, reason)


def test_its_own_origin_object_stores_and_named_prefixes_stay_reachable():
    assert refusal(REMOTE, "http://127.0.0.1:8000/data/x.bin") is None
    assert refusal(REMOTE, "s3://private/secret.txt") is None  # buckets: the endpoint is the operator's
    allowed = UrlPolicy.for_source("http://127.0.0.1:8000/refs.json", ("http://127.0.0.1:8001/",))
    assert refusal(allowed, "http://127.0.0.1:8001/x") is None
    assert refusal(allowed, "http://127.0.0.1:8001/../x") is not None
    for protocol, url in (("http", "http://127.0.0.1:1/"), ("ftp", "ftp://127.0.0.1/x")):  # a protocol is no host
        policy = UrlPolicy.for_source("http://127.0.0.1:8000/refs.json", (protocol,))
        assert "internal address" in (refusal(policy, url) or ""), url


def test_a_local_set_is_the_operators_own_and_may_reach_internal_hosts():
    assert refusal(UrlPolicy.for_source("/srv/refs.json", ()), "http://127.0.0.1:8001/x") is None


def test_relative_local_paths_are_refused_rather_than_read_from_the_working_directory():
    for source in ("/srv/refs.json", "http://127.0.0.1:8000/refs.json"):
        assert "relative" in (refusal(UrlPolicy.for_source(source, ("file",)), "data/x.bin") or "")
