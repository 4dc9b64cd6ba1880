"""Background ``refmount mount`` succeeds only when the *new* mount answers: never over a stale or busy mountpoint."""

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

from refmount.mount.control import read_stats
from tests.support.mounting import force_unmount
from tests.support.opsfixtures import code_env, pid_alive, wait_for

pytestmark = pytest.mark.fuse


def _refs(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000)
    (tmp_path / "data.bin").write_bytes(data)
    refs = {"version": 1, "refs": {"a/b": [str(tmp_path / "data.bin"), 1000, 200_000], ".zgroup": '{"zarr_format":2}'}}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return tmp_path / "refs.json", data[1000:201_000]


def _refmount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refmount", *args], capture_output=True, text=True,
                          env=code_env(), timeout=90)


def _background_mount(refs: Path, mountpoint: Path, log: Path, *extra: str) -> subprocess.CompletedProcess:
    return _refmount("mount", str(refs), str(mountpoint), "--log-file", str(log), *extra)


def _kill_daemon(mountpoint: Path) -> None:
    pid = read_stats(str(mountpoint))["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), what="the daemon to die")

    def stale() -> bool:
        try:
            os.statvfs(mountpoint)
        except OSError as exc:
            return exc.errno == errno.ENOTCONN
        return False

    wait_for(stale, what="the mount to go stale")


def _working(mountpoint: Path, expected: bytes) -> bool:
    """ls works and a file reads the right bytes, right now (no waiting: the command claimed success)."""
    return sorted(os.listdir(mountpoint)) == [".zgroup", "a"] and (mountpoint / "a" / "b").read_bytes() == expected


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_background_mount_over_a_stale_mountpoint_never_reports_success_with_a_dead_mount(tmp_path, force):
    refs, expected = _refs(tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "daemon.log"
    try:
        first = _background_mount(refs, mountpoint, log)
        assert first.returncode == 0, first.stderr
        assert _working(mountpoint, expected)
        _kill_daemon(mountpoint)
        again = _background_mount(refs, mountpoint, log, *(["--force"] if force else []))
        if again.returncode == 0:
            assert _working(mountpoint, expected), "exit 0 but the mount does not work"
        else:
            assert "stale mount" in again.stderr, again.stderr
        assert force == (again.returncode == 0), f"{again.returncode}: {again.stderr}"
    finally:
        force_unmount(mountpoint)
        time.sleep(0.2)
        force_unmount(mountpoint)


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_mount_onto_an_active_mountpoint_prints_the_error_and_fails(tmp_path, foreground):
    refs, expected = _refs(tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "daemon.log"
    try:
        first = _background_mount(refs, mountpoint, log)
        assert first.returncode == 0, first.stderr
        pid = read_stats(str(mountpoint))["pid"]
        if foreground:  # logs to stderr
            second = _refmount("mount", str(refs), str(mountpoint), "-f")
        else:
            second = _background_mount(refs, mountpoint, tmp_path / "second.log")
        assert second.returncode != 0
        assert "already a mountpoint" in second.stderr, second.stderr
        assert read_stats(str(mountpoint))["pid"] == pid  # the first mount is untouched
        assert _working(mountpoint, expected)
    finally:
        force_unmount(mountpoint)
