"""A daemon killed with SIGKILL, and local files changed under a mount.

After SIGKILL the kernel keeps a mount whose every access fails with ENOTCONN
("Transport endpoint is not connected"). ``refmount mount`` on it must say
so and refuse, ``--force`` must recover it, and ``refmount umount`` must
clean it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mounting import force_unmount, mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse


def _refs(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000)
    (tmp_path / "data.bin").write_bytes(data)
    refs = {"version": 1, "refs": {"a/b": [str(tmp_path / "data.bin"), 1000, 200_000], ".zgroup": '{"zarr_format":2}'}}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return tmp_path / "refs.json", data


def _kill(mount) -> None:
    mount.process.send_signal(signal.SIGKILL)
    mount.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.statvfs(mount.path)  # stat may come from cached attributes; statfs always asks the daemon
        except OSError as exc:
            assert exc.errno == errno.ENOTCONN
            return
        assert time.monotonic() < deadline, "the mount did not go stale"
        time.sleep(0.05)


def _wait_serving(mount) -> None:
    """``mounted`` may see the stale mount as an answer; wait until the new daemon serves.

    Between the lazy unmount of the stale mount and the new mount, the bare
    directory answers statvfs too: only a mountpoint that answers counts.
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            os.statvfs(mount.path)
            if os.path.ismount(mount.path):
                return
            raise OSError("not mounted yet")
        except OSError:
            assert mount.process.poll() is None, mount.log()
            assert time.monotonic() < deadline, mount.log()
            time.sleep(0.05)


def _refmount(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refmount", *args], capture_output=True, text=True, timeout=timeout)


def test_stale_mount_is_detected_and_recovered_with_force(tmp_path):
    refs, data = _refs(tmp_path)
    mountpoint = tmp_path / "mnt"
    try:
        with mounted(refs, mountpoint) as first:
            assert read_file(mountpoint / "a/b", timeout=30).data == data[1000:201_000]
            _kill(first)
            refused = _refmount("mount", str(refs), str(mountpoint), "-f")
            assert refused.returncode != 0
            assert "stale mount" in refused.stderr and "--force" in refused.stderr, refused.stderr
            with mounted(refs, mountpoint, ["--force"]) as second:
                _wait_serving(second)
                assert read_file(mountpoint / "a/b", timeout=30).data == data[1000:201_000]
                assert "stale mount" in second.log()
    finally:
        force_unmount(mountpoint)


def test_umount_cleans_a_stale_mount(tmp_path):
    refs, _ = _refs(tmp_path)
    mountpoint = tmp_path / "mnt"
    try:
        with mounted(refs, mountpoint) as m:
            _kill(m)
            done = _refmount("umount", str(mountpoint))
            assert done.returncode == 0, done.stderr
            assert not os.path.ismount(mountpoint)
            assert os.listdir(mountpoint) == []
    finally:
        force_unmount(mountpoint)


def test_local_file_changed_while_mounted_reads_estale(tmp_path):
    refs, data = _refs(tmp_path)
    with mounted(refs, tmp_path / "mnt", ["--block-size", "64K", "--readahead", "0"]) as m:
        head = read_file(m.path / "a/b", offset=0, size=4096, timeout=30)
        assert head.data == data[1000:5096]
        changed = bytearray(data)
        changed[150_000] ^= 0xFF
        (tmp_path / "data.bin").write_bytes(bytes(changed))
        os.utime(tmp_path / "data.bin", (time.time() + 10, time.time() + 10))
        later = read_file(m.path / "a/b", offset=140_000, size=4096, timeout=30)
        assert later.error == "ESTALE", later
        assert "changed since the references were made" in m.log()
        assert m.process.poll() is None
