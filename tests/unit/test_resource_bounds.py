"""Small hostile inputs with large costs are refused naming the limit (issue 13, items 12-14 and 11).

Decompression bombs, generator ranges beyond 64 bits, integer literals
beyond the digit limit, deep nesting, absurd Parquet grids, record files
missing their columns or holding negative ranges, decoded chunks that would
decode to too much, non-retryable client errors and relative URLs.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import botocore.exceptions
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from refmount.errors import DecodeError, InvalidReferences, errno_for
from refmount.refs.kerchunk import gen as gen_module
from refmount.refs.kerchunk.parse import decode_json, parse_references
from refmount.refs.model import Range, Whole
from refmount.refs.parquet.layout import chunk_grid, parse_zmetadata
from refmount.refs.parquet.records import read_record
from refmount.refs.parquet.tree import ParquetNamespace, grid_names
from refmount.refs.relative import resolve_relative, set_base
from refmount.refs.source import MAX_DECOMPRESSED_BYTES, decompress, load_references
from refmount.store.retry import is_transient
from refmount.views.expansion import check_expansion, inflate_within

ROOT = Path(__file__).resolve().parents[2]

# -- reference files that decompress to too much ---------------------------------

SPACES = b'{"a": "b"}' + b" " * (3 << 20)
COMPRESSED = {
    ".gz": gzip.compress(SPACES, 1),
    ".bz2": bz2.compress(SPACES, 1),
    ".xz": lzma.compress(SPACES, preset=0),
    ".zst": zstandard.ZstdCompressor(level=1).compress(SPACES),
}


@pytest.mark.parametrize("extension", sorted(COMPRESSED))
def test_decompression_beyond_the_cap_is_refused_naming_file_and_limit(extension):
    with pytest.raises(InvalidReferences) as caught:
        decompress(COMPRESSED[extension], f"refs.json{extension}", f"s3://b/refs.json{extension}", limit=1 << 20)
    message = str(caught.value)
    assert f"s3://b/refs.json{extension}" in message and "more than 1048576 bytes" in message
    assert decompress(COMPRESSED[extension], f"refs.json{extension}", limit=len(SPACES)) == SPACES


def test_multi_member_gzip_is_decompressed_whole_under_the_cap():
    assert decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "x.gz") == b"abcd"
    assert MAX_DECOMPRESSED_BYTES == 256 << 20


# -- refusals that name the key and the limit --------------------------------------


def test_a_gen_range_beyond_64_bits_names_the_limit_not_an_overflow():
    doc = {"version": 1, "gen": [{"key": "k{{i}}", "url": "s3://b/u",
                                  "dimensions": {"i": {"start": -(2**63), "stop": 2**63 - 1}}}]}
    with pytest.raises(InvalidReferences, match=r"gen\[0\] would generate 18446744073709551615 keys.*limit of 500000"):
        parse_references(doc)


def test_an_empty_dimension_never_materialises_a_huge_one():
    doc = {"version": 1, "gen": [{"key": "k{{i}}.{{j}}", "url": "s3://b/u",
                                  "dimensions": {"i": {"stop": 2**62}, "j": []}}]}
    started = time.monotonic()
    assert parse_references(doc) == {}
    assert time.monotonic() - started < 1


def test_generated_keys_are_limited_to_half_a_million():
    assert gen_module.MAX_GENERATED_KEYS == 500_000
    doc = {"version": 1, "gen": [{"key": "k{{i}}", "url": "s3://b/u", "dimensions": {"i": {"stop": 500_001}}}]}
    with pytest.raises(InvalidReferences, match="would generate 500001 keys, more than the limit of 500000"):
        parse_references(doc)


def test_an_integer_literal_beyond_the_digit_limit_names_the_limit():
    with pytest.raises(InvalidReferences, match=f"longer than {sys.get_int_max_str_digits()} digits"):
        decode_json(b'{"k": ["s3://b/o", ' + b"1" * 5000 + b", 1]}")


def test_deep_nesting_names_the_limit():
    with pytest.raises(InvalidReferences, match="nested more deeply than"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(InvalidReferences, match=r"nests more deeply than \d+ levels"):
        parse_zmetadata(b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "s3://b/set")


# -- Parquet grids and record files --------------------------------------------------


@pytest.mark.parametrize(
    "zarray, reason",
    [
        ({"shape": [2**41], "chunks": [1]}, "has 2199023255552 chunks (grid [2199023255552]), more than the limit of 2**40"),
        ({"shape": [2**21, 2**21], "chunks": [1, 1]}, "more than the limit of 2**40"),
        ({"shape": [2**60], "chunks": [2**30]}, "shape[0] of array 'v' is 1152921504606846976"),
        ({"shape": [10], "chunks": [0]}, "chunks[0] of array 'v' is 0"),
        ({"shape": [-5], "chunks": [1]}, "shape[0] of array 'v' is -5"),
        ({"shape": ["10"], "chunks": [1]}, "shape[0] of array 'v' is '10'"),
        ({"shape": [10**40], "chunks": [1]}, "is a huge integer"),
    ],
)
def test_absurd_grids_are_refused_naming_the_array(zarray, reason):
    with pytest.raises(InvalidReferences) as caught:
        chunk_grid({"dtype": "<f4", **zarray}, "v")
    assert reason in str(caught.value) and "v/.zarray" in str(caught.value)


def test_integral_float_shapes_still_count():
    assert chunk_grid({"shape": [1e3, 10], "chunks": [100, 3.0]}, "v") == (10, 4)


@pytest.mark.parametrize("grid", [(3,), (2, 3), (4, 1, 5), (0, 7), (7, 0), (1,), (3, 70_000), (70_000, 2)])
def test_grid_names_are_row_major_like_itertools_product(grid):
    expected = map(".".join, itertools.product(*(map(str, range(n)) for n in grid)))
    assert list(itertools.islice(grid_names(grid), 300_000)) == list(itertools.islice(expected, 300_000))


def _parquet_set(root: Path, shape: int, rows: dict, record_size: int = 10) -> None:
    meta = {".zgroup": {"zarr_format": 2}, "v/.zarray": {"shape": [shape], "chunks": [1], "dtype": "|u1",
            "compressor": None, "filters": None, "fill_value": 0, "order": "C", "zarr_format": 2}}
    (root / ".zmetadata").write_text(json.dumps({"metadata": meta, "record_size": record_size}))
    (root / "v").mkdir(exist_ok=True)
    pq.write_table(pa.table(rows), root / "v" / "refs.0.parq")


def test_listing_a_trillion_chunk_grid_streams_its_first_names(tmp_path):
    """Names are generated as listed: under a 3 GiB address-space limit, no list of the grid is ever built."""
    _parquet_set(tmp_path, 10**12, {"path": ["s3://b/o"] * 10, "offset": list(range(10)), "size": [1] * 10,
                                    "raw": pa.array([None] * 10, pa.binary())})
    script = textwrap.dedent(f"""
        import itertools, fsspec, resource
        from refmount.refs.parquet.tree import ParquetNamespace
        fs = fsspec.filesystem("file")
        tree = ParquetNamespace(fs, {str(tmp_path)!r}, open({str(tmp_path / '.zmetadata')!r}, "rb").read())
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        print(list(itertools.islice(tree.listdir("v"), 5)))
        print(sum(1 for _ in itertools.islice(tree.iter_references(), 12)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["['.zarray', '0', '1', '2', '3']", "12"]


def _record(rows: dict) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(rows), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "rows, reason",
    [
        ({"path": ["s3://b/o"] * 3}, "lacks the column(s) 'offset', 'size'"),
        ({"path": ["s3://b/o"] * 3, "size": [1, 1, 1]}, "lacks the column(s) 'offset'"),
        ({"path": ["s3://b/o"] * 3, "offset": [0, -4, 0], "size": [1, 1, 1]}, "column 'offset' is negative (-4) in row 1"),
        ({"path": ["s3://b/o"] * 3, "offset": [0, 0, 0], "size": [1, 1, -1]}, "column 'size' is negative (-1) in row 2"),
        ({"path": ["s3://b/o"], "offset": pa.array([2**63], pa.uint64()), "size": [1]}, "column 'offset' is negative"),
        ({"path": ["s3://b/o"], "offset": [2**63 - 2], "size": [5]}, "row 0 ends beyond 2**63"),
        ({"path": ["s3://b/o"], "offset": [0.5], "size": [1]}, "column 'offset' has type double, not integer"),
        ({"path": [3], "offset": [0], "size": [1]}, "column 'path' has type int64, not string"),
    ],
)
def test_record_files_are_validated_naming_file_and_column(rows, reason):
    with pytest.raises(InvalidReferences) as caught:
        read_record(_record(rows), str, "s3://b/set/v/refs.0.parq")
    assert reason in str(caught.value) and "record file s3://b/set/v/refs.0.parq" in str(caught.value)


def test_negative_values_in_rows_without_a_path_do_not_matter():
    record = read_record(_record({"path": [None, "s3://b/o"], "offset": [-1, 4], "size": [-1, 2],
                                  "raw": pa.array([b"x", None], pa.binary())}), str, "r")
    assert record.reference(1) == Range("s3://b/o", 4, 2)


# -- decoded chunks that would decode to too much ----------------------------------


def test_zlib_and_zstd_payloads_expanding_beyond_the_cap_are_refused():
    limit = 1 << 20
    zeros = bytes(8 << 20)
    for codec, payload in (("zlib", zlib.compress(zeros)), ("gzip", gzip.compress(zeros)),
                           ("gzip", gzip.compress(b"x") + gzip.compress(zeros)),
                           ("zstd", zstandard.ZstdCompressor().compress(zeros)),
                           ("zstd", zstandard.ZstdCompressor(write_content_size=False).compress(zeros))):
        with pytest.raises(DecodeError) as caught:
            check_expansion("v/0", codec, payload, limit)
        assert f"codec {codec!r} data decompresses to more than max_decoded_chunk (1048576 bytes)" in str(caught.value)
        assert errno_for(caught.value) == 5
    check_expansion("v/0", "zlib", zlib.compress(bytes(limit)), limit)  # exactly the limit is fine
    check_expansion("v/0", "zlib", b"not zlib at all" * 100_000, limit)  # corruption is the codec's to report
    check_expansion("v/0", "blosc", b"\0" * 10, limit)


# -- non-retryable client errors --------------------------------------------------


def test_missing_credentials_and_invalid_parameters_are_not_retried():
    assert not is_transient(botocore.exceptions.NoCredentialsError())
    assert not is_transient(botocore.exceptions.ParamValidationError(report="Invalid bucket name"))
    assert not is_transient(botocore.exceptions.PartialCredentialsError(provider="env", cred_var="secret"))
    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError())


# -- relative URLs ---------------------------------------------------------------


def test_relative_urls_resolve_against_the_reference_files_directory(tmp_path):
    (tmp_path / "sets").mkdir()
    path = tmp_path / "sets" / "refs.json"
    path.write_text(json.dumps({"version": 1, "refs": {"a": ["data/x.bin", 0, 4], "b": ["../y.bin"], "c": ["s3://b/o"]},
                                "gen": [{"key": "g{{i}}", "url": "./g{{i}}.bin", "dimensions": {"i": [0]}}]}))
    _, refs = load_references(str(path))
    assert refs["a"] == Range(f"{tmp_path}/sets/data/x.bin", 0, 4)
    assert refs["b"] == Whole(f"{tmp_path}/y.bin")
    assert refs["c"] == Whole("s3://b/o")
    assert refs["g0"] == Whole(f"{tmp_path}/sets/g0.bin")


@pytest.mark.parametrize(
    "location, directory, url, expected",
    [
        ("s3://bkt/sets/refs.json", False, "data/x.bin", "s3://bkt/sets/data/x.bin"),
        ("s3://bkt/sets/refs.json", False, "../../../x", "s3://bkt/x"),
        ("https://alice:pw@host:8443/a/b/refs.json?X-Amz-Signature=s", False, "c.bin", "https://host:8443/a/b/c.bin"),
        ("s3://bkt/set", True, "v/0.bin", "s3://bkt/set/v/0.bin"),
        ("/srv/set/", True, "v/0.bin", "/srv/set/v/0.bin"),
        ("/srv/refs.json", False, "/abs/x", "/abs/x"),
        ("/srv/refs.json", False, "s3://o/k", "s3://o/k"),
    ],
)
def test_relative_urls_resolve_like_paths_below_the_sets_location(location, directory, url, expected):
    assert resolve_relative(url, set_base(location, is_directory=directory)) == expected


def test_a_chained_set_url_leaves_relative_urls_to_the_policy():
    assert set_base("simplecache::s3://b/refs.json") is None
    assert resolve_relative("x.bin", None) == "x.bin"


def test_relative_paths_in_parquet_records_resolve_against_the_set_root(tmp_path):
    _parquet_set(tmp_path, 3, {"path": ["data/a.bin", "s3://b/o", None], "offset": [0, 2, 0], "size": [5, 1, 0],
                               "raw": pa.array([None, None, None], pa.binary())})
    tree = ParquetNamespace(fsspec.filesystem("file"), str(tmp_path), (tmp_path / ".zmetadata").read_bytes(),
                            base=set_base(str(tmp_path), is_directory=True))
    assert tree.lookup("v/0").ref == Range(f"{tmp_path}/data/a.bin", 0, 5)
    assert tree.lookup("v/1").ref == Range("s3://b/o", 2, 1)
    assert sorted(tree.urls) == sorted([f"{tmp_path}/data/a.bin", "s3://b/o"])
    assert tree.extent(f"{tmp_path}/data/a.bin") == 5




@pytest.mark.parametrize("codec", ["zlib", "gzip"])
def test_a_payload_inflated_for_the_expansion_check_is_what_the_codec_decodes(codec):
    """The decoded view uses the check's inflated bytes instead of inflating again: they must be the codec's."""
    import gzip as gzip_module

    import numcodecs
    import numpy as np

    rng = np.random.default_rng(7)
    chunk = rng.integers(0, 4, 1 << 20, dtype=np.uint8).tobytes()  # compresses to ~300 KB: examined at a 256 MiB limit
    if codec == "zlib":
        payload = zlib.compress(chunk)
        payloads = [payload, payload + b"trailing bytes the codec ignores"]
    else:
        payloads = [gzip_module.compress(chunk), gzip_module.compress(chunk[:1000]) + gzip_module.compress(chunk[1000:])]
    for payload in payloads:
        assert len(payload) * 1032 > 256 << 20
        inflated = inflate_within("v/0", codec, payload, 256 << 20)
        assert inflated is not None
        assert inflated == numcodecs.get_codec({"id": codec}).decode(payload) == chunk
    assert inflate_within("v/0", codec, payloads[0][:-20], 256 << 20) is None  # truncated: left to the codec
    assert inflate_within("v/0", codec, b"x" * 300_000, 256 << 20) is None  # not this codec's data
    assert inflate_within("v/0", codec, payloads[0][:1000], 1 << 30) is None  # too small to examine
