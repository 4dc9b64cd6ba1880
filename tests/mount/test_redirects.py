"""HTTP redirects through a real mount: followed inside ``allow``, refused (EACCES) outside it.

Two loopback servers: the allowed one serves data and answers some paths
with ``302``; the other stands for a place the operator did not allow (an
internal service) and records every request it gets, so the tests can
check that a refused redirect never reaches it.
"""

from __future__ import annotations

import json

import pytest

from refmount.store.redirects import MAX_REDIRECTS
from tests.support.http_range_server import RangeHTTPServer
from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse

DATA = b"allowed bytes " * 500
SECRET = b"internal secret, not for the mount\n" * 10


@pytest.fixture
def elsewhere(tmp_path):
    """The server no reference may reach; ``elsewhere.requests`` lists what it was asked."""
    root = tmp_path / "elsewhere"
    root.mkdir()
    with RangeHTTPServer(root) as server:
        server.put("secret.bin", SECRET)
        server.put("refs.json", json.dumps({"leaked": [server.url_for("secret.bin"), 0, len(SECRET)]}).encode())
        yield server


@pytest.fixture
def redirecting(http_server, elsewhere):
    """References on the allowed server: plain, redirected inside ``pub/``, redirected away, and a loop."""
    data_url = http_server.put("pub/data.bin", DATA)
    refs = {
        "plain": [data_url, 0, len(DATA)],
        "moved": [http_server.redirect("pub/moved.bin", data_url), 0, len(DATA)],
        "moved_twice": [http_server.redirect("pub/again.bin", http_server.url_for("pub/moved.bin")), 7, 100],
        "away": [http_server.redirect("pub/away.bin", elsewhere.url_for("secret.bin")), 0, len(SECRET)],
        "loop": [http_server.redirect("pub/loop.bin", http_server.url_for("pub/loop.bin")), 0, 10],
    }
    http_server.put("refs.json", json.dumps(refs).encode())
    return http_server


def test_a_redirect_outside_allow_is_eacces_and_never_reaches_its_target(redirecting, elsewhere, tmp_path):
    allow = f"{redirecting.url}/pub/"
    options = ["--allow", allow, "--timeout", "10", "--retries", "2"]
    with mounted(redirecting.url_for("refs.json"), tmp_path / "mnt", options) as m:
        assert read_file(m.path / "away", timeout=60).error == "EACCES"
        assert read_file(m.path / "plain", timeout=60).data == DATA  # neighbours are unaffected
        log = m.log()
    assert elsewhere.requests == [], elsewhere.requests
    assert (f"refused redirect from {redirecting.url}/pub/away.bin to {elsewhere.url}/secret.bin" in log), log[-3000:]
    assert SECRET.decode().strip().splitlines()[0] not in log


def test_redirects_inside_allow_are_followed_and_a_loop_ends_in_eio(redirecting, elsewhere, tmp_path):
    options = ["--allow", f"{redirecting.url}/pub/", "--timeout", "10", "--retries", "2"]
    with mounted(redirecting.url_for("refs.json"), tmp_path / "mnt", options) as m:
        assert read_file(m.path / "moved", timeout=60).data == DATA
        assert read_file(m.path / "moved_twice", timeout=60).data == DATA[7:107]
        assert read_file(m.path / "loop", timeout=60).error == "EIO"
        log = m.log()
    assert "refused redirect" not in log
    assert elsewhere.requests == []
    # Each request stops after MAX_REDIRECTS hops and a loop is not retried: per read of the file, one
    # HEAD and one GET lookup of at most MAX_REDIRECTS hops each (the kernel may retry a failed page read).
    loops = [r for r in redirecting.requests if r[1] == "/pub/loop.bin"]
    assert 0 < len(loops) <= 2 * 2 * MAX_REDIRECTS, len(loops)


def test_a_reference_set_redirected_outside_allow_is_refused(http_server, elsewhere, tmp_path):
    source = http_server.redirect("refs.json", elsewhere.url_for("refs.json"))
    options = ["--allow", f"{http_server.url}/pub/", "--timeout", "5", "--retries", "1"]
    with pytest.raises(AssertionError, match="exited with 2 before mounting") as failure:
        with mounted(source, tmp_path / "mnt", options):
            pass
    assert f"refused redirect from {source} to {elsewhere.url}/refs.json" in str(failure.value), failure.value
    assert elsewhere.requests == [], elsewhere.requests


def test_a_reference_set_redirected_on_its_own_server_loads(http_server, elsewhere, tmp_path):
    data_url = http_server.put("pub/data.bin", DATA)
    http_server.put("v2/refs.json", json.dumps({"plain": [data_url, 0, len(DATA)]}).encode())
    source = http_server.redirect("refs.json", http_server.url_for("v2/refs.json"))
    with mounted(source, tmp_path / "mnt", ["--allow", f"{http_server.url}/pub/"]) as m:
        assert read_file(m.path / "plain", timeout=60).data == DATA
    assert elsewhere.requests == []
