"""Objects that change while mounted, where the store gives no refusal to notice it by.

The If-Match check of a GET only works when the server honours If-Match and
sends an ETag. Here the server does neither, or the change shows only in the
total size, or a local file is rewritten and its mtime set back: each answer
must still be held against the facts seen at first contact, and a changed
object read as ESTALE, never as its new bytes (or a mix of old and new).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.http_range_server import RangeHTTPServer
from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse

BLOCK = 32 << 10
BOUND = 30.0
OPTIONS = ["--block-size", "32K", "--readahead", "0", "--timeout", "5", "--cache-size", "1M"]


def _refs(tmp_path: Path, url: str, blocks: int) -> Path:
    refs = {f"k/{i}": [url, i * BLOCK, BLOCK] for i in range(blocks)}
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"version": 1, "refs": refs}))
    return path


def _first_then_changed(tmp_path: Path, server: RangeHTTPServer, change) -> None:
    """Read k/0 (first contact), let ``change`` rewrite the object, then k/2 must be ESTALE."""
    original = os.urandom(BLOCK * 4)
    url = server.put("obj.bin", original, mtime=time.time() - 3600)
    with mounted(_refs(tmp_path, url, 4), tmp_path / "mnt", OPTIONS) as mount:
        first = read_file(mount.path / "k/0", timeout=BOUND)
        assert first.data == original[:BLOCK], first
        change(original)
        result = read_file(mount.path / "k/2", timeout=BOUND)
        assert result.error == "ESTALE", (result.data == original[2 * BLOCK : 3 * BLOCK], result.error)
        log = mount.log()
        assert "obj.bin changed since the references were made" in log
        assert log.count("stale object: ") == 1
        assert mount.process.poll() is None


def test_server_ignoring_if_match_with_a_new_etag_reads_estale(tmp_path, http_server):
    http_server.misbehave(ignore_if_match=True)

    def rewrite(original: bytes) -> None:
        http_server.put("obj.bin", os.urandom(len(original)), mtime=time.time())  # same size, new ETag

    _first_then_changed(tmp_path, http_server, rewrite)


def test_server_without_etag_whose_last_modified_changes_reads_estale(tmp_path, http_server):
    http_server.misbehave(no_etag=True)

    def rewrite(original: bytes) -> None:
        http_server.put("obj.bin", os.urandom(len(original)), mtime=time.time())

    _first_then_changed(tmp_path, http_server, rewrite)


def test_object_that_grew_reads_estale_from_the_total_in_content_range(tmp_path, http_server):
    """No ETag, Last-Modified set back: only the total of Content-Range tells the object grew."""
    http_server.misbehave(no_etag=True)

    def grow(original: bytes) -> None:
        mtime = (http_server.root / "obj.bin").stat().st_mtime
        http_server.put("obj.bin", original + os.urandom(BLOCK), mtime=mtime)

    _first_then_changed(tmp_path, http_server, grow)


def test_local_file_rewritten_with_its_mtime_restored_reads_estale(tmp_path):
    """Same size, same mtime (os.utime): the ctime (and the inode, when replaced) still tell."""
    original = os.urandom(BLOCK * 4)
    data = tmp_path / "data.bin"
    data.write_bytes(original)
    before = data.stat()
    with mounted(_refs(tmp_path, str(data), 4), tmp_path / "mnt", OPTIONS) as mount:
        assert read_file(mount.path / "k/0", timeout=BOUND).data == original[:BLOCK]
        time.sleep(0.05)  # a ctime tick apart, even on coarse clocks
        data.write_bytes(os.urandom(len(original)))
        os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (data.stat().st_size, data.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        result = read_file(mount.path / "k/2", timeout=BOUND)
        assert result.error == "ESTALE", (result.data == original[2 * BLOCK : 3 * BLOCK], result.error)
        assert "data.bin changed since the references were made" in mount.log()
        assert mount.process.poll() is None
