"""Processes the speed benchmark starts and always stops: proxy, mounts, RSS sampling, cache drops."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from refmount.errors import ConfigError
from refmount.mount.mountpoint import DaemonExited, MountTimedOut, wait_until_answers
from refmount.mount.mountpoint import unmount as unmount_mountpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class MountFailed(RuntimeError):
    """A peer (or refmount) did not come up; the reason is recorded, the run goes on."""


class ProxyProcess:
    """The counting S3 proxy in a child process (see proxy_proc.py)."""

    def __init__(self, upstream: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "proxy_proc.py"), upstream],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline()

    def reset(self) -> None:
        self._ask("reset")

    def counts(self) -> dict[str, int]:
        return json.loads(self._ask("counts"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RssSampler:
    """Peak resident memory of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        try:
            proc = psutil.Process(self.pid)
            return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return 0

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process (and its children) has used so far; None when it is gone."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        return times.user + times.system + times.children_user + times.children_system
    except psutil.Error:
        return None


def drop_page_cache() -> None:
    """Empty the kernel page cache so 'cold' means cold (needs root; errors are ignored otherwise)."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def force_unmount(path: Path) -> None:
    """Detach whatever is mounted at ``path`` (lazily, so a busy or dead peer cannot block the run)."""
    with contextlib.suppress(ConfigError):
        unmount_mountpoint(path, lazy=True)


@contextlib.contextmanager
def foreground_mount(
    command: Sequence[str], mountpoint: Path, *, env: dict[str, str] | None = None,
    probe: str | None = None, timeout: float = 60.0, log_name: str = "mount",
) -> Iterator[subprocess.Popen]:
    """Run a FUSE daemon in the foreground, wait until ``mountpoint/probe`` answers, always unmount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_path = mountpoint.parent / f"{mountpoint.name}.{log_name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        try:
            wait_until_answers(mountpoint, timeout, process=proc, probe=probe)
        except DaemonExited:
            raise MountFailed(f"exited with status {proc.returncode}: {_tail(log_path)}") from None
        except MountTimedOut:
            raise MountFailed(f"not answering after {timeout:.0f} s: {_tail(log_path)}") from None
        yield proc
    finally:
        force_unmount(mountpoint)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()


def rclone_command(bucket: str, mountpoint: Path, endpoint_url: str, access_key: str,
                   secret_key: str) -> tuple[list[str], dict[str, str]]:
    """``rclone mount`` of ``bucket`` read-only with its VFS cache off, and the environment that configures it.

    The remote is configured through ``RCLONE_CONFIG_BENCH_*`` so no config file (and no secret in argv) is needed.
    """
    env = clean_env({
        "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint_url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": secret_key,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1", "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }, drop=("AWS_CA_BUNDLE",))  # rclone refuses to start while AWS_CA_BUNDLE is set
    command = ["rclone", "mount", f"bench:{bucket}", str(mountpoint), "--read-only", "--vfs-cache-mode", "off",
               "--config", "/dev/null"]
    return command, env


def s3fs_command(bucket: str, mountpoint: Path, endpoint_url: str, access_key: str, secret_key: str,
                 passwd: Path) -> list[str]:
    """``s3fs`` (s3fs-fuse) mounting ``bucket`` read-only in the foreground; the keys go to ``passwd`` (mode 600)."""
    passwd.write_text(f"{access_key}:{secret_key}\n")
    passwd.chmod(0o600)
    return ["s3fs", bucket, str(mountpoint), "-f", "-o",
            f"url={endpoint_url},use_path_request_style,passwd_file={passwd},ro,endpoint=us-east-1"]


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return "(no log)"


def clean_env(extra: dict[str, str], drop: Sequence[str] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
