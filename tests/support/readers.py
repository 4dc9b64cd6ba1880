"""Reading from a mount in a separate process, so a hang in the mount cannot hang the tests."""

from __future__ import annotations

import errno
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = r"""
import errno, os, sys
path, offset, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    fd = os.open(path, os.O_RDONLY)
    try:
        out, pos = [], offset
        while size < 0 or pos < offset + size:
            chunk = os.pread(fd, 1 << 20 if size < 0 else min(1 << 20, offset + size - pos), pos)
            if not chunk:
                break
            out.append(chunk)
            pos += len(chunk)
    finally:
        os.close(fd)
except OSError as exc:
    sys.stdout.write("ERR " + errno.errorcode.get(exc.errno, str(exc.errno)))
    sys.exit(0)
sys.stdout.buffer.write(b"OK  " + b"".join(out))
"""


@dataclass
class ReadResult:
    data: bytes | None
    error: str | None  # errno name, e.g. "EIO"

    @property
    def ok(self) -> bool:
        return self.error is None


def read_file(path: str | Path, *, offset: int = 0, size: int = -1, timeout: float = 60.0) -> ReadResult:
    """Read ``path`` in a child process; a reader still blocked after ``timeout`` fails the test."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(path), str(offset), str(size)], capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"reading {path} did not return within {timeout} s (a hang)") from None
    if done.stdout.startswith(b"ERR "):
        return ReadResult(None, done.stdout[4:].decode())
    assert done.stdout.startswith(b"OK  "), done.stderr.decode(errors="replace")
    return ReadResult(done.stdout[4:], None)


def errno_name(code: int) -> str:
    return errno.errorcode[code]
