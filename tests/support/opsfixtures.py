"""Shared pieces of the operations tests: a small dataset, reference sets, the helper install."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from refmount.cli.fstab import install_helpers
from refmount.errors import ConfigError
from refmount.mount.mountpoint import answers as answers  # the operations tests ask it of their mounts
from refmount.mount.mountpoint import is_mounted, unmount
from tests.support.datasets import kerchunk_references, write_hdf5

REPO = Path(__file__).resolve().parents[2]


def make_dataset(base: Path) -> tuple[Path, dict]:
    """An HDF5 file and its kerchunk references (paths into the local file)."""
    base.mkdir(parents=True, exist_ok=True)
    h5 = base / "data.h5"
    write_hdf5(h5)
    return h5, kerchunk_references(h5, str(h5))


def write_set(path: Path, refs: dict) -> Path:
    path.write_text(json.dumps(refs))
    return path


def biggest_range_key(refs: dict) -> str:
    return max((k for k, v in refs["refs"].items() if isinstance(v, list) and len(v) == 3),
               key=lambda k: refs["refs"][k][2])


def expected_bytes(refs: dict, key: str) -> bytes:
    value = refs["refs"][key]
    if isinstance(value, list):
        url, offset, length = value
        with open(url, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def code_env() -> dict[str, str]:
    """Environment that makes every refmount process (also those mount(8) starts) run this checkout."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def ensure_helpers() -> None:
    """Install /sbin/mount.refmount and /sbin/mount.fuse.refmount (idempotent: rewrites only on change).

    The script runs this interpreter with ``-m refmount.cli.mount_helper``; the tests pass PYTHONPATH (which
    mount(8) keeps, unlike PATH and HOME), so the helper runs the code under test.
    """
    install_helpers("/sbin")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def cleanup_mount(path: Path) -> None:
    """Detach whatever is left at ``path``, also a stale mount (tests unmount themselves; this is for failures)."""
    if not is_mounted(path):
        return
    for lazy in (False, True):
        try:
            unmount(path, lazy=lazy)
            return
        except ConfigError:
            continue


def which(tool: str) -> str:
    found = shutil.which(tool)
    assert found, f"{tool} is not installed"
    return found
