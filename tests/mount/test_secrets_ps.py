"""Credentials given as options never show in ``ps``: a real mount on real S3, foreground and background.

``/proc/PID/cmdline`` is readable by every user. These tests pass the S3
secret only as ``-o s3.secret=...`` (nothing in the AWS environment), read
through the mount (so the secret did reach the store), and check that no
refmount process carries the secret in its command line, nor in the log or
``refmount stats``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refmount.cli.secretargs import SECRET_ENV, split_argv
from tests.support.mounting import answers, force_unmount, mounted
from tests.support.opsfixtures import code_env

pytestmark = pytest.mark.fuse

_NO_AWS_ENV = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}


def refmount_command_lines() -> dict[int, bytes]:
    """The command line of every running process that mentions refmount, by PID."""
    found: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"refmount" in cmdline:
            found[int(entry.name)] = cmdline
    return found


def stats_of(mountpoint: Path) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-m", "refmount", "stats", "--json", str(mountpoint)],
                            capture_output=True, text=True, env=code_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    text = subprocess.run([sys.executable, "-m", "refmount", "stats", str(mountpoint)],
                          capture_output=True, text=True, env=code_env(), timeout=30).stdout
    return json.loads(result.stdout), result.stdout + text


@pytest.fixture
def s3_set(local_s3, s3_bucket, tmp_path):
    """A local reference set pointing into a fresh bucket, and the bytes of its one key."""
    data = os.urandom(300_000)
    local_s3.put(f"s3://{s3_bucket}/obj.bin", data)
    refs = {"version": 1, "refs": {"chunk": [f"s3://{s3_bucket}/obj.bin", 1000, 200_000]}}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return tmp_path / "refs.json", data[1000:201_000]


def assert_secret_nowhere_public(secret: str, pid: int, mountpoint: Path, log: str) -> None:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert str(mountpoint).encode() in cmdline, cmdline  # it is the daemon of this mount
    for other, line in refmount_command_lines().items():
        assert secret.encode() not in line, f"process {other} shows the secret: {line!r}"
    figures, stats_text = stats_of(mountpoint)
    assert figures["pid"] == pid
    assert secret not in stats_text
    assert secret not in log


def test_foreground_daemon_keeps_the_secret_out_of_its_command_line(local_s3, s3_set, tmp_path):
    refs, expected = s3_set
    secret = local_s3.secret_key
    options = ["-o", f"endpoint_url={local_s3.endpoint_url},s3.key={local_s3.access_key},s3.secret={secret}"]
    with mounted(refs, tmp_path / "mnt", options, env=_NO_AWS_ENV) as mount:
        assert (mount.path / "chunk").read_bytes() == expected  # the secret reached the store
        # The daemon re-executed itself in place: same PID, so systemd Type=notify still tracks it.
        assert_secret_nowhere_public(secret, mount.process.pid, mount.path, mount.log())
        assert f"{SECRET_ENV}" not in mount.log()


def mount_in_background(helper_args: list[str], mountpoint: Path, env: dict[str, str], secret: str,
                        expected: bytes, log_file: Path) -> None:
    """Mount with ``mount.refmount HELPER_ARGS`` (as fstab does), read, check every public place, unmount."""
    mountpoint.mkdir()
    try:
        started = subprocess.run([sys.executable, "-m", "refmount.cli.mount_helper", *helper_args], capture_output=True,
                                 text=True, env=env, timeout=90)
        assert started.returncode == 0, started.stderr
        assert answers(mountpoint)
        assert (mountpoint / "chunk").read_bytes() == expected  # the credentials reached the store
        figures, _ = stats_of(mountpoint)
        assert_secret_nowhere_public(secret, int(figures["pid"]), mountpoint, log_file.read_text())
    finally:
        subprocess.run([sys.executable, "-m", "refmount", "umount", str(mountpoint)], capture_output=True,
                       env=code_env(), timeout=30)
        deadline = time.monotonic() + 15
        while os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.ismount(mountpoint):
            force_unmount(mountpoint)
    assert secret not in log_file.read_text()


def test_background_mount_through_the_mount_helper_hands_secrets_over_in_the_environment(
    local_s3, s3_set, tmp_path
):
    """``mount.refmount`` (what fstab runs) starts a detached daemon: its argv carries no secret either.

    The access key comes from an inherited ``REFMOUNT_SECRET_OPTIONS`` and the secret from ``-o``: both reach S3.
    """
    refs, expected = s3_set
    log_file = tmp_path / "daemon.log"
    env = {**code_env(), **_NO_AWS_ENV, SECRET_ENV: f"s3.key={local_s3.access_key}"}
    options = f"rw,endpoint_url={local_s3.endpoint_url},s3.secret={local_s3.secret_key},log_file={log_file}"
    mount_in_background([str(refs), str(tmp_path / "mnt"), "-o", options + ",log_level=debug"], tmp_path / "mnt",
                        env, local_s3.secret_key, expected, log_file)


def test_fstab_line_without_secrets_takes_them_from_a_private_config_file(local_s3, s3_set, tmp_path):
    """``config=FILE`` plays the part of cifs' ``credentials=``: a 0600 TOML file holds the keys."""
    refs, expected = s3_set
    log_file = tmp_path / "daemon.log"
    config = tmp_path / "era5.toml"
    config.write_text(f'source = "{refs}"\nendpoint_url = "{local_s3.endpoint_url}"\nlog_level = "debug"\n'
                      f'[storage_options.s3]\nkey = "{local_s3.access_key}"\nsecret = "{local_s3.secret_key}"\n')
    config.chmod(0o600)
    env = {**code_env(), **_NO_AWS_ENV}
    mount_in_background(["none", str(tmp_path / "mnt"), "-o", f"ro,_netdev,config={config},log_file={log_file}"],
                        tmp_path / "mnt", env, local_s3.secret_key, expected, log_file)
    assert "readable by other users" not in log_file.read_text()


def test_split_argv_moves_only_credential_options():
    argv = ["mount", "s3://b/r.json", "/mnt", "-o", "cache_size=1G,s3.key=AK,s3.requester_pays=true",
            "-os3.secret=SK,gcs.token=TK", "--timeout", "5", "-o", "az.account_key=AZ"]
    cleaned, secrets = split_argv(argv)
    assert cleaned == ["mount", "s3://b/r.json", "/mnt", "-o", "cache_size=1G,s3.requester_pays=true",
                       "--timeout", "5"]
    assert secrets == "s3.key=AK,s3.secret=SK,gcs.token=TK,az.account_key=AZ"
    assert split_argv(["mount", "a", "b", "-o", "ro"]) == (["mount", "a", "b", "-o", "ro"], "")
