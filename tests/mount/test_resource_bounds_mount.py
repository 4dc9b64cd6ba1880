"""Resource bounds through a real ``refmount mount`` (issue 13, items 12 and 11).

The daemon's peak memory is its own high-water mark (``VmHWM`` in
/proc/PID/status while it runs; the same figure from ``wait4`` when it has
exited): a 1 GiB-of-spaces gzip bomb and the largest ``gen`` set allowed stay
well below 500 MB, an absurd Parquet grid is refused naming the array, a
decoded chunk beyond ``max_decoded_chunk`` reads as EIO without being
decoded, and a relative URL reads the file next to the set.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from refmount.mount.mountpoint import is_mounted
from refmount.refs.kerchunk.gen import MAX_GENERATED_KEYS
from tests.support.mounting import force_unmount, mounted

pytestmark = pytest.mark.fuse

PEAK_LIMIT_KB = 500_000


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def _failed_mount(source: Path, mountpoint: Path, *options: str, timeout: float = 120) -> tuple[int, str, int]:
    """Run ``refmount mount -f`` expected to fail: (exit status, output, peak RSS in kB).

    If it mounts after all, it is unmounted and the test fails.
    """
    mountpoint.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "refmount", "mount", str(source), str(mountpoint), "-f", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                return process.returncode, output, usage.ru_maxrss
            if is_mounted(mountpoint):
                peak = _vm_hwm_kb(process.pid)
                raise AssertionError(f"{source} was mounted (peak {peak} kB) instead of refused")
            time.sleep(0.05)
        raise AssertionError(f"refmount mount of {source} neither failed nor mounted within {timeout} s")
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
        if is_mounted(mountpoint):
            force_unmount(mountpoint)


def test_a_gzip_bomb_is_refused_naming_the_limit_with_bounded_memory(tmp_path):
    bomb = tmp_path / "refs.json.gz"
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    spaces = b" " * (16 << 20)
    with open(bomb, "wb") as out:
        out.write(packer.compress(b'{"version": 1, "refs": {".zgroup": "{\\"zarr_format\\": 2}"}}'))
        for _ in range(64):  # 1 GiB of whitespace after a valid document
            out.write(packer.compress(spaces))
        out.write(packer.flush())
    assert bomb.stat().st_size < 8 << 20
    status, output, peak_kb = _failed_mount(bomb, tmp_path / "mnt")
    assert status != 0
    assert str(bomb) in output and "decompresses to more than 268435456 bytes" in output, output
    assert peak_kb < PEAK_LIMIT_KB, f"daemon peaked at {peak_kb} kB"


def test_the_largest_gen_set_allowed_mounts_in_bounded_memory_and_time(tmp_path):
    files, side = 1000, MAX_GENERATED_KEYS // 1000
    assert files * side == MAX_GENERATED_KEYS
    source = tmp_path / "gen.json"
    source.write_text(json.dumps({
        "version": 1,
        "refs": {".zgroup": '{"zarr_format": 2}'},
        "gen": [{"key": "v/{{i}}.{{j}}", "url": "s3://bucket/f{{i}}.nc", "offset": "{{j * 1000}}", "length": "1000",
                 "dimensions": {"i": {"stop": files}, "j": {"stop": side}}}],
    }))
    assert source.stat().st_size < 300
    started = time.monotonic()
    with mounted(source, tmp_path / "mnt", ["-o", "allow=s3"], timeout=120) as mount:
        elapsed = time.monotonic() - started
        peak_kb = _vm_hwm_kb(mount.process.pid)
        assert os.stat(mount.path / "v" / f"{files - 1}.{side - 1}").st_size == 1000
    assert peak_kb < PEAK_LIMIT_KB, f"daemon peaked at {peak_kb} kB"
    assert elapsed < 60, f"mounting took {elapsed:.1f} s"  # a few seconds; generous for a loaded shared machine
    print(f"gen set of {MAX_GENERATED_KEYS} keys: peak {peak_kb} kB, mounted in {elapsed:.1f} s")


def test_an_absurd_parquet_grid_is_refused_naming_the_array(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    meta = {".zgroup": {"zarr_format": 2},
            "huge/.zarray": {"shape": [2**41], "chunks": [1], "dtype": "<f4", "compressor": None, "filters": None,
                             "fill_value": None, "order": "C", "zarr_format": 2}}
    (root / ".zmetadata").write_text(json.dumps({"metadata": meta, "record_size": 10_000}))
    status, output, _ = _failed_mount(root, tmp_path / "mnt")
    assert status != 0
    assert "array 'huge' has 2199023255552 chunks" in output and "limit of 2**40" in output, output


def _decoded_set(tmp_path: Path, chunk: int, payload: bytes) -> Path:
    (tmp_path / "v0.zlib").write_bytes(payload)
    source = tmp_path / "refs.json"
    zarray = {"shape": [chunk], "chunks": [chunk], "dtype": "|u1", "compressor": {"id": "zlib", "level": 1},
              "filters": None, "fill_value": 0, "order": "C", "zarr_format": 2}
    source.write_text(json.dumps({"version": 1, "refs": {
        ".zgroup": '{"zarr_format": 2}', "v/.zarray": json.dumps(zarray), "v/.zattrs": '{"_ARRAY_DIMENSIONS": ["x"]}',
        "v/0": [str(tmp_path / "v0.zlib")],
    }}))
    return source


def _read_errno(path: Path) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        with open(path, "rb") as handle:
            handle.read(128 << 10)
    except OSError as exc:
        return exc.errno, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_decoded_chunk_beyond_the_cap_is_eio_without_decoding(tmp_path):
    """A 520 KB zlib object declared as one 512 MiB chunk: EIO at once under the default cap (256M)."""
    source = _decoded_set(tmp_path, 512 << 20, zlib.compress(bytes(512 << 20), 1))
    with mounted(source, tmp_path / "mnt", ["-o", "view=decoded"]) as mount:
        chunk = mount.path / "v" / "0"
        assert chunk.stat().st_size == 512 << 20  # stat costs nothing: the size comes from the shape
        for _ in range(3):
            code, seconds = _read_errno(chunk)
            assert code == errno.EIO and seconds < 2, (code, seconds)
        log = mount.log()
    assert "exceeds max_decoded_chunk (268435456 bytes)" in log
    assert "decodes" not in log.split("exceeds max_decoded_chunk")[0][-200:]


def test_a_chunk_decompressing_beyond_the_cap_is_eio(tmp_path):
    """Declared as 1 MiB, the payload inflates to 64 MiB: counted while inflating, refused past the cap."""
    source = _decoded_set(tmp_path, 1 << 20, zlib.compress(bytes(64 << 20), 1))
    with mounted(source, tmp_path / "mnt", ["-o", "view=decoded", "-o", "max_decoded_chunk=16M"]) as mount:
        code, _ = _read_errno(mount.path / "v" / "0")
        assert code == errno.EIO
        log = mount.log()
    assert "codec 'zlib' data decompresses to more than max_decoded_chunk (16777216 bytes)" in log


def test_a_relative_url_reads_the_file_next_to_the_set(tmp_path, monkeypatch):
    (tmp_path / "sets" / "data").mkdir(parents=True)
    (tmp_path / "sets" / "data" / "x.bin").write_bytes(b"0123456789")
    source = tmp_path / "sets" / "refs.json"
    source.write_text(json.dumps({"a": ["data/x.bin", 2, 5], "b": ["data/x.bin"]}))
    monkeypatch.chdir(tmp_path)  # not the set's directory: the daemon's working directory must not matter
    with mounted(source, tmp_path / "mnt") as mount:
        assert (mount.path / "a").read_bytes() == b"23456"
        assert (mount.path / "b").read_bytes() == b"0123456789"
