"""Mounting from the system: mount(8) with -t fuse.refmount / -t refmount, fstab, umount, signals, xattrs.

These run the real mount(8), the real helpers and the real fuse3 mount.fuse, as root (as CI does).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refmount.mount.control import read_stats
from tests.support.mounting import mounted
from tests.support.opsfixtures import (
    answers,
    biggest_range_key,
    cleanup_mount,
    code_env,
    ensure_helpers,
    expected_bytes,
    make_dataset,
    pid_alive,
    wait_for,
    which,
    write_set,
)

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("ops-data")
    h5, refs = make_dataset(base)
    return write_set(base / "era5.json", refs), refs


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "era5"
    path.mkdir()
    yield path
    cleanup_mount(path)


def _check_and_umount(path: Path, refs: dict, log: Path) -> None:
    key = biggest_range_key(refs)
    assert (path / key).read_bytes() == expected_bytes(refs, key), log.read_text()
    pid = read_stats(str(path))["pid"]
    result = subprocess.run(["umount", str(path)], capture_output=True, text=True, env=code_env())
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(path)
    wait_for(lambda: not pid_alive(pid), what="the daemon to exit after umount")
    assert "unmounted " + str(path) in log.read_text()


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=code_env(), timeout=90, **kwargs)
    assert result.returncode == 0, f"{command} failed ({result.returncode}): {result.stdout}{result.stderr}"
    return result


def test_mount_t_fuse_refmount_with_fstab_options_then_umount(dataset, mountpoint, tmp_path):
    source, refs = dataset
    ensure_helpers()
    log = tmp_path / "daemon.log"
    _run(["mount", "-t", "fuse.refmount", str(source), str(mountpoint), "-o",
          f"ro,_netdev,allow_other,nofail,cache_size=64M,endpoint_url=http://rgw:8080,log_file={log}"])
    assert answers(mountpoint)
    line = next(line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {mountpoint} " in line)
    assert " fuse.refmount " in line and " ro," in line.split(" - ")[0] + " ro,"
    assert "allow_other" in line
    _check_and_umount(mountpoint, refs, log)


def test_fstab_entry_mounted_by_mountpoint_alone(dataset, mountpoint, tmp_path):
    source, refs = dataset
    ensure_helpers()
    log = tmp_path / "daemon.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a test fstab\n"
        f"{source} {mountpoint} fuse.refmount ro,noauto,_netdev,allow_other,cache_size=32M,"
        f"x-systemd.requires=network-online.target,log_file={log} 0 0\n"
    )
    _run(["mount", "-T", str(fstab), str(mountpoint)])
    _check_and_umount(mountpoint, refs, log)


def test_fstab_entry_with_a_config_file(dataset, mountpoint, tmp_path):
    source, refs = dataset
    ensure_helpers()
    log = tmp_path / "daemon.log"
    config = tmp_path / "era5.toml"
    config.write_text(f'source = "{source}"\nmountpoint = "/not/used"\ncache_size = "16M"\nlog_file = "{log}"\n')
    fstab = tmp_path / "fstab"
    fstab.write_text(f"none {mountpoint} fuse.refmount ro,config={config} 0 0\n")
    _run(["mount", "-T", str(fstab), str(mountpoint)])
    assert read_stats(str(mountpoint))["cache_capacity"] == 16 << 20
    _check_and_umount(mountpoint, refs, log)


def test_mount_t_refmount_uses_mount_refmount(dataset, mountpoint, tmp_path):
    source, refs = dataset
    ensure_helpers()
    log = tmp_path / "daemon.log"
    _run(["mount", "-t", "refmount", str(source), str(mountpoint), "-o", f"ro,log_file={log}"])
    _check_and_umount(mountpoint, refs, log)


def test_fuse3_mount_fuse_runs_refmount_source_mountpoint_o(dataset, mountpoint, tmp_path):
    """Without /sbin/mount.fuse.refmount, mount.fuse runs `refmount SOURCE MOUNTPOINT -o OPTS` via the PATH."""
    source, refs = dataset
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "refmount"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m refmount "$@"\n')
    wrapper.chmod(0o755)
    log = tmp_path / "daemon.log"
    env = {**code_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [which("mount.fuse3"), str(source), str(mountpoint), "-t", "fuse.refmount", "-o",
         f"ro,_netdev,nofail,allow_other,log_file={log}"],
        capture_output=True, text=True, env=env, timeout=90,
    )
    assert result.returncode == 0, result.stderr
    _check_and_umount(mountpoint, refs, log)


def test_mount_helper_reports_failures_and_stays_read_only(dataset, mountpoint, tmp_path):
    source, refs = dataset
    ensure_helpers()
    result = subprocess.run(["mount.refmount", str(source)], capture_output=True, text=True, env=code_env())
    assert result.returncode == 1 and "usage" in result.stderr
    result = subprocess.run(["mount", "-t", "fuse.refmount", str(tmp_path / "missing.json"), str(mountpoint),
                             "-o", f"log_file={tmp_path / 'log'}"], capture_output=True, text=True, env=code_env())
    assert result.returncode != 0
    assert "missing.json" in result.stderr
    assert not os.path.ismount(mountpoint)
    log = tmp_path / "daemon.log"
    _run(["mount", "-t", "fuse.refmount", "-w", str(source), str(mountpoint), "-o", f"rw,log_file={log}"])
    with pytest.raises(OSError) as failure:
        (mountpoint / "new").write_bytes(b"x")
    assert failure.value.errno == 30  # EROFS
    _check_and_umount(mountpoint, refs, log)


def test_install_helpers_is_idempotent(tmp_path):
    from refmount.cli.fstab import install_helpers

    first = install_helpers(str(tmp_path))
    second = install_helpers(str(tmp_path))
    assert any(line.startswith("wrote") for line in first)
    assert all("up to date" in line for line in second)
    assert os.readlink(tmp_path / "mount.fuse.refmount") == "mount.refmount"
    assert os.access(tmp_path / "mount.refmount", os.X_OK)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_unmount_cleanly_and_exit_0(dataset, tmp_path, signum):
    source, refs = dataset
    with mounted(source, tmp_path / "mnt") as mount:
        key = biggest_range_key(refs)
        assert (mount.path / key).read_bytes() == expected_bytes(refs, key)
        mount.process.send_signal(signum)
        assert mount.process.wait(timeout=20) == 0, mount.log()
        assert not os.path.ismount(mount.path)
        assert "unmounted " + str(mount.path) in mount.log()


def test_usr1_dumps_every_thread_stack_and_keeps_serving(dataset, tmp_path):
    source, refs = dataset
    with mounted(source, tmp_path / "mnt") as mount:
        mount.process.send_signal(signal.SIGUSR1)
        wait_for(lambda: "most recent call first" in mount.log(), what="a stack dump")
        assert "refmount-signals" in mount.log() or "_watch" in mount.log()
        key = biggest_range_key(refs)
        assert (mount.path / key).read_bytes() == expected_bytes(refs, key)
        assert mount.process.poll() is None


def test_getfattr_shows_where_bytes_come_from(dataset, tmp_path):
    source, refs = dataset
    key = biggest_range_key(refs)
    url, offset, length = refs["refs"][key]
    with mounted(source, tmp_path / "mnt", ["-o", "xattrs"]) as mount:
        output = subprocess.run(["getfattr", "-d", str(mount.path / key)], capture_output=True, text=True,
                                check=True).stdout
        assert f'user.refmount.url="{url}"' in output
        assert f'user.refmount.offset="{offset}"' in output
        assert f'user.refmount.length="{length}"' in output
        root = subprocess.run(["getfattr", "-d", str(mount.path)], capture_output=True, text=True).stdout
        assert "user.refmount" not in root  # directories carry no attributes


def test_without_xattrs_the_kernel_stops_asking_and_stats_still_answer(dataset, tmp_path):
    """By default xattrs are off: getfattr says 'not supported' and ls -l costs no upcall per file."""
    source, refs = dataset
    key = biggest_range_key(refs)
    with mounted(source, tmp_path / "mnt") as mount:
        with pytest.raises(OSError) as refused:
            os.getxattr(mount.path / key, "user.refmount.url")
        assert refused.value.errno == errno.EOPNOTSUPP
        listed = subprocess.run(["ls", "-lR", str(mount.path)], capture_output=True, text=True, check=True).stdout
        assert key.rsplit("/", 1)[-1] in listed
        assert read_stats(str(mount.path))["pid"] == mount.process.pid
        assert (mount.path / key).read_bytes() == expected_bytes(refs, key)
