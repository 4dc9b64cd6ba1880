"""Icechunk repositories mounted for real: zarr-python 3 reads the mount as icechunk reads the repository.

The repositories are written by icechunk and zarr (native, inline and
virtual chunks, a tag, two commits); the oracle is the same repository read
in-process with icechunk and zarr. What cannot be mounted is refused with a
message and a failing exit status, never served as an empty tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import icechunk
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from refmount.devtools.localstore import REGION
from refmount.mount.mountpoint import is_mounted
from tests.support.icechunk_repos import (
    assert_same,
    build_repository,
    read_in_process,
    snapshot_of,
    write_hdf5,
)
from tests.support.mounting import mounted

pytestmark = pytest.mark.fuse


def _local_repository(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    hdf5 = data_dir / "source.h5"
    _, chunks = write_hdf5(str(hdf5))
    container = f"file://{data_dir}/"
    storage = icechunk.local_filesystem_storage(str(tmp_path / "sets" / "repo"))
    built = build_repository(storage, f"file://{hdf5}", container,
                             icechunk.local_filesystem_store(str(data_dir)), chunks)
    return built, tmp_path / "sets" / "repo"


def _stored_bytes(storage, container: str, key: str) -> bytes:
    repo = icechunk.Repository.open(storage, authorize_virtual_chunk_access={container: None})
    store = repo.readonly_session(branch="main").store
    buffer = asyncio.run(store.get(key, default_buffer_prototype()))
    assert buffer is not None, key
    return bytes(buffer.to_bytes())


def test_local_repository_reads_as_icechunk_reads_it(tmp_path):
    built, root = _local_repository(tmp_path)
    assert (root / "chunks").is_dir()  # native chunks exist as objects, not only inline ones
    expected = read_in_process(built.storage, built.container)
    with mounted(root, tmp_path / "mnt") as mount:
        assert_same(snapshot_of(zarr.open_group(str(mount.path), mode="r", zarr_format=3)), expected)
        files = sorted(str(p.relative_to(mount.path)) for p in mount.path.rglob("*") if p.is_file())
        assert "sub/virt/c/0/0" in files and "native/c/3" in files and "small/c/1" in files
        assert "small/c/2" not in files  # never written: zarr reads the fill value
        for key in files:  # every file has the exact size and bytes the repository's store returns
            path = mount.path / key
            stored = _stored_bytes(built.storage, built.container, key)
            assert os.path.getsize(path) == len(stored), key
            assert path.read_bytes() == stored, key
        assert "refused" not in mount.log()

    with mounted(root, tmp_path / "mnt-tag", ["-o", "ref=v1"]) as mount:
        shown = snapshot_of(zarr.open_group(str(mount.path), mode="r", zarr_format=3))
        assert_same(shown, read_in_process(built.storage, built.container, tag="v1"))
        assert list(shown["small"]) == [1, 2, 3, 4, -1, -1]
    with mounted(root, tmp_path / "mnt-id", ["-o", f"ref={built.snapshots['v1']}"]) as mount:
        assert list(zarr.open_array(str(mount.path / "small"), mode="r")[:]) == [1, 2, 3, 4, -1, -1]

    (root.parent / "other.json").write_text('{"version": 1, "refs": {".zgroup": "{\\"zarr_format\\": 2}"}}')
    with mounted(str(root.parent) + "/", tmp_path / "mnt-collection") as mount:
        assert sorted(os.listdir(mount.path)) == ["other", "repo"]
        group = zarr.open_group(str(mount.path / "repo"), mode="r", zarr_format=3)
        assert_same(snapshot_of(group), expected)


def _refusal(source: str | Path, mountpoint: Path, *options: str) -> str:
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "refmount", "mount", str(source), str(mountpoint), "-f", *options],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert not is_mounted(mountpoint)
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_what_cannot_be_mounted_is_refused_naming_it(tmp_path):
    built, root = _local_repository(tmp_path)
    message = _refusal(root, tmp_path / "m1", "-o", "ref=nothing")
    assert "has no branch, tag or snapshot 'nothing'" in message and "branches: main" in message and "tags: v1" in message
    # The decoded and netCDF views are made from .zarray files, which a repository does not have: refused,
    # not shown with its chunks still encoded or as a netCDF file without variables; inspect says the same.
    for view in ("decoded", "netcdf"):
        message = _refusal(root, tmp_path / f"m-{view}", "-o", f"view={view}")
        assert f"option view: {view} is made from Zarr v2 metadata (.zarray)" in message, message
        assert "is an Icechunk repository (Zarr v3 only): mount it with view=raw" in message
        inspected = subprocess.run([sys.executable, "-m", "refmount", "inspect", str(root), "--view", view],
                                   capture_output=True, text=True, timeout=120)
        assert inspected.returncode == 2 and f"option view: {view} is made from" in inspected.stderr

    # Virtual chunks in a container on a protocol refmount has no filesystem for.
    elsewhere = tmp_path / "elsewhere"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(
        "tigris://bucket/", icechunk.ObjectStoreConfig.Tigris(icechunk.S3Options())))
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(elsewhere)), config=config)
    session = repo.writable_session("main")
    zarr.group(session.store).create_array("x", shape=(4,), chunks=(4,), dtype="u1", compressors=None)
    session.store.set_virtual_ref("x/c/0", "tigris://bucket/file.bin", offset=0, length=4)
    session.commit("virtual chunks out of reach")
    message = _refusal(elsewhere, tmp_path / "m2")
    assert "virtual chunk container tigris://bucket/" in message and "cannot read" in message

    empty = tmp_path / "empty"
    empty.mkdir()
    message = _refusal(empty, tmp_path / "m3")
    assert "holding no reference set" in message and "Icechunk repository" in message

    shutil.copytree(root, tmp_path / "broken")
    shutil.rmtree(tmp_path / "broken" / "refs")
    (tmp_path / "broken" / "refs").mkdir()  # still looks like a repository, but has no branch
    message = _refusal(tmp_path / "broken", tmp_path / "m4")
    assert "Icechunk repository" in message

    # Format 2 (Icechunk 2.x: one `repo` object at the root, no refs/) with icechunk 1.x installed.
    format_2 = tmp_path / "format2"
    shutil.copytree(root / "snapshots", format_2 / "snapshots")
    (format_2 / "repo").write_bytes(b"ICE\xf0\x9f\xa7\x8aCHUNK")
    installed = icechunk.__version__
    message = _refusal(format_2, tmp_path / "m5")
    if int(installed.split(".")[0]) < 2:
        assert f"is of format 2 (written by Icechunk 2.x); the installed icechunk {installed} reads format 1 only" \
            in message, message
        inspected = subprocess.run([sys.executable, "-m", "refmount", "inspect", str(format_2)],
                                   capture_output=True, text=True, timeout=120)
        assert inspected.returncode != 0 and "is of format 2" in inspected.stderr, inspected.stderr
    else:  # icechunk 2 reads the format itself, and refuses this fake repository as damaged
        assert "Icechunk repository" in message


def _inspect(root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "refmount", "inspect", str(root), *options],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _arrays_in_process(storage, container: str, **version: str) -> dict[str, dict]:
    """Each array of the repository as zarr reads it: shape, chunks, dtype, codec names, stored chunk keys."""
    repo = icechunk.Repository.open(storage, authorize_virtual_chunk_access={container: None})
    session = repo.readonly_session(**(version or {"branch": "main"}))
    found = {}
    for name, member in zarr.open_group(session.store, mode="r").members(max_depth=None):
        if isinstance(member, zarr.Array):
            meta = member.metadata.to_dict()

            async def keys(prefix: str = f"{name}/") -> list[str]:
                return [key async for key in session.store.list_prefix(prefix)]

            found[name] = {"shape": list(member.shape), "chunks": list(member.chunks), "dtype": str(member.dtype),
                           "codecs": [codec["name"] for codec in meta["codecs"]],
                           "chunk_keys": sum(1 for key in asyncio.run(keys()) if not key.endswith("zarr.json"))}
    return found


def test_inspect_says_what_a_mount_of_the_repository_shows(tmp_path):
    built, root = _local_repository(tmp_path)
    done = _inspect(root)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "zarr format 3 (the set's own zarr.json, no .zarray)" in text and "zarr format 2" not in text, text
    assert f"ref            main (branch), snapshot {built.snapshots['v2']}" in text
    expected = _arrays_in_process(built.storage, built.container)
    assert sorted(expected) == ["native", "small", "sub/virt"]
    for name, array in expected.items():
        codecs = "+".join(array["codecs"])
        assert (f"  {name:<24} {array['dtype']:<8} shape={array['shape']} chunks={array['chunks']} codecs={codecs} "
                f"chunk-keys={array['chunk_keys']}") in text, text

    summary = json.loads(_inspect(root, "--json").stdout)
    assert (summary["set_format"], summary["own_zarr_format"], summary["zarr_format"]) == ("icechunk", 3, 3)
    listed = {a["name"]: {k: a[k] for k in ("shape", "chunks", "dtype", "codecs", "chunk_keys")}
              for a in summary["arrays"]}
    assert listed == expected
    assert all(a["missing_codecs"] == [] for a in summary["arrays"])

    # The netCDF (and decoded) view: inspect gives the reason a mount refuses it, not a file it will not make.
    assert summary["netcdf_files"] == [] and set(summary["refused_views"]) == {"decoded", "netcdf"}
    for view in ("decoded", "netcdf"):
        reason = summary["refused_views"][view]
        assert reason in _refusal(root, tmp_path / f"m-{view}", "-o", f"view={view}")
        assert f"{view} view (-o view={view}): refused: {reason}" in text
    assert "CDF-" not in text and summary["problems"] == []


def test_inspect_names_the_snapshot_of_the_ref_it_read(tmp_path):
    built, root = _local_repository(tmp_path)
    for ref, kind, snapshot in (("main", "branch", built.snapshots["v2"]), ("v1", "tag", built.snapshots["v1"])):
        done = _inspect(root, "--ref", ref)
        assert done.returncode == 0, done.stderr
        assert f"ref            {ref} ({kind}), snapshot {snapshot} (see --ref)" in done.stdout, done.stdout
        summary = json.loads(_inspect(root, "--ref", ref, "--json").stdout)
        assert (summary["ref"], summary["ref_kind"], summary["snapshot_id"]) == (ref, kind, snapshot)
    done = _inspect(root, "--ref", built.snapshots["v1"])
    assert done.returncode == 0 and f"ref            snapshot {built.snapshots['v1']} (see --ref)" in done.stdout
    # Tag v1 holds the first commit: what inspect lists is what that snapshot holds.
    expected = _arrays_in_process(built.storage, built.container, tag="v1")
    listed = json.loads(_inspect(root, "--ref", "v1", "--json").stdout)["arrays"]
    assert {a["name"]: a["chunk_keys"] for a in listed} == {name: a["chunk_keys"] for name, a in expected.items()}

    done = _inspect(root, "--ref", "nothing")
    assert done.returncode == 2 and done.stdout == ""
    assert "has no branch, tag or snapshot 'nothing' (branches: main; tags: v1)" in done.stderr, done.stderr


@pytest.mark.s3
def test_repository_on_s3_with_virtual_chunks_on_s3(local_s3, s3_bucket, tmp_path):
    hdf5 = tmp_path / "source.h5"
    _, chunks = write_hdf5(str(hdf5))
    local_s3.upload(hdf5, f"s3://{s3_bucket}/data/source.h5")
    credentials = {"access_key_id": local_s3.access_key, "secret_access_key": local_s3.secret_key}
    storage = icechunk.s3_storage(bucket=s3_bucket, prefix="repo", region=REGION, endpoint_url=local_s3.endpoint_url,
                                  allow_http=True, force_path_style=True, **credentials)
    container = f"s3://{s3_bucket}/data/"
    store = icechunk.s3_store(region=REGION, endpoint_url=local_s3.endpoint_url, allow_http=True,
                              s3_compatible=True, force_path_style=True)
    built = build_repository(storage, f"s3://{s3_bucket}/data/source.h5", container, store, chunks)
    expected = read_in_process(built.storage, container, icechunk.s3_credentials(**credentials))

    options = ["-o", f"endpoint_url={local_s3.endpoint_url},region={REGION},s3.key={local_s3.access_key},"
                     f"s3.secret={local_s3.secret_key}"]
    with mounted(f"s3://{s3_bucket}/repo", tmp_path / "mnt", options) as mount:
        assert_same(snapshot_of(zarr.open_group(str(mount.path), mode="r", zarr_format=3)), expected)
        assert local_s3.secret_key not in mount.log()
