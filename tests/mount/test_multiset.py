"""Many reference sets under one mount: lazy loading, idle unloading, a broken set, reload while reading."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from refmount.mount.control import read_stats
from tests.support.mounting import mounted
from tests.support.opsfixtures import (
    biggest_range_key,
    code_env,
    expected_bytes,
    make_dataset,
    wait_for,
    write_set,
)

pytestmark = pytest.mark.fuse


@pytest.fixture
def collection(tmp_path):
    _, refs = make_dataset(tmp_path / "data")
    sets = tmp_path / "sets"
    sets.mkdir()
    write_set(sets / "a.json", refs)
    write_set(sets / "b.json", refs)
    (sets / "broken.json").write_text('{"version": 1, "refs": ')
    (sets / "notes.txt").write_text("not a reference set")
    return sets, refs


def _reload(mountpoint) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refmount", "reload", str(mountpoint)], capture_output=True,
                          text=True, env=code_env(), timeout=60)


def test_sets_are_subdirectories_loaded_on_first_use_and_a_broken_one_is_eio(collection, tmp_path):
    sets, refs = collection
    key = biggest_range_key(refs)
    with mounted(sets, tmp_path / "mnt") as mount:
        assert sorted(os.listdir(mount.path)) == ["a", "b", "broken"]
        subprocess.run(["ls", "-l", str(mount.path)], check=True, capture_output=True)
        assert read_stats(str(mount.path))["sets_loaded"] == 0  # listing and stat load nothing
        assert (mount.path / "a" / key).read_bytes() == expected_bytes(refs, key)
        assert read_stats(str(mount.path))["sets_loaded"] == 1
        with pytest.raises(OSError) as failure:
            os.listdir(mount.path / "broken")
        assert failure.value.errno == errno.EIO
        assert (mount.path / "b" / key).read_bytes() == expected_bytes(refs, key)
        assert sorted(os.listdir(mount.path / "a")) == sorted({k.split("/")[0] for k in refs["refs"]})
        figures = read_stats(str(mount.path))
        assert figures["sets"] == 3 and figures["sets_loaded"] == 2
        assert "broken.json" in figures["broken_sets"]["broken"]
        assert "reference set broken" in mount.log() and "broken.json" in mount.log()
        # keys repeat across sets, inode numbers do not
        assert os.stat(mount.path / "a" / key).st_ino != os.stat(mount.path / "b" / key).st_ino


def test_idle_sets_are_unloaded_and_come_back(collection, tmp_path):
    sets, refs = collection
    key = biggest_range_key(refs)
    with mounted(sets, tmp_path / "mnt", ["--idle-unload", "0.5"]) as mount:
        with open(mount.path / "a" / key, "rb") as held:
            assert (mount.path / "b" / key).read_bytes() == expected_bytes(refs, key)
            wait_for(lambda: read_stats(str(mount.path))["sets_loaded"] == 1, what="b to be unloaded")
            assert held.read() == expected_bytes(refs, key)  # a has an open file: still loaded
        wait_for(lambda: read_stats(str(mount.path))["sets_loaded"] == 0, what="a to be unloaded")
        assert "unloaded idle reference set a" in mount.log()
        assert (mount.path / "a" / key).read_bytes() == expected_bytes(refs, key)


def test_reload_adds_removes_and_swaps_sets_while_files_stay_open(collection, tmp_path):
    sets, refs = collection
    key = biggest_range_key(refs)
    old = expected_bytes(refs, key)
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(bytes((i * 7 + 3) % 251 for i in range(len(old))))
    changed = json.loads(json.dumps(refs))
    changed["refs"][key] = [str(replacement), 0, len(old)]
    with mounted(sets, tmp_path / "mnt") as mount:
        held_a = open(mount.path / "a" / key, "rb")
        held_b = open(mount.path / "b" / key, "rb")
        try:
            assert held_a.read(10) == old[:10]
            write_set(sets / "c.json", refs)
            (sets / "b.json").unlink()
            write_set(sets / "a.json", changed)
            result = _reload(mount.path)
            assert result.returncode == 0, result.stderr + mount.log()
            assert "added c" in result.stdout and "removed b" in result.stdout and "changed a" in result.stdout
            wait_for(lambda: sorted(os.listdir(mount.path)) == ["a", "broken", "c"], what="the new listing")
            wait_for(lambda: not (mount.path / "b").exists(), what="b to disappear")
            # open files keep reading what they opened
            assert held_a.read() == old[10:]
            held_b.seek(0)
            assert held_b.read() == old
            wait_for(lambda: (mount.path / "a" / key).read_bytes() == replacement.read_bytes(), what="new data in a")
            assert (mount.path / "c" / key).read_bytes() == old
        finally:
            held_a.close()
            held_b.close()
        assert read_stats(str(mount.path))["reloads"] == 1


def test_reload_of_a_single_set_that_became_invalid_keeps_the_old_one(tmp_path):
    _, refs = make_dataset(tmp_path / "data")
    source = write_set(tmp_path / "era5.json", refs)
    key = biggest_range_key(refs)
    with mounted(source, tmp_path / "mnt") as mount:
        source.write_text("{broken")
        result = _reload(mount.path)
        assert result.returncode == 1 and "reload failed" in result.stdout
        assert (mount.path / key).read_bytes() == expected_bytes(refs, key)
        write_set(source, refs)
        result = _reload(mount.path)
        assert result.returncode == 0, result.stdout + result.stderr
        figures = read_stats(str(mount.path))
        assert figures["reloads"] == 1 and figures["reload_failures"] == 1


def test_reload_of_an_s3_prefix_lists_it_afresh(local_s3, s3_bucket, tmp_path):
    """s3fs caches directory listings per instance: a reload must not answer from that cache."""
    data = os.urandom(50_000)
    local_s3.put(f"s3://{s3_bucket}/data.bin", data)

    def put_set(name: str, offset: int) -> bytes:
        refs = {"version": 1, "refs": {"chunk": [f"s3://{s3_bucket}/data.bin", offset, 1000]}}
        local_s3.put(f"s3://{s3_bucket}/sets/{name}.json", json.dumps(refs).encode())
        return data[offset:offset + 1000]

    first = put_set("first", 0)
    options = ["-o", f"endpoint_url={local_s3.endpoint_url}"]
    with mounted(f"s3://{s3_bucket}/sets/", tmp_path / "mnt", options, env=local_s3.env()) as mount:
        assert os.listdir(mount.path) == ["first"]
        assert (mount.path / "first" / "chunk").read_bytes() == first
        second = put_set("second", 7000)
        result = _reload(mount.path)
        assert result.returncode == 0, result.stdout + result.stderr + mount.log()
        assert "added second" in result.stdout, result.stdout
        wait_for(lambda: sorted(os.listdir(mount.path)) == ["first", "second"], what="the new set")
        assert (mount.path / "second" / "chunk").read_bytes() == second
        local_s3.filesystem().rm(f"s3://{s3_bucket}/sets/first.json")
        result = _reload(mount.path)
        assert result.returncode == 0, result.stdout + result.stderr + mount.log()
        assert "removed first" in result.stdout, result.stdout
        wait_for(lambda: os.listdir(mount.path) == ["second"], what="the removed set to disappear")
        assert (mount.path / "second" / "chunk").read_bytes() == second
