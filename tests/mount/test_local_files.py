"""Through a real mount: local files are opened once, below the allowed prefix, and private files stay private.

The daemon reads as root. A user who owns a directory below an allowed
prefix can swap a symbolic link between a harmless file and a root-only one
while reads run; with ``allow_other``, every user would see what the daemon
may read. These tests run the swap in a thread against a real mount, and
read as ``nobody`` from a forked child.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse

NOBODY = 65534
LINKS = 300


def test_swapping_a_symbolic_link_during_reads_never_reaches_a_file_outside_the_prefix(tmp_path):
    allowed = tmp_path / "data"
    allowed.mkdir()
    decoy, secret = allowed / "decoy.bin", tmp_path / "shadow"
    decoy.write_bytes(b"d" * 64)
    secret.write_bytes(b"S" * 64)
    secret.chmod(0o600)
    os.utime(secret, ns=(decoy.stat().st_mtime_ns,) * 2)  # same size and mtime: no staleness check can tell
    links = [allowed / f"link{i}.bin" for i in range(LINKS)]
    for link in links:
        link.symlink_to(decoy)
    refs = {f"k{i}": [str(link), 0, 64] for i, link in enumerate(links)}
    refs["decoy"] = [str(decoy), 0, 64]
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    stop, reading = threading.Event(), [0]

    def swap() -> None:  # flips the link being read, as fast as it can
        target = 0
        while not stop.is_set():
            target ^= 1
            link = links[reading[0]]
            spare = link.with_suffix(".new")
            spare.symlink_to(secret if target else decoy)
            os.replace(spare, link)

    with mounted(tmp_path / "refs.json", tmp_path / "mnt", ["--allow", f"{allowed}/", "--retries", "1"]) as m:
        assert read_file(m.path / "decoy", timeout=30).data == b"d" * 64
        swapper = threading.Thread(target=swap, daemon=True)
        swapper.start()
        seen: list[bytes | str] = []
        try:
            for i in range(LINKS):
                reading[0] = i
                try:
                    seen.append((m.path / f"k{i}").read_bytes())
                except OSError as exc:
                    seen.append(errno.errorcode[exc.errno])
        finally:
            stop.set()
            swapper.join(timeout=10)
        log = m.log()
    assert b"S" * 64 not in seen, f"{seen.count(b'S' * 64)} of {LINKS} reads returned the secret"
    assert set(seen) == {"EACCES"}, set(seen)  # a link below an allowed prefix is never followed
    assert "symbolic link below the allowed directory" in log


def _read_as(uid: int, path: str) -> bytes | str:
    """The bytes ``uid`` reads at ``path`` (forked child, setuid), or the errno name it gets."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with open(path, "rb") as file:
                answer = b"OK " + file.read()
        except OSError as exc:
            answer = b"ERR " + errno.errorcode.get(exc.errno or 0, "?").encode()
        except BaseException as exc:  # noqa: BLE001 - report whatever happened to the parent
            answer = b"ERR " + repr(exc).encode()
        os.write(writer, answer)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    return answer[3:] if answer.startswith(b"OK ") else answer[4:].decode()


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's own temporary directories are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="refmount-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_with_allow_other_a_file_only_root_may_read_is_refused_unless_the_operator_allows_it(tmp_path, open_dir):
    private, public = tmp_path / "private.bin", tmp_path / "public.bin"
    private.write_bytes(b"root only " * 5)
    private.chmod(0o600)
    public.write_bytes(b"for everyone " * 5)
    public.chmod(0o644)
    refs = {"private": [str(private), 0, 50], "public": [str(public), 0, 65]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    with mounted(tmp_path / "refs.json", open_dir / "shared", ["-o", "allow_other"]) as m:
        assert _read_as(NOBODY, str(m.path / "public")) == b"for everyone " * 5
        assert _read_as(NOBODY, str(m.path / "private")) == "EACCES"
        assert read_file(m.path / "private", timeout=30).error == "EACCES"  # the daemon refuses, not the kernel
        log = m.log()
    assert log.count(f"refused local file {private}") == 1, log[-3000:]
    assert "allow_private_files" in log
    with mounted(tmp_path / "refs.json", open_dir / "opted-in", ["-o", "allow_other,allow_private_files"]) as m:
        assert read_file(m.path / "private", timeout=30).data == b"root only " * 5
    with mounted(tmp_path / "refs.json", tmp_path / "own") as m:  # not shared: the mounting user's own files
        assert read_file(m.path / "private", timeout=30).data == b"root only " * 5
