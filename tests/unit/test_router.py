"""The set router without a mount: lazy loading, a broken set, reload, open handles across reloads, idle unload.

Routers are built by :func:`refmount.mount.assemble.open_tree` over real
kerchunk JSON files in ``tmp_path`` (inline references and byte ranges of
a local file), exactly as ``refmount mount`` builds them; only FUSE is left
out, so each step can be checked in between.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from refmount.fs.router import SetRouter
from tests.support.opsfixtures import wait_for
from tests.support.served import errno_of, open_served, write_reference_set

DATA = bytes(range(256)) * 16


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


def set_refs(data_file: Path, text: str, offset: int = 0) -> dict:
    return {".zgroup": '{"zarr_format": 2}', "x": text, "v/0": [str(data_file), offset, 100]}


@pytest.fixture
def sets(tmp_path: Path, data_file: Path) -> Path:
    directory = tmp_path / "sets"
    directory.mkdir()
    write_reference_set(directory / "a.json", set_refs(data_file, "a, first"))
    write_reference_set(directory / "b.json", set_refs(data_file, "b, first", 1000))
    (directory / "notes.txt").write_text("not a reference set")
    return directory


@pytest.fixture
def router(sets: Path) -> Iterator[SetRouter]:
    served = open_served(sets)
    try:
        yield served.router
    finally:
        served.close()


def loaded(router: SetRouter) -> float:
    return router.metrics.snapshot()["sets_loaded"]


def read_all(router: SetRouter, path: str) -> bytes:
    handle = router.open(path, os.O_RDONLY)
    try:
        return router.read(handle, 1 << 20, 0, path)
    finally:
        router.release(handle)


def messages(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(start)]


def test_a_collections_root_lists_sets_without_loading_them(router):
    assert list(router.readdir("/")) == [".", "..", "a", "b"]
    listing = router.listing("/")
    entries = list(listing.entries)
    assert [(name, inode, kind) for name, inode, kind, _ in entries] == [
        (name, router.getattr(f"/{name}")["st_ino"], 0o040000) for name in ("a", "b")
    ]
    assert [listing.attrs(entry) for entry in entries] == [None, None]  # a set's attributes need it loaded
    root = router.getattr("/")
    assert root["st_nlink"] == 4
    for name in ("a", "b"):
        assert router.getattr(f"/{name}")["st_nlink"] == 2
        router.access(f"/{name}", os.R_OK | os.X_OK)
        assert router.listxattr(f"/{name}") == []
    assert router.statfs()["f_files"] == 3
    assert errno_of(lambda: router.getattr("/notes")) == errno.ENOENT
    assert loaded(router) == 0
    assert router.metrics.snapshot()["sets"] == 2


def test_the_first_lookup_loads_a_set_once(router, caplog):
    caplog.set_level(logging.INFO, logger="refmount")
    start = threading.Barrier(8)

    def look() -> int:
        start.wait()
        return router.getattr("/a/x")["st_size"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: look(), range(8))) == [len("a, first")] * 8
    assert read_all(router, "/a/x") == b"a, first"
    assert sorted(router.readdir("/a")) == sorted([".", "..", ".zgroup", "x", "v"])
    assert messages(caplog, "loaded a:") == messages(caplog, "loaded ")
    assert len(messages(caplog, "loaded a:")) == 1
    assert loaded(router) == 1


def test_a_broken_set_answers_eio_while_its_neighbours_work(sets, router, caplog):
    caplog.set_level(logging.INFO, logger="refmount")
    (sets / "broken.json").write_text('{"version": 1, "refs": ')
    assert router.reload().added == ["broken"]
    assert stat_is_dir(router, "/broken")  # listing the root shows it without loading it
    for attempt in range(2):
        assert errno_of(lambda: list(router.readdir("/broken"))) == errno.EIO, attempt
        assert errno_of(lambda: router.getattr("/broken/x")) == errno.EIO, attempt
        assert errno_of(lambda: router.open("/broken/x", os.O_RDONLY)) == errno.EIO, attempt
    assert len(messages(caplog, "reference set broken")) == 1  # the reason is logged once, not per call
    assert read_all(router, "/a/v/0") == DATA[:100]
    assert read_all(router, "/b/v/0") == DATA[1000:1100]
    assert "broken.json" in router.status()["broken_sets"]["broken"]


def stat_is_dir(router: SetRouter, path: str) -> bool:
    return router.getattr(path)["st_mode"] & 0o170000 == 0o040000


def test_reload_adds_removes_and_changes_sets(sets, data_file, router):
    assert read_all(router, "/a/x") == b"a, first"
    assert router.reload().describe() == "reloaded: no changes"
    (sets / "b.json").unlink()
    write_reference_set(sets / "c.json", set_refs(data_file, "c, new", 2000))
    write_reference_set(sets / "a.json", set_refs(data_file, "a, second version", 500))
    result = router.reload()
    assert (result.ok, result.added, result.removed, result.changed) == (True, ["c"], ["b"], ["a"])
    assert list(router.readdir("/")) == [".", "..", "a", "c"]
    assert read_all(router, "/a/x") == b"a, second version"
    assert read_all(router, "/a/v/0") == DATA[500:600]
    assert read_all(router, "/c/v/0") == DATA[2000:2100]
    assert errno_of(lambda: router.getattr("/b")) == errno.ENOENT
    assert errno_of(lambda: router.getattr("/b/x")) == errno.ENOENT
    assert router.generation == 2


@pytest.mark.parametrize("collection", [True, False], ids=["collection", "single-set"])
def test_a_handle_opened_before_a_reload_keeps_reading_its_generation(tmp_path, sets, data_file, collection):
    source = sets if collection else sets / "a.json"
    prefix = "/a" if collection else ""
    served = open_served(source)
    try:
        router = served.router
        text = router.open(f"{prefix}/x", os.O_RDONLY)
        chunk = router.open(f"{prefix}/v/0", os.O_RDONLY)
        write_reference_set(sets / "a.json", set_refs(data_file, "a, rewritten", 3000))
        assert router.reload().changed == (["a"] if collection else ["/"])
        assert router.read(text, 100, 0, f"{prefix}/x") == b"a, first"
        assert router.read(chunk, 30, 70, f"{prefix}/v/0") == DATA[70:100]
        assert router.getattr_of_handle(text, f"{prefix}/x")["st_size"] == len("a, first")
        assert router.getattr(f"{prefix}/x")["st_size"] == len("a, rewritten")
        assert read_all(router, f"{prefix}/x") == b"a, rewritten"  # new opens see the new generation
        assert read_all(router, f"{prefix}/v/0") == DATA[3000:3100]
        router.release(text)
        router.release(chunk)
        assert router.metrics.snapshot()["open_handles"] == 0
    finally:
        served.close()


def test_an_open_handle_stats_after_its_path_was_removed(sets, data_file, router):
    in_removed_set = router.open("/b/x", os.O_RDONLY)
    removed_key = router.open("/a/x", os.O_RDONLY)
    (sets / "b.json").unlink()
    write_reference_set(sets / "a.json", {".zgroup": '{"zarr_format": 2}'})
    result = router.reload()
    assert (result.removed, result.changed) == (["b"], ["a"])
    for handle, path, text in ((in_removed_set, "/b/x", b"b, first"), (removed_key, "/a/x", b"a, first")):
        assert errno_of(router.getattr, path) == errno.ENOENT, path
        attrs = router.getattr_of_handle(handle, path)
        assert attrs["st_size"] == len(text), path
        assert router.read(handle, 100, 0, path) == text, path
        router.release(handle)
        assert errno_of(router.getattr_of_handle, handle, path) == errno.ENOENT, path
    assert router.getattr_of_handle(in_removed_set, "/a/.zgroup")["st_size"] == len('{"zarr_format": 2}')


def test_idle_unload_drops_sets_without_open_files_only(sets, caplog):
    caplog.set_level(logging.INFO, logger="refmount")
    served = open_served(sets, idle_unload=0.4)
    try:
        router = served.router
        handle = router.open("/a/x", os.O_RDONLY)
        assert read_all(router, "/b/x") == b"b, first"
        assert loaded(router) == 2
        wait_for(lambda: messages(caplog, "unloaded idle reference set b"), timeout=10, what="b to be unloaded")
        assert loaded(router) == 1
        time.sleep(1.0)  # several idle periods, with a file of "a" still open
        assert not messages(caplog, "unloaded idle reference set a")
        assert router.read(handle, 100, 0, "/a/x") == b"a, first"
        router.release(handle)
        wait_for(lambda: loaded(router) == 0, timeout=10, what="a to be unloaded once its file is closed")
        assert messages(caplog, "unloaded idle reference set a")
        assert read_all(router, "/a/x") == b"a, first"  # and it loads again on the next lookup
        assert loaded(router) == 1
    finally:
        served.close()
