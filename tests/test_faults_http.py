"""Faults of an HTTP object store, injected by a real server on loopback, seen through a real mount.

Every read either returns the reference's exact bytes or fails with EIO
(ESTALE for a changed object) within the configured bound, and the daemon
survives to serve the next read once the store is healthy again. Readers
run in child processes with timeouts, so a hang fails a test instead of CI.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest

from .faulty_http import FaultyHTTPServer, etag_of
from .mounting import mounted
from .readers import read_file

pytestmark = pytest.mark.fuse

KEY_SIZE = 32 << 10
KEYS = 96
TIMEOUT = 6.0  # the mount's `timeout`; `retries` is 4, so one silent attempt is cut after 1.5 s
BOUND = 3 * TIMEOUT + 10  # a reader still blocked after this is a hang


@pytest.fixture(scope="module")
def server():
    srv = FaultyHTTPServer().start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def dataset(server, tmp_path_factory):
    """Objects and a reference set with keys k/0..k/95 (one block each) and objects for staleness."""
    base = tmp_path_factory.mktemp("faults-http")
    data = os.urandom(KEY_SIZE * KEYS)
    big = os.urandom(4 << 20)
    mutable = os.urandom(KEY_SIZE * 4)
    recorded_wrong = os.urandom(KEY_SIZE)
    urls = {
        "data": server.put("data.bin", data),
        "big": server.put("big.bin", big),
        "mutable": server.put("mutable.bin", mutable),
        "stale": server.put("stale.bin", recorded_wrong),
    }
    refs = {f"k/{i}": [urls["data"], i * KEY_SIZE, KEY_SIZE] for i in range(KEYS)}
    refs["big"] = [urls["big"], 0, len(big)]
    refs.update({f"mut/{i}": [urls["mutable"], i * KEY_SIZE, KEY_SIZE] for i in range(4)})
    refs["stale/0"] = [urls["stale"], 0, KEY_SIZE]
    doc = {
        "version": 1,
        "refs": refs,
        "refmount": {
            "sources": {
                urls["data"]: {"size": len(data), "etag": etag_of(data)},
                urls["stale"]: {"size": len(recorded_wrong), "etag": '"0123456789abcdef"'},
            }
        },
    }
    path = base / "refs.json"
    path.write_text(json.dumps(doc))
    return {"refs": str(path), "data": data, "big": big, "mutable": mutable, "base": base}


@pytest.fixture(scope="module")
def mount(server, dataset):
    options = [
        "--timeout", str(TIMEOUT), "--retries", "4", "--block-size", "32K", "--readahead", "0",
        "--cache-size", "1M", "--max-request", "1M",
    ]
    with mounted(dataset["refs"], dataset["base"] / "mnt", options) as m:
        assert read_file(m.path / "k/0", timeout=BOUND).data == dataset["data"][:KEY_SIZE]
        yield m


_fresh = itertools.count(1)


def fresh_key(dataset) -> tuple[str, bytes]:
    """A key no earlier test read (so neither the kernel nor the block cache holds it)."""
    i = next(_fresh)
    assert i < KEYS, "add keys to the dataset"
    return f"k/{i}", dataset["data"][i * KEY_SIZE : (i + 1) * KEY_SIZE]


@pytest.fixture(autouse=True)
def healthy(server):
    server.heal()
    yield
    server.heal()


@pytest.mark.parametrize("fault", ["503", "500", "reset", "stall", "short", "wrong_length"])
def test_transient_faults_are_retried_and_the_bytes_are_right(server, dataset, mount, fault):
    key, expected = fresh_key(dataset)
    server.always(None, stall_seconds=4)
    before = len(server.requests())
    server.inject(fault, fault)
    result = read_file(mount.path / key, timeout=BOUND)
    assert result.ok, f"{fault}: {result.error}\n{mount.log()[-3000:]}"
    assert result.data == expected
    assert len(server.requests()) - before >= 3  # two failed attempts, then the good one
    assert mount.process.poll() is None


@pytest.mark.parametrize("fault", ["503", "reset", "stall", "short", "wrong_length", "oversized", "ignore_range"])
def test_persistent_faults_are_eio_and_the_next_read_works_once_healed(server, dataset, mount, fault):
    key, expected = fresh_key(dataset)
    server.always(fault, stall_seconds=60)
    result = read_file(mount.path / key, timeout=BOUND)
    assert result.error == "EIO", result
    assert mount.process.poll() is None, "the daemon died"
    server.heal()
    again = read_file(mount.path / key, timeout=BOUND)
    assert again.ok, again.error
    # Nothing of the bad bodies was cached: the same key now reads exactly right.
    assert again.data == expected


def test_store_killed_during_a_large_read_gives_eio_then_works_after_restart(server, dataset, mount):
    import subprocess
    import sys
    import time

    server.always("slow")
    script = (
        "import os,sys\n"
        "try:\n    open(sys.argv[1],'rb').read(); print('OK')\n"
        "except OSError as e:\n    import errno; print(errno.errorcode[e.errno])\n"
    )
    reader = subprocess.Popen([sys.executable, "-c", script, str(mount.path / "big")], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not any(path == "/big.bin" for _, path, _ in server.requests()):
            assert time.monotonic() < deadline, "the large read never reached the server"
            time.sleep(0.02)
        time.sleep(0.2)  # mid-body
        server.kill()
        out, _ = reader.communicate(timeout=BOUND)
    finally:
        reader.kill()
        server.heal()
        if server._server is None:
            server.start()
    assert out.decode().strip() == "EIO"
    assert mount.process.poll() is None
    after = read_file(mount.path / "big", timeout=BOUND)
    assert after.ok, after.error
    assert after.data == dataset["big"]


def test_object_recorded_with_other_facts_is_estale_with_a_log_line(dataset, mount):
    result = read_file(mount.path / "stale/0", timeout=BOUND)
    assert result.error == "ESTALE"
    log = mount.log()
    assert "changed since the references were made" in log and "stale.bin" in log
    assert mount.process.poll() is None


def test_object_rewritten_after_first_access_is_estale_not_other_bytes(server, dataset, mount):
    first = read_file(mount.path / "mut/0", timeout=BOUND)
    assert first.data == dataset["mutable"][:KEY_SIZE]
    server.put("mutable.bin", os.urandom(len(dataset["mutable"])))  # same size, new ETag
    result = read_file(mount.path / "mut/2", timeout=BOUND)
    assert result.error == "ESTALE", result
    assert "mutable.bin changed since the references were made" in mount.log()


def test_recorded_facts_that_match_are_read_normally(dataset, mount):
    key, expected = fresh_key(dataset)
    assert read_file(mount.path / key, timeout=BOUND).data == expected
