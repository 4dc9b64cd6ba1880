"""The mountpoint checks the daemon, the tests and the benchmarks share, on plain directories and processes."""

import subprocess
import sys
import time

import pytest

from refmount.errors import ConfigError
from refmount.mount.mountpoint import (
    DaemonExited,
    MountTimedOut,
    answers,
    check_mountpoint,
    is_mounted,
    is_stale,
    unmount,
    wait_until_answers,
)


def test_a_plain_directory_is_not_a_mount(tmp_path):
    assert not is_mounted(tmp_path)
    assert not is_stale(tmp_path)
    assert not answers(tmp_path)


def test_waiting_on_a_directory_that_never_becomes_a_mount_times_out(tmp_path):
    started = time.monotonic()
    with pytest.raises(MountTimedOut, match="did not answer within"):
        wait_until_answers(tmp_path, 0.3)
    assert time.monotonic() - started < 3


def test_a_daemon_that_exits_is_reported_at_once_with_its_status(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(DaemonExited) as failure:
        wait_until_answers(tmp_path, 30, process=process)
    assert failure.value.returncode == 3
    assert time.monotonic() - started < 10


def test_a_predicate_can_say_the_daemon_died(tmp_path):
    with pytest.raises(DaemonExited):
        wait_until_answers(tmp_path, 30, process=lambda: True)


def test_unmounting_what_is_not_mounted_names_each_tool(tmp_path):
    with pytest.raises(ConfigError, match="could not unmount") as failure:
        unmount(tmp_path)
    assert "fusermount" in str(failure.value)


def test_check_mountpoint_refuses_missing_files_and_non_empty_directories(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_mountpoint(str(tmp_path / "absent"), nonempty=False, force=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        check_mountpoint(str(tmp_path / "file"), nonempty=False, force=False)
    with pytest.raises(ConfigError, match="not empty"):
        check_mountpoint(str(tmp_path), nonempty=False, force=False)
    check_mountpoint(str(tmp_path), nonempty=True, force=False)
