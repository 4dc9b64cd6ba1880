"""Real FUSE mounts for tests: foreground daemon, bounded wait, diagnostics, guaranteed unmount."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from refmount.errors import ConfigError
from refmount.mount.mountpoint import DaemonExited, MountTimedOut, is_mounted, unmount, wait_until_answers
from refmount.mount.mountpoint import answers as answers  # the tests ask it of their mounts


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


def force_unmount(path: Path) -> None:
    """Unmount ``path`` whatever state its daemon is in (lazily: a busy or stale mount is detached too)."""
    with contextlib.suppress(ConfigError):
        unmount(path, lazy=True)


@contextlib.contextmanager
def mounted(
    source: str | os.PathLike,
    mountpoint: str | os.PathLike,
    options: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    prefix: Sequence[str] = (),
) -> Iterator[Mount]:
    """Mount ``source`` at ``mountpoint`` in the foreground; unmount on exit, also after failures.

    ``prefix`` runs the daemon under another command that then executes it, e.g.
    ``nsenter --net=...`` to start it in another network namespace.
    """
    path = Path(mountpoint)
    path.mkdir(parents=True, exist_ok=True)
    log_path = path.parent / f"{path.name}.log"
    command = [*prefix, sys.executable, "-m", "refmount", "mount", str(source), str(path), "-f", "--log-level", "debug", *options]
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    mount = Mount(path, process, log_path)
    try:
        try:
            wait_until_answers(path, timeout, process=process)
        except DaemonExited:
            raise AssertionError(f"refmount exited with {process.returncode} before mounting:\n{mount.log()}") from None
        except MountTimedOut:
            raise AssertionError(f"mount at {path} did not appear within {timeout} s:\n{mount.log()}") from None
        yield mount
    finally:
        if is_mounted(path):
            with contextlib.suppress(ConfigError):
                unmount(path)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if is_mounted(path):
            force_unmount(path)
        if process.returncode not in (0, None, -9):
            sys.stderr.write(f"refmount daemon exited with {process.returncode}; log:\n{mount.log()[-4000:]}\n")
