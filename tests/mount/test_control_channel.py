"""The control channel against another local user: a squatted name, an impostor server, a flood of connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from refmount.mount.control import control_address, read_stats
from refmount.mount.runfile import SYSTEM_RUN_DIR, mount_digest, read_record
from tests.support.mounting import mounted
from tests.support.opsfixtures import code_env, make_dataset, pid_alive, write_set

pytestmark = pytest.mark.fuse

NOBODY = 65534
FAKE_READS = 424242


def _as_nobody_child(body) -> tuple[int, int]:
    """Fork a child that becomes ``nobody`` and runs ``body(ready_fd)``; returns (pid, read end of ready pipe)."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            body(writer)
        finally:
            os._exit(0)
    os.close(writer)
    return child, reader


def _wait_ready(reader: int) -> None:
    assert os.read(reader, 1) == b"r", "the nobody child did not get ready"


def _stop(child: int) -> None:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)


@contextmanager
def _impostor(address: str, victim_pid: int) -> Iterator[None]:
    """As ``nobody``, hold the channel's name and answer every request with fake figures naming ``victim_pid``."""

    def serve(ready: int) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(16)
        os.write(ready, b"r")
        while True:
            connection, _ = server.accept()
            fake = {"pid": victim_pid, "reads": FAKE_READS, "generation": 7, "ok": True, "message": "fake"}
            with connection, suppress(OSError):  # e.g. a peer that only probed who holds the name
                connection.recv(64)
                connection.sendall(json.dumps(fake).encode())

    child, reader = _as_nobody_child(serve)
    try:
        _wait_ready(reader)
        yield
    finally:
        os.close(reader)
        _stop(child)


@contextmanager
def _victim() -> Iterator[subprocess.Popen]:
    """A root process that a SIGHUP would end."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _refmount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refmount", *args], capture_output=True, text=True,
                          env=code_env(), timeout=60)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    _, refs = make_dataset(tmp_path / "data")
    tmp_path.chmod(0o755)
    return write_set(tmp_path / "era5.json", refs)


def test_a_squatted_channel_name_never_lets_an_impostor_answer_stats_or_reload(source, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with _victim() as victim, _impostor(control_address(str(mountpoint)), victim.pid):
        with mounted(source, mountpoint, ["-o", "allow_other"]) as mount:
            printed = _refmount("stats", str(mount.path))
            assert str(FAKE_READS) not in printed.stdout, printed
            reloaded = _refmount("reload", str(mount.path))
            time.sleep(0.3)
            assert pid_alive(victim.pid), "reload signalled a process named by the impostor"
            assert printed.returncode == 0, printed
            assert reloaded.returncode == 0 and reloaded.stdout.startswith("reloaded"), reloaded
            assert read_stats(str(mount.path))["pid"] == mount.process.pid  # the record leads to the daemon
            assert "already taken" in mount.log() and f"uid {NOBODY}" in mount.log()

            # Without the record (e.g. a user who cannot read it) the client falls back to the usual
            # name, meets the impostor and refuses it by its credentials.
            record = Path(SYSTEM_RUN_DIR) / f"{mount_digest(str(mount.path))}.json"
            saved = record.read_text()
            record.unlink()
            try:
                printed = _refmount("stats", str(mount.path))
                assert printed.returncode != 0 and str(FAKE_READS) not in printed.stdout
                assert "refusing the control channel" in printed.stderr and f"uid {NOBODY}" in printed.stderr
                reloaded = _refmount("reload", str(mount.path))
                assert reloaded.returncode != 0 and "refusing" in reloaded.stderr, reloaded
                time.sleep(0.3)
                assert pid_alive(victim.pid), "reload signalled a process named by the impostor"
            finally:
                record.write_text(saved)


def test_reload_is_a_request_answered_by_the_daemon(source, tmp_path):
    with mounted(source, tmp_path / "mnt") as mount:
        record = read_record(str(mount.path), 0)
        assert record is not None and record.pid == mount.process.pid
        done = _refmount("reload", str(mount.path))
        assert done.returncode == 0 and done.stdout.startswith("reloaded"), done
        assert read_stats(str(mount.path))["reloads"] == 1
    assert read_record(str(mount.path), 0) is None  # removed when the daemon stops


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("options", [[], ["-o", "allow_other"]], ids=["private", "allow_other"])
def test_hundreds_of_idle_connections_from_another_user_neither_grow_threads_nor_block_stats(source, tmp_path,
                                                                                            options):
    with mounted(source, tmp_path / "mnt", options) as mount:
        record = read_record(str(mount.path), 0)
        address = "\0" + record.address if record is not None else control_address(str(mount.path))

        def flood(ready: int) -> None:
            held = []
            for _ in range(300):
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.connect(address)
                held.append(connection)
            os.write(ready, b"r")
            time.sleep(600)

        child, reader = _as_nobody_child(flood)
        try:
            _wait_ready(reader)
            time.sleep(0.5)
            assert _threads(mount.process.pid) < 40
            started = time.monotonic()
            printed = _refmount("stats", str(mount.path))
            assert printed.returncode == 0, printed.stderr
            assert time.monotonic() - started < 8
            assert _threads(mount.process.pid) < 40
        finally:
            os.close(reader)
            _stop(child)
