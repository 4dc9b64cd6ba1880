"""A real FUSE mount of a kerchunk reference set, with data on local disk, S3 and HTTP.

One body of tests, run against each backend: what a user sees through the
mount must equal what fsspec's ReferenceFileSystem and h5py see.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import zarr

from tests.support.datasets import kerchunk_references, reference_lengths, write_hdf5
from tests.support.http_range_server import RangeHTTPServer
from tests.support.mounting import Mount, mounted

pytestmark = pytest.mark.fuse


@dataclass
class Served:
    """A dataset placed on one backend, its references, and how to mount them."""

    backend: str
    h5_path: Path
    arrays: dict[str, np.ndarray]
    refs: dict
    refs_source: str
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    storage_options: dict = field(default_factory=dict)

    def reference_fs(self) -> fsspec.AbstractFileSystem:
        protocol = fsspec.core.split_protocol(next(v[0] for v in self.refs["refs"].values() if isinstance(v, list)))[0]
        return fsspec.filesystem(
            "reference", fo=self.refs, remote_protocol=protocol or "file", remote_options=self.storage_options
        )


def _serve_local(base: Path, h5: Path) -> dict:
    refs = kerchunk_references(h5, str(h5))
    (base / "refs.json").write_text(json.dumps(refs))
    return {"refs": refs, "refs_source": str(base / "refs.json")}


@pytest.fixture(scope="module")
def served_s3(local_s3):
    """Place a dataset in a bucket of the session's S3 server; references stored in the bucket too."""

    def serve(base: Path, h5: Path, arrays: dict) -> Served:
        bucket = f"mount-{uuid.uuid4().hex[:12]}"
        local_s3.create_bucket(bucket)
        url = f"s3://{bucket}/archive/data.h5"
        local_s3.upload(h5, url)
        refs = kerchunk_references(h5, url)
        local_s3.put(f"s3://{bucket}/refs/data.json", json.dumps(refs).encode())
        return Served(
            "s3", h5, arrays, refs, f"s3://{bucket}/refs/data.json",
            options=["-o", f"endpoint_url={local_s3.endpoint_url}"],
            env={k: v for k, v in local_s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")},
            storage_options=local_s3.storage_options(),
        )

    return serve


@pytest.fixture(scope="module")
def served_http(tmp_path_factory):
    """Serve a dataset and its references from a real Range-capable HTTP server."""
    root = tmp_path_factory.mktemp("http-root")
    with RangeHTTPServer(root) as server:

        def serve(base: Path, h5: Path, arrays: dict) -> Served:
            shutil.copy(h5, root / "data.h5")
            refs = kerchunk_references(h5, server.url_for("data.h5"))
            (root / "refs.json").write_text(json.dumps(refs))
            return Served("http", h5, arrays, refs, server.url_for("refs.json"))

        yield serve


@pytest.fixture(scope="module", params=["local", "s3", "http"])
def served(request, tmp_path_factory) -> Served:
    base = tmp_path_factory.mktemp(f"served-{request.param}")
    h5 = base / "data.h5"
    arrays = write_hdf5(h5)
    if request.param == "local":
        return Served("local", h5, arrays, **_serve_local(base, h5))
    if request.param == "s3":
        return request.getfixturevalue("served_s3")(base, h5, arrays)
    return request.getfixturevalue("served_http")(base, h5, arrays)


@pytest.fixture(scope="module")
def mount(served: Served, tmp_path_factory) -> Mount:
    mountpoint = tmp_path_factory.mktemp(f"mnt-{served.backend}") / "mnt"
    with mounted(served.refs_source, mountpoint, [*served.options, "--xattrs"], env=served.env) as m:
        yield m


def all_keys(refs: dict) -> list[str]:
    return sorted(refs["refs"])


def test_every_key_reads_as_fsspec_reads_it(served, mount):
    reference = served.reference_fs()
    for key in all_keys(served.refs):
        assert (mount.path / key).read_bytes() == reference.cat(key), key


def test_sizes_in_ls_lR_equal_the_reference_lengths(served, mount):
    listing = subprocess.run(["ls", "-lRAn", str(mount.path)], capture_output=True, text=True, check=True).stdout
    sizes: dict[str, int] = {}
    directory = ""
    for line in listing.splitlines():
        if line.endswith(":"):
            directory = os.path.relpath(line[:-1], mount.path)
            directory = "" if directory == "." else directory
        elif line.startswith("-"):
            parts = line.split(None, 8)
            sizes[os.path.join(directory, parts[8])] = int(parts[4])
            assert parts[0] == "-r--r--r--"
        elif line.startswith("d"):
            assert line.split()[0] == "dr-xr-xr-x"
    assert sizes == reference_lengths(served.refs)


def test_zarr_and_xarray_on_the_mountpoint_equal_h5py(served, mount):
    import xarray

    group = zarr.open_group(str(mount.path), mode="r")
    with h5py.File(served.h5_path, "r") as original:
        for name in served.arrays:
            np.testing.assert_array_equal(group[name][...], original[name][...])
    dataset = xarray.open_zarr(str(mount.path), consolidated=False, mask_and_scale=False)
    np.testing.assert_array_equal(dataset["temp"].values, served.arrays["temp"])
    assert dataset["temp"].attrs["long_name"] == "température"


def test_cp_r_gives_an_identical_zarr_store(served, mount, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(mount.path), str(copy)], check=True)
    group = zarr.open_group(str(copy), mode="r")
    for name, values in served.arrays.items():
        np.testing.assert_array_equal(group[name][...], values)


def test_md5sum_of_every_file_matches(served, mount):
    reference = served.reference_fs()
    keys = all_keys(served.refs)
    output = subprocess.run(["md5sum", *keys], cwd=mount.path, capture_output=True, text=True, check=True).stdout
    sums = {line.split(None, 1)[1].strip(): line.split()[0] for line in output.splitlines()}
    assert sums == {key: hashlib.md5(reference.cat(key)).hexdigest() for key in keys}


@pytest.mark.parametrize(
    "offset,count",
    [(0, 1), (1, 1), (4095, 3), (1023, 4097), (7, 100_000), (0, 10_000_000)],
)
def test_dd_at_odd_offsets_and_sizes(served, mount, offset, count):
    key = max(
        (k for k, v in served.refs["refs"].items() if isinstance(v, list)), key=lambda k: served.refs["refs"][k][2]
    )
    expected = served.reference_fs().cat(key)
    result = subprocess.run(
        ["dd", f"if={mount.path / key}", "bs=1", f"skip={offset}", f"count={count}", "iflag=skip_bytes,count_bytes",
         "status=none"] if count < 5000 else
        ["dd", f"if={mount.path / key}", "bs=64k", f"skip={offset}", f"count={count}", "iflag=skip_bytes,count_bytes",
         "status=none"],
        capture_output=True, check=True,
    ).stdout
    assert result == expected[offset : offset + count]


def test_past_the_end_reads_nothing(served, mount):
    key = next(k for k, v in served.refs["refs"].items() if isinstance(v, list))
    size = served.refs["refs"][key][2]
    with open(mount.path / key, "rb") as handle:
        assert os.pread(handle.fileno(), 100, size) == b""
        assert os.pread(handle.fileno(), 100, size + 12345) == b""


def test_writes_fail_with_erofs(mount):
    target = mount.path / "temp" / ".zarray"
    attempts = [
        lambda: open(target, "r+b"),
        lambda: open(mount.path / "new-file", "wb"),
        lambda: os.mkdir(mount.path / "new-dir"),
        lambda: os.unlink(target),
        lambda: os.rename(target, mount.path / "renamed"),
        lambda: os.chmod(target, 0o644),
        lambda: os.truncate(target, 0),
        lambda: os.setxattr(target, "user.x", b"1"),
        lambda: os.utime(target, (0, 0)),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, (attempt, info.value)


def test_missing_keys_are_enoent(mount):
    with pytest.raises(FileNotFoundError):
        (mount.path / "temp" / "99.99.99").stat()
    with pytest.raises(FileNotFoundError):
        (mount.path / "no-such-dir" / "x").read_bytes()


def test_xattrs_say_where_bytes_come_from(served, mount):
    key = next(k for k, v in served.refs["refs"].items() if isinstance(v, list))
    url, offset, length = served.refs["refs"][key]
    path = mount.path / key
    assert os.getxattr(path, "user.refmount.offset") == str(offset).encode()
    assert os.getxattr(path, "user.refmount.length") == str(length).encode()
    assert os.getxattr(path, "user.refmount.url").decode().endswith(url.rsplit("/", 1)[1])


def test_inodes_are_stable_and_distinct(mount):
    inodes = {p: p.stat().st_ino for p in mount.path.rglob("*")}
    assert len(set(inodes.values())) == len(inodes)
    assert all(p.stat().st_ino == ino for p, ino in inodes.items())


def test_one_timestamp_for_the_whole_tree(served, mount):
    mtimes = {p.stat().st_mtime for p in mount.path.rglob("*")}
    assert len(mtimes) == 1
