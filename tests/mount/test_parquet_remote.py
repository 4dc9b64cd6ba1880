"""Parquet reference sets that live on a real S3 server and behind a real HTTP server, mounted for real.

Every key must read byte for byte as fsspec's ReferenceFileSystem reads it
from the same remote set, and a chunk must fetch only its own record file:
the record-file GETs are counted at the server (the counting S3 proxy, the
HTTP server's request log), not inferred from the daemon.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest

from refmount.refs.kerchunk.parse import parse_references
from refmount.refs.parquet.write import write_parquet
from tests.support.datasets import kerchunk_references, write_hdf5
from tests.support.mounting import mounted

pytestmark = pytest.mark.fuse

RECORD_SIZE = 5  # temp has 36 chunks: 8 record files


def _parquet_set(base: Path, data_url: str, writer: str) -> Path:
    """A Parquet set of ``write_hdf5``'s file, its chunks referring to ``data_url``."""
    refs = kerchunk_references(base / "data.h5", data_url)
    target = base / f"by-{writer}.parq"
    if writer == "fsspec":
        from kerchunk.df import refs_to_dataframe

        (base / "refs.json").write_text(json.dumps(refs))
        refs_to_dataframe(str(base / "refs.json"), str(target), record_size=RECORD_SIZE)
    else:
        parsed = parse_references(refs)
        write_parquet(lambda: iter(parsed.items()), str(target), record_size=RECORD_SIZE)
    return target


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _expected(reference: fsspec.AbstractFileSystem, keys: list[str]) -> dict[str, bytes]:
    return {key: reference.cat_file(key) for key in keys}


def _all_keys(mount_root: Path) -> list[str]:
    keys = []
    for directory, _, files in os.walk(mount_root):
        rel = Path(directory).relative_to(mount_root).as_posix()
        keys += [f"{rel}/{name}" if rel != "." else name for name in files]
    return sorted(keys)


def _record_gets(requests: list[tuple[str, str, str | None]]) -> list[str]:
    return [path for method, path, _ in requests if method == "GET" and ".parq" in path and "refs." in path]


def _check_lazy_then_equal(mount, reference, requests, reset) -> None:
    """Metadata needs no record file; one chunk needs one; a listing needs each record file once."""
    reset()
    os.listdir(mount.path)
    (mount.path / "temp/.zarray").read_bytes()
    assert _record_gets(requests()) == [], "metadata and the root must not fetch record files"
    os.stat(mount.path / "temp/1.1.2")  # chunk 14: record file 2
    assert [p.rsplit("/", 2)[-2:] for p in _record_gets(requests())] == [["temp", "refs.2.parq"]]
    os.stat(mount.path / "temp/1.1.0")  # chunk 12: the same record file, already loaded
    assert len(_record_gets(requests())) == 1
    keys = _all_keys(mount.path)
    # every record file of the set fetched once (temp: 8, the other variables 1 each), not more
    fetched = _record_gets(requests())
    assert len(fetched) == len(set(fetched))
    expected = _expected(reference, [k for k in keys])
    assert keys and "temp/1.1.2" in keys and ".zmetadata" in keys
    for key in keys:
        assert (mount.path / key).read_bytes() == expected[key], key
        assert (mount.path / key).stat().st_size == len(expected[key]), key


@pytest.mark.parametrize("writer", ["fsspec", "refmount"])
def test_parquet_set_on_s3_reads_as_fsspec_reads_it(local_s3, s3_bucket, s3_proxy, writer, tmp_path):
    write_hdf5(tmp_path / "data.h5")
    data_url = f"s3://{s3_bucket}/data/data.h5"
    local_s3.upload(tmp_path / "data.h5", data_url)
    options = local_s3.storage_options()
    set_url = f"s3://{s3_bucket}/sets/by-{writer}.parq"
    if writer == "fsspec":
        source = _parquet_set(tmp_path, data_url, writer)
        for rel, data in _files(source).items():
            local_s3.put(f"{set_url}/{rel}", data)
    else:  # refmount writes the set onto the store itself
        parsed = parse_references(kerchunk_references(tmp_path / "data.h5", data_url))
        write_parquet(lambda: iter(parsed.items()), set_url, record_size=RECORD_SIZE, storage_options=options)
        assert local_s3.get(f"{set_url}/temp/refs.7.parq")[:4] == b"PAR1"

    reference = fsspec.filesystem("reference", fo=set_url, target_options=options, remote_protocol="s3",
                                  remote_options=options, skip_instance_cache=True)
    mount_options = ["-o", f"endpoint_url={s3_proxy.endpoint_url},s3.key={local_s3.access_key},"
                           f"s3.secret={local_s3.secret_key}"]
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    with mounted(set_url, tmp_path / "mnt", mount_options, env=env) as mount:
        _check_lazy_then_equal(mount, reference, lambda: list(s3_proxy.requests), s3_proxy.reset)
        assert local_s3.secret_key not in mount.log()


@pytest.mark.parametrize("writer", ["fsspec", "refmount"])
@pytest.mark.parametrize("named", ["directory", "zmetadata"])
def test_parquet_set_over_http_reads_as_fsspec_reads_it(http_server, writer, named, tmp_path):
    write_hdf5(tmp_path / "data.h5")
    data_url = http_server.put("data/data.h5", (tmp_path / "data.h5").read_bytes())
    source = _parquet_set(tmp_path, data_url, writer)
    for rel, data in _files(source).items():
        http_server.put(f"sets/{source.name}/{rel}", data)
    set_url = http_server.url_for(f"sets/{source.name}")

    reference = fsspec.filesystem("reference", fo=set_url, remote_protocol="http", skip_instance_cache=True)
    mount_source = set_url if named == "directory" else f"{set_url}/.zmetadata"
    with mounted(mount_source, tmp_path / "mnt") as mount:
        _check_lazy_then_equal(mount, reference, lambda: list(http_server.requests), http_server.reset)
