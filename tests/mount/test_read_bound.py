"""``timeout`` bounds one read(2), not one FUSE request.

When a readahead request fails, the kernel asks again with a read of its
own for the page the reader waits on. Had that second request waited out
``timeout`` too, a buffered ``dd`` on a stalled store would take twice the
bound. The daemon remembers the range that just failed, so the second
request gets one short attempt only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse

TIMEOUT = 3.0
SIZE = 8 << 20
TAIL = 4096


def test_buffered_dd_on_a_stalled_store_is_eio_within_the_bound_and_reads_after_healing(tmp_path, http_server):
    data = os.urandom(SIZE)
    url = http_server.put("big.bin", data)
    refs = {"version": 1, "refs": {"data": [url, 0, SIZE - TAIL], "tail": [url, SIZE - TAIL, TAIL]}}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    dd = ["dd", f"if={tmp_path / 'mnt' / 'data'}", f"of={tmp_path / 'copy'}", "bs=1M"]
    with mounted(tmp_path / "refs.json", tmp_path / "mnt", ["-o", f"timeout={TIMEOUT:g},retries=2"]) as mount:
        # First contact (size, ETag) before the stall, through a key whose blocks `data` does not need.
        assert read_file(mount.path / "tail", timeout=30).data == data[-TAIL:]
        http_server.misbehave(stall=60.0)
        started = time.monotonic()
        failed = subprocess.run(dd, capture_output=True, timeout=4 * TIMEOUT + 10)
        took = time.monotonic() - started
        assert failed.returncode != 0 and b"Input/output error" in failed.stderr, failed.stderr
        assert took <= TIMEOUT + 1.5, f"read(2) answered after {took:.1f} s\n{mount.log()[-3000:]}"
        http_server.behave()
        time.sleep(TIMEOUT + 0.5)  # the failure is no longer remembered
        healed = subprocess.run(dd, capture_output=True, timeout=60)
        assert healed.returncode == 0, healed.stderr
        assert (tmp_path / "copy").read_bytes() == data[: SIZE - TAIL]
        assert mount.process.poll() is None
