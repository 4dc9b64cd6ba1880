"""Listings carry each entry's attributes (readdirplus), and they are exactly what ``stat`` answers.

On one mount every directory is listed first (``ls -lR``, then ``os.scandir``)
and each entry stat'ed afterwards, so its attributes come from the listing; on
a second mount of the same set each path is stat'ed without any listing, so
they come from a lookup. Both must agree field for field, on the raw, decoded
and netCDF views and on a collection of sets, and ``ls -lR`` must print the
same before and after the attributes are cached. The counters show that the
kernel took the listing's attributes (no lookup per entry) where it was given them.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from refmount.mount.control import read_stats
from tests.support.mounting import mounted
from tests.support.opsfixtures import make_dataset, write_set

pytestmark = pytest.mark.fuse

FIELDS = ("st_mode", "st_ino", "st_size", "st_nlink", "st_uid", "st_gid", "st_blocks", "st_blksize", "st_mtime")


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    base = tmp_path_factory.mktemp("readdirplus")
    h5, refs = make_dataset(base / "data")
    refs["refs"]["whole.h5"] = [str(h5)]  # a size only the store knows: listed without attributes
    return base, refs


def walk(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` by listing: relative path -> (d_ino, is_dir, lstat fields)."""
    found: dict[str, tuple] = {}
    pending = [top]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            listed = list(entries)
        for entry in listed:
            info = os.lstat(entry.path)
            found[os.path.relpath(entry.path, top)] = (entry.inode(), entry.is_dir(follow_symlinks=False),
                                                       fields(info))
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return found


def fields(info: os.stat_result) -> tuple:
    return tuple(getattr(info, name) for name in FIELDS)


def ls_lr(path: Path) -> str:
    return subprocess.run(["ls", "-lR", "--time-style=+%s", str(path)], check=True, capture_output=True,
                          text=True).stdout.replace(str(path), "MNT")


def check_against_lookups(source, options, tmp_path, top: str = "") -> int:
    """List on one mount, stat without listing on another; the entries listed with attributes."""
    with mounted(source, tmp_path / "listed", options) as listed:
        root = listed.path / top
        before = read_stats(str(listed.path))
        cold = ls_lr(root)
        after = read_stats(str(listed.path))
        found = walk(root)
        assert ls_lr(root) == cold  # warm, from the attributes the kernel keeps
    assert found, "nothing listed"
    for key, (d_ino, is_dir, listed_fields) in found.items():
        assert d_ino == listed_fields[1], key  # readdir(3)'s inode is stat's
        assert is_dir == stat.S_ISDIR(listed_fields[0]), key
    with mounted(source, tmp_path / "looked-up", options) as looked_up:
        for key, (_, _, listed_fields) in found.items():
            assert fields(os.lstat(looked_up.path / top / key)) == listed_fields, key
        assert ls_lr(looked_up.path / top) == cold
    with_attrs = after["listed_with_attrs"] - before["listed_with_attrs"]
    lookups = after["attr_requests"] - before["attr_requests"]
    bare = len(found) - with_attrs
    # ls -lR looks up only the entries listed bare (and the directory it was given, inside a collection)
    assert lookups <= bare + (1 if top else 0), (lookups, bare, with_attrs)
    return with_attrs


def test_raw_view(refs, tmp_path):
    _, document = refs
    source = write_set(tmp_path / "set.json", document)
    with_attrs = check_against_lookups(source, [], tmp_path)
    assert with_attrs == len(document["refs"]) - 1 + 9  # every key but the whole object, and 9 directories


def test_decoded_view(refs, tmp_path):
    _, document = refs
    source = write_set(tmp_path / "set.json", document)
    assert check_against_lookups(source, ["-o", "view=decoded"], tmp_path) > 50


def test_netcdf_view(refs, tmp_path):
    _, document = refs
    document = {**document, "refs": {k: v for k, v in document["refs"].items() if k != "whole.h5"}}
    source = write_set(tmp_path / "set.json", document)
    # The .nc files are planned on their first lookup: listed bare, then looked up.
    check_against_lookups(source, ["-o", "view=netcdf"], tmp_path)


def test_a_set_in_a_collection(refs, tmp_path):
    _, document = refs
    sets = tmp_path / "sets"
    sets.mkdir()
    write_set(sets / "one.json", document)
    write_set(sets / "two.json", document)
    for name in ("one", "two"):
        assert check_against_lookups(sets, [], tmp_path / name, top=name) > 50
