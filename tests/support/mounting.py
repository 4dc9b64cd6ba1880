"""Real FUSE mounts for tests: foreground daemon, bounded wait, diagnostics, guaranteed unmount."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Mount:
    """A running ``refmount mount -f`` and where it is mounted."""

    path: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def answers(path: Path) -> bool:
    """Whether ``path`` is a mount that answers (a dead daemon's mount is there but does not)."""
    try:
        return os.path.ismount(path) and os.stat(path) is not None
    except OSError:
        return False


def force_unmount(path: Path) -> None:
    """Unmount ``path`` whatever state its daemon is in."""
    for command in (["fusermount3", "-u", "-z", str(path)], ["fusermount", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        try:
            if subprocess.run(command, capture_output=True, timeout=10).returncode == 0:
                return
        except (OSError, subprocess.TimeoutExpired):
            continue


@contextlib.contextmanager
def mounted(
    source: str | os.PathLike,
    mountpoint: str | os.PathLike,
    options: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Mount]:
    """Mount ``source`` at ``mountpoint`` in the foreground; unmount on exit, also after failures."""
    path = Path(mountpoint)
    path.mkdir(parents=True, exist_ok=True)
    log_path = path.parent / f"{path.name}.log"
    command = [sys.executable, "-m", "refmount", "mount", str(source), str(path), "-f", "--log-level", "debug", *options]
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    mount = Mount(path, process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not answers(path):
            if process.poll() is not None:
                raise AssertionError(f"refmount exited with {process.returncode} before mounting:\n{mount.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mount at {path} did not appear within {timeout} s:\n{mount.log()}")
            time.sleep(0.05)
        yield mount
    finally:
        if answers(path) or os.path.ismount(path):
            subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, timeout=20)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if os.path.ismount(path):
            force_unmount(path)
        if process.returncode not in (0, None, -9):
            sys.stderr.write(f"refmount daemon exited with {process.returncode}; log:\n{mount.log()[-4000:]}\n")
