"""Tests of reading reference files from local paths and HTTP (refmount.refs.source)."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import lzma
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from refmount.errors import BackendError, ConfigError, InvalidReferences
from refmount.refs import source as source_module
from refmount.refs.model import Inline, Range
from refmount.refs.source import (
    ReferenceFile,
    decompress,
    load_references,
    mtime_from_info,
    read_reference_file,
    to_posix_seconds,
)
from tests.support.http_range_server import RangeHTTPServer

DOC = {
    "version": 1,
    "templates": {"u": "s3://bucket/data.nc"},
    "refs": {
        ".zgroup": '{"zarr_format":2}',
        "t/.zattrs": '{"units":"°C"}',
        "t/0": ["{{u}}", 4096, 1000],
    },
}
DOC_BYTES = json.dumps(DOC, ensure_ascii=False).encode("utf-8")
EXPECTED = {
    ".zgroup": Inline(b'{"zarr_format":2}'),
    "t/.zattrs": Inline('{"units":"°C"}'.encode()),
    "t/0": Range("s3://bucket/data.nc", 4096, 1000),
}

COMPRESSORS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}
FIXED_MTIME = 1_700_000_000.5


def write(directory: Path, name: str, data: bytes = DOC_BYTES, mtime: float = FIXED_MTIME) -> Path:
    """Write ``name`` compressed according to its extension, with a known mtime."""
    extension = next((e for e in COMPRESSORS if e and name.lower().endswith(e)), "")
    path = directory / name
    path.write_bytes(COMPRESSORS[extension](data))
    os.utime(path, (mtime, mtime))
    return path


# --------------------------------------------------------------------------
# local files


@pytest.mark.parametrize("extension", list(COMPRESSORS))
def test_local_plain_and_compressed(tmp_path, extension):
    path = write(tmp_path, f"refs.json{extension}")
    ref_file, refs = load_references(str(path))
    assert ref_file == ReferenceFile(url=str(path), data=DOC_BYTES, mtime=pytest.approx(FIXED_MTIME))
    assert refs == EXPECTED


def test_zstd_frame_without_content_size(tmp_path):
    compressor = zstandard.ZstdCompressor()
    path = tmp_path / "refs.json.zst"
    with open(path, "wb") as fh, compressor.stream_writer(fh) as writer:  # streaming: no size in header
        writer.write(DOC_BYTES)
    assert read_reference_file(str(path)).data == DOC_BYTES


def test_extension_is_case_insensitive_and_only_the_last_counts(tmp_path):
    assert read_reference_file(str(write(tmp_path, "REFS.JSON.GZ"))).data == DOC_BYTES
    plain = tmp_path / "refs.gz.json"
    plain.write_bytes(DOC_BYTES)
    assert read_reference_file(str(plain)).data == DOC_BYTES


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    write(tmp_path, "refs.json")
    monkeypatch.chdir(tmp_path)
    ref_file = read_reference_file("refs.json")
    assert ref_file.url == str(tmp_path / "refs.json")
    assert os.path.isabs(ref_file.url)


def test_file_url_is_kept_as_given(tmp_path):
    path = write(tmp_path, "refs.json.xz")
    url = f"file://{path}"
    ref_file, refs = load_references(url)
    assert ref_file.url == url
    assert ref_file.mtime == pytest.approx(FIXED_MTIME)
    assert refs == EXPECTED


def test_missing_local_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope" / "refs.json"
    with pytest.raises(ConfigError, match="reference file not found") as info:
        read_reference_file(str(missing))
    assert str(missing) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_reference_file(str(tmp_path))


def test_unreadable_file_is_a_config_error():
    """Read as an unprivileged user (root reads any file): a child drops to uid 65534 first."""
    directory = tempfile.mkdtemp(prefix="refmount-perm-")
    try:
        os.chmod(directory, 0o755)
        path = write(Path(directory), "refs.json")
        path.chmod(0)
        probe = (
            "import sys\n"
            "from refmount.errors import ConfigError\n"
            "from refmount.refs.source import read_reference_file\n"
            "import os, fsspec\n"
            "fsspec.filesystem('file')  # load lazily imported modules while still privileged\n"
            "if os.geteuid() == 0:\n"
            "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            f"    read_reference_file({str(path)!r})\n"
            "except ConfigError as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
            cwd=directory, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert result.returncode == 3, result.stderr
        assert "permission denied" in result.stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("extension", [".gz", ".bz2", ".xz", ".zst"])
def test_corrupt_compressed_file_is_invalid_references(tmp_path, extension):
    path = tmp_path / f"refs.json{extension}"
    path.write_bytes(b"this is not compressed at all")
    with pytest.raises(InvalidReferences, match=f"{path.name} is not valid"):
        read_reference_file(str(path))


def test_truncated_gzip_is_invalid_references(tmp_path):
    path = tmp_path / "refs.json.gz"
    path.write_bytes(gzip.compress(DOC_BYTES)[:-10])
    with pytest.raises(InvalidReferences, match="not valid gzip"):
        read_reference_file(str(path))


def test_missing_zstandard_is_a_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(ConfigError, match="needs the 'zstandard' package"):
        decompress(b"whatever", "refs.json.zst")


def test_invalid_json_in_file_names_line_and_column(tmp_path):
    path = write(tmp_path, "refs.json.gz", b'{\n "a": [1,\n}')
    with pytest.raises(InvalidReferences, match="line 3 column 1"):
        load_references(str(path))


def test_invalid_references_name_the_file_and_keep_the_key(tmp_path):
    path = write(tmp_path, "refs.json", b'{"a/0": ["s3://b/f", -1, 10]}')
    with pytest.raises(InvalidReferences) as info:
        load_references(str(path))
    assert str(info.value) == f"in {path}: 'a/0': offset must not be negative, got -1"
    assert info.value.key == "a/0"


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchproto://bucket/refs.json"):
        read_reference_file("nosuchproto://bucket/refs.json")


def test_bad_storage_options_are_a_config_error_without_their_values(monkeypatch):
    import fsspec

    def refuse(protocol, **options):
        raise TypeError(f"__init__() got an unexpected keyword argument; values {options}")

    monkeypatch.setattr(fsspec, "filesystem", refuse)
    with pytest.raises(ConfigError, match="unsupported URL or storage options") as info:
        read_reference_file("s3://bucket/refs.json", {"secret": "sekrit-value-123", "client_kwargs": {"k": "nested-sekrit"}})
    assert "s3://bucket/refs.json" in str(info.value)
    assert "sekrit-value-123" not in str(info.value) and "nested-sekrit" not in str(info.value)


def test_empty_url_is_a_config_error():
    with pytest.raises(ConfigError, match="non-empty"):
        read_reference_file("")


def test_memory_filesystem_and_storage_options_pass_through():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/refmount-test/refs.json.bz2", bz2.compress(DOC_BYTES))
    try:
        ref_file, refs = load_references("memory://refmount-test/refs.json.bz2", {"skip_instance_cache": True})
        assert ref_file.data == DOC_BYTES
        assert refs == EXPECTED
        assert ref_file.mtime > 0  # memory fs reports "created" as a datetime
    finally:
        fs.rm("/refmount-test", recursive=True)


def test_backend_failures_are_backend_errors_without_secrets(monkeypatch, tmp_path):
    path = write(tmp_path, "refs.json")

    class Broken:
        def info(self, path):
            raise RuntimeError("connection reset talking to https://user:hunter22@host with key AKIASECRET")

    monkeypatch.setattr(source_module, "_filesystem", lambda url, shown, options: (Broken(), url))
    with pytest.raises(BackendError) as info:
        read_reference_file(str(path), {"key": "AKIASECRET", "secret": "x"})
    message = str(info.value)
    assert "RuntimeError" in message and str(path) in message
    assert "AKIASECRET" not in message and "hunter22" not in message


# --------------------------------------------------------------------------
# mtime normalisation


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"mtime": 1_700_000_000.25}, 1_700_000_000.25),
        ({"mtime": 1_700_000_000}, 1_700_000_000.0),
        ({"LastModified": dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)}, 1_700_000_000.0),
        ({"LastModified": dt.datetime(2023, 11, 14, 22, 13, 20)}, 1_700_000_000.0),  # naive = UTC
        ({"last_modified": "2023-11-14T22:13:20Z"}, 1_700_000_000.0),
        ({"last_modified": "2023-11-14T23:13:20+01:00"}, 1_700_000_000.0),
        ({"Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"}, 1_700_000_000.0),
        ({"updated": "2023-11-14T22:13:20.000Z"}, 1_700_000_000.0),
        ({"created": 1_700_000_000_000}, 1_700_000_000.0),  # milliseconds
        ({"created": "1700000000"}, 1_700_000_000.0),
        ({"mtime": "garbage", "created": 5.0}, 5.0),  # falls through to the next key
        ({"mtime": None}, 0.0),
        ({"mtime": True}, 0.0),
        ({"mtime": float("nan")}, 0.0),
        ({"size": 10}, 0.0),
        ({}, 0.0),
    ],
)
def test_mtime_from_info(info, expected):
    assert mtime_from_info(info) == pytest.approx(expected)


def test_to_posix_seconds_rejects_non_times():
    assert to_posix_seconds(object()) is None
    assert to_posix_seconds("") is None
    assert to_posix_seconds("yesterday-ish") is None


# --------------------------------------------------------------------------
# HTTP, against a real server on 127.0.0.1


@pytest.fixture(scope="module")
def http_dir(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The shared HTTP server on a temporary directory; ``/fail/...`` answers 500 for failure tests."""
    root = tmp_path_factory.mktemp("http")
    with RangeHTTPServer(root) as server:
        server.misbehave(fail_prefix="/fail/", fail_status=500)
        yield server.url, root


@pytest.mark.parametrize("extension", list(COMPRESSORS))
def test_http_plain_and_compressed(http_dir, extension):
    base, root = http_dir
    write(root, f"refs{extension or '-plain'}.json{extension}")
    url = f"{base}/refs{extension or '-plain'}.json{extension}"
    ref_file, refs = load_references(url)
    assert ref_file.url == url
    assert ref_file.data == DOC_BYTES
    assert refs == EXPECTED
    # HTTP dates have one-second resolution.
    assert ref_file.mtime == pytest.approx(int(FIXED_MTIME))


def test_http_query_string_does_not_hide_the_extension(http_dir):
    base, root = http_dir
    write(root, "q.json.gz")
    assert read_reference_file(f"{base}/q.json.gz?version=3").data == DOC_BYTES


def test_http_missing_file_is_a_config_error_with_the_url(http_dir):
    base, _ = http_dir
    url = f"{base}/does/not/exist.json"
    with pytest.raises(ConfigError, match="reference file not found") as info:
        read_reference_file(url)
    assert url in str(info.value)


def test_http_server_error_is_a_backend_error(http_dir):
    base, _ = http_dir
    with pytest.raises(BackendError, match="500") as info:
        read_reference_file(f"{base}/fail/refs.json")
    assert f"{base}/fail/refs.json" in str(info.value)


def test_http_refused_connection_is_a_backend_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The socket is closed: nothing listens on the port any more.
    url = f"http://user:hunter22@127.0.0.1:{port}/refs.json"
    with pytest.raises(BackendError) as info:
        read_reference_file(url)
    message = str(info.value)
    assert f"127.0.0.1:{port}/refs.json" in message
    assert "hunter22" not in message
