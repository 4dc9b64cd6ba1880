"""Credentials never show in ``ps`` nor in ``/proc/PID/environ``: real mounts on real S3 and HTTP servers.

``/proc/PID/cmdline`` is readable by every user, ``/proc/PID/environ`` by
the owner and root (and shows the environment a process was started with,
whatever it removed since). These tests pass the S3 secret only as
``-o s3.secret=...``, in ``REFMOUNT_SECRET_OPTIONS`` or in the source URL
(nothing in the AWS environment), read through the mount (so the secret did
reach the store), and check that no refmount process carries a secret in
its command line or environment block, nor in the log or ``refmount stats``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from refmount.cli.secretargs import SECRET_ENV, clean_argv, is_secret_source, split_argv
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


def refmount_processes() -> dict[int, tuple[bytes, bytes]]:
    """``(cmdline, environ)`` of every running process that mentions refmount in its command line, by PID."""
    found: dict[int, tuple[bytes, bytes]] = {}
    for pid, cmdline in refmount_command_lines().items():
        try:
            found[pid] = (cmdline, Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            continue
    return found


def assert_no_process_shows(secrets: list[str]) -> None:
    for pid, (cmdline, environ) in refmount_processes().items():
        for secret in secrets:
            assert secret.encode() not in cmdline, f"process {pid} shows a secret in its command line: {cmdline!r}"
            assert secret.encode() not in environ, f"process {pid} shows a secret in its environment block"


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
    assert_no_process_shows([secret])
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


def test_secrets_given_in_scans_storage_option_spelling_stay_out_of_ps(local_s3, s3_set, tmp_path):
    refs, expected = s3_set
    secret = local_s3.secret_key
    options = ["--endpoint-url", local_s3.endpoint_url, "--storage-option", f"s3.key={local_s3.access_key}",
               f"--storage-option=s3.secret={secret}"]
    with mounted(refs, tmp_path / "mnt", options, env=_NO_AWS_ENV) as mount:
        assert (mount.path / "chunk").read_bytes() == expected  # the secret reached the store
        assert_secret_nowhere_public(secret, mount.process.pid, mount.path, mount.log())


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


def _unmount(mountpoint: Path) -> None:
    subprocess.run([sys.executable, "-m", "refmount", "umount", str(mountpoint)], capture_output=True,
                   env=code_env(), timeout=30)
    deadline = time.monotonic() + 15
    while os.path.ismount(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.ismount(mountpoint):
        force_unmount(mountpoint)


def watch_background_mount(command: list[str], env: dict[str, str], mountpoint: Path,
                           secrets: list[str]) -> subprocess.CompletedProcess:
    """Run a background mount command, reading every refmount process's cmdline and environ while it starts.

    The launcher's first moments (until it re-executes itself) are the user's own command line; from the
    moment the daemon exists on, neither the waiting launcher nor the daemon may show any secret.
    """
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        seen = _watch_launcher(launcher, mountpoint, secrets)
    finally:
        out, err = launcher.communicate(timeout=90)  # also after a failed check: the caller unmounts what it mounted
    assert seen, "the daemon was never seen while the launcher waited"
    return subprocess.CompletedProcess(command, launcher.returncode, out.decode(), err.decode())


def _watch_launcher(launcher: subprocess.Popen, mountpoint: Path, secrets: list[str]) -> bool:
    """Check every snapshot taken while ``launcher`` runs; whether a daemon was seen while it still waited."""
    daemon_seen_while_waiting = False
    deadline = time.monotonic() + 90
    while launcher.poll() is None and time.monotonic() < deadline:
        snapshot = refmount_processes()
        daemons = [pid for pid, (cmdline, _) in snapshot.items()
                   if str(mountpoint).encode() in cmdline and b"\0--foreground\0" in cmdline]
        if daemons:
            daemon_seen_while_waiting = daemon_seen_while_waiting or launcher.pid in snapshot
            for pid, (cmdline, environ) in snapshot.items():
                for secret in secrets:
                    assert secret.encode() not in cmdline, f"process {pid} (launcher {launcher.pid}) shows a " \
                        f"secret in its command line while the mount starts (daemon {daemons}): {cmdline!r}"
                    assert secret.encode() not in environ, f"process {pid} (launcher {launcher.pid}) shows a " \
                        "secret in its environment block while the mount starts"
        time.sleep(0.005)
    return daemon_seen_while_waiting


def test_background_launcher_and_daemon_show_no_secret_in_cmdline_or_environ(local_s3, s3_set, tmp_path):
    """``refmount mount`` (background): -o secrets and REFMOUNT_SECRET_OPTIONS never reach a waiting launcher's or
    a daemon's command line or environment block; the credentials still reach S3."""
    refs, expected = s3_set
    mountpoint, log_file = tmp_path / "mnt", tmp_path / "daemon.log"
    mountpoint.mkdir()
    env = {**code_env(), **_NO_AWS_ENV, SECRET_ENV: f"s3.secret={local_s3.secret_key}"}
    command = [sys.executable, "-m", "refmount", "mount", str(refs), str(mountpoint), "--log-level", "debug",
               "-o", f"endpoint_url={local_s3.endpoint_url},s3.key={local_s3.access_key},"
               f"s3.secret={local_s3.secret_key},log_file={log_file}"]
    try:
        started = watch_background_mount(command, env, mountpoint, [local_s3.secret_key])
        assert started.returncode == 0, started.stderr
        assert (mountpoint / "chunk").read_bytes() == expected
        figures, _ = stats_of(mountpoint)
        assert_secret_nowhere_public(local_s3.secret_key, int(figures["pid"]), mountpoint, log_file.read_text())
    finally:
        _unmount(mountpoint)
    assert local_s3.secret_key not in log_file.read_text()


@pytest.fixture
def presigned_set(local_s3, s3_bucket, s3_set):
    """The reference set of ``s3_set`` on S3, as a presigned HTTP URL (the signature is in the query string)."""
    refs, expected = s3_set
    local_s3.put(f"s3://{s3_bucket}/refs.json", refs.read_bytes())
    url = local_s3._boto().generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "refs.json"},
                                                  ExpiresIn=900)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    signature = next(values[0] for name, values in query.items() if "signature" in name.lower())
    return url, signature, expected


def test_presigned_source_url_mounts_without_showing_its_signature(local_s3, presigned_set, tmp_path):
    """A query-string signature in SOURCE: the daemon gets the real URL handed over (S3 checks the signature)."""
    url, signature, expected = presigned_set
    secrets = [signature, local_s3.secret_key]
    options = ["-o", f"endpoint_url={local_s3.endpoint_url},s3.key={local_s3.access_key},s3.secret={local_s3.secret_key}"]
    with mounted(url, tmp_path / "mnt", options, env=_NO_AWS_ENV) as mount:
        assert (mount.path / "chunk").read_bytes() == expected, mount.log()
        assert_no_process_shows(secrets)
        assert signature not in mount.log()


def test_source_url_with_userinfo_mounts_in_the_background_without_showing_the_password(http_server, tmp_path):
    """``http://alice:PASSWORD@host/refs.json?token=...`` through ``mount.refmount``: neither shows anywhere."""
    data = os.urandom(20_000)
    http_server.put("obj.bin", data)
    refs = {"version": 1, "refs": {"chunk": [http_server.url_for("obj.bin"), 100, 5000]}}
    http_server.put("refs.json", json.dumps(refs).encode())
    password, token = "pw-" + os.urandom(8).hex(), "tk-" + os.urandom(8).hex()
    source = http_server.url_for("refs.json").replace("://", f"://alice:{password}@", 1) + f"?token={token}"
    mountpoint, log_file = tmp_path / "mnt", tmp_path / "daemon.log"
    mountpoint.mkdir()
    command = [sys.executable, "-m", "refmount.cli.mount_helper", source, str(mountpoint),
               "-o", f"ro,log_file={log_file},log_level=debug"]
    try:
        started = watch_background_mount(command, code_env(), mountpoint, [password, token])
        assert started.returncode == 0, started.stderr
        assert (mountpoint / "chunk").read_bytes() == data[100:5100]
        assert_no_process_shows([password, token])
        figures, stats_text = stats_of(mountpoint)
        assert password not in stats_text and token not in stats_text
    finally:
        _unmount(mountpoint)
    assert password not in log_file.read_text() and token not in log_file.read_text()


def test_clean_argv_redacts_a_credential_bearing_source():
    source = "https://alice:PW@host/x.json?X-Amz-Signature=SIG"
    assert is_secret_source(source) and not is_secret_source("s3://bucket/x.json")
    assert not is_secret_source("/data/what?.json")
    cleaned, secrets = clean_argv(["mount", source, "/mnt", "-o", "ro,s3.token=T"], source)
    assert cleaned == ["mount", "https://***@host/x.json", "/mnt", "-o", "ro"]
    assert secrets == "s3.token=T"
