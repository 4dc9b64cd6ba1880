"""Through a real mount: a remote reference set cannot reach internal hosts other than its own.

Two loopback servers: ``http_server`` publishes the reference set, ``internal``
stands for a service on the operator's network (another port on the same
machine) and records every request it gets. A set published on the first
may read its own server, but not the second, not the instance metadata
address, and not a name that resolves to loopback, unless ``allow`` names
the place; redirects are held to the same rule hop by hop.
"""

from __future__ import annotations

import json

import pytest

from tests.support.http_range_server import RangeHTTPServer
from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse

DATA = b"published bytes " * 100
SECRET = b"internal admin page, not for the mount\n" * 10
QUICK = ["--timeout", "5", "--retries", "1"]


@pytest.fixture
def internal(tmp_path):
    root = tmp_path / "internal"
    root.mkdir()
    with RangeHTTPServer(root) as server:
        server.put("admin/secret.bin", SECRET)
        server.reset()
        yield server


def _publish(server: RangeHTTPServer, refs: dict) -> str:
    server.put("refs.json", json.dumps(refs).encode())
    return server.url_for("refs.json")


def test_a_remote_set_cannot_reach_another_loopback_port_unless_allowed(http_server, internal, tmp_path):
    own = http_server.put("pub/data.bin", DATA)
    source = _publish(http_server, {"own": [own, 0, len(DATA)],
                                    "admin": [internal.url_for("admin/secret.bin"), 0, len(SECRET)]})
    with mounted(source, tmp_path / "m1", QUICK) as m:
        assert read_file(m.path / "own", timeout=60).data == DATA  # its own origin stays reachable
        assert read_file(m.path / "admin", timeout=60).error == "EACCES"
        log = m.log()
    assert internal.requests == [], internal.requests
    assert f"{internal.url}/admin/secret.bin" in log and f"-o allow={internal.url}/" in log, log[-3000:]
    with mounted(source, tmp_path / "m2", [*QUICK, "-o", f"allow={internal.url}/"]) as m:
        assert read_file(m.path / "admin", timeout=60).data == SECRET


def test_a_redirect_to_another_loopback_port_is_refused_before_it_is_followed(http_server, internal, tmp_path):
    away = http_server.redirect("pub/away.bin", internal.url_for("admin/secret.bin"))
    source = _publish(http_server, {"away": [away, 0, len(SECRET)]})
    with mounted(source, tmp_path / "mnt", QUICK) as m:
        assert read_file(m.path / "away", timeout=60).error == "EACCES"
        log = m.log()
    assert internal.requests == [], internal.requests
    assert f"refused redirect from {away} to {internal.url}/admin/secret.bin" in log, log[-3000:]
    assert f"-o allow={internal.url}/" in log


def test_instance_metadata_and_names_resolving_to_loopback_are_refused(http_server, tmp_path):
    own = http_server.put("pub/data.bin", DATA)
    by_name = own.replace("127.0.0.1", "localhost")
    source = _publish(http_server, {
        "metadata": ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", 0, 10],
        "by_name": [by_name, 0, len(DATA)],
    })
    with mounted(source, tmp_path / "m1", QUICK) as m:
        assert read_file(m.path / "metadata", timeout=60).error == "EACCES"
        assert read_file(m.path / "by_name", timeout=60).error == "EACCES"
        log = m.log()
    assert "169.254.169.254 is an internal address" in log and "localhost (127.0.0.1)" in log, log[-3000:]
    with mounted(source, tmp_path / "m2", [*QUICK, "-o", f"allow={by_name.rsplit('/pub/', 1)[0]}/"]) as m:
        assert read_file(m.path / "by_name", timeout=60).data == DATA  # named explicitly: reachable


def test_buckets_other_than_the_sets_own_are_listed_at_mount(tmp_path):
    refs = {"a": ["s3://archive/x.bin", 0, 10], "b": ["s3://private-bucket/y.bin", 0, 10]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    with mounted(tmp_path / "refs.json", tmp_path / "mnt", ["--endpoint-url", "http://127.0.0.1:9", *QUICK]) as m:
        log = m.log()
    assert "S3 bucket(s) other than its own with this mount's credentials: archive, private-bucket" in log, log
