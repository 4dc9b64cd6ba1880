"""systemd integration: the template unit verifies, and the notify protocol against a real socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess

import pytest

from refmount.config.file import load_config
from tests.support.mounting import mounted
from tests.support.opsfixtures import (
    REPO,
    biggest_range_key,
    expected_bytes,
    make_dataset,
    write_set,
)

UNIT = REPO / "systemd" / "refmount@.service"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    # As installed: ExecStart points at the refmount of this machine (the docs say to adjust it too).
    refmount = shutil.which("refmount")
    assert refmount, "refmount is not installed"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/refmount mount --foreground --config /etc/refmount/%i.toml" in text
    for name in ("refmount@.service", "refmount@era5.service"):
        (tmp_path / name).write_text(text.replace("/usr/local/bin/refmount", refmount))
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr  # verify only warns about unknown keys


def test_unit_settings_operators_rely_on():
    lines = {line.strip() for line in UNIT.read_text().splitlines() if line.strip() and not line.startswith("#")}
    for expected in ("Type=notify", "Restart=on-failure", "After=network-online.target",
                     "Wants=network-online.target", "EnvironmentFile=-/etc/refmount/%i.env",
                     "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM"):
        assert expected in lines
    # A private mount namespace would hide the mount from everybody else.
    assert not any(line.startswith(("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts")) for line in lines)
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert "secret" not in exec_start.lower() and "key" not in exec_start.lower()


def test_example_config_is_valid_and_example_env_holds_only_assignments():
    config = load_config(str(REPO / "systemd" / "era5.toml"))
    assert config.source and config.mountpoint
    assert config.values["cache_size"] == 4 << 30
    for line in (REPO / "systemd" / "era5.env").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or "=" in line


@pytest.mark.fuse
def test_notify_ready_after_the_mount_answers_stopping_on_sigterm(tmp_path):
    _, refs = make_dataset(tmp_path / "data")
    source = write_set(tmp_path / "era5.json", refs)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(30)
        mountpoint = tmp_path / "mnt"
        with mounted(source, mountpoint, env={"NOTIFY_SOCKET": address}) as mount:
            first = listener.recv(4096).decode()
            assert first.splitlines()[0] == "READY=1", first
            # READY is sent by a thread that has seen the mountpoint answer a stat through FUSE.
            assert os.path.ismount(mountpoint)
            key = biggest_range_key(refs)
            assert (mountpoint / key).read_bytes() == expected_bytes(refs, key)
            mount.process.send_signal(signal.SIGHUP)
            reloading = listener.recv(4096).decode()
            assert reloading.startswith("RELOADING=1"), reloading
            assert listener.recv(4096).decode().startswith("READY=1")
            mount.process.send_signal(signal.SIGTERM)
            stopping = listener.recv(4096).decode()
            assert stopping.startswith("STOPPING=1"), stopping
            assert mount.process.wait(timeout=20) == 0, mount.log()
            assert not os.path.ismount(mountpoint)
