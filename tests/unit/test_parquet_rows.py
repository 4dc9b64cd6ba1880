"""A row read from a record file's pages equals the same row of the file decoded whole.

The sets are written by kerchunk/fsspec themselves (``refs_to_dataframe``,
fastparquet) and by pyarrow with the options that change the page layout
(codecs, page versions, small pages, no dictionary). Every row is compared,
rows past the end of a short file included; a row the page reader cannot
read must say so (:class:`Unsupported`) rather than answer differently.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from refmount.errors import InvalidReferences, NotFound
from refmount.refs.model import Inline, Range
from refmount.refs.parquet.records import read_record
from refmount.refs.parquet.rows import LazyRecord, Unsupported
from refmount.refs.parquet.tree import ParquetNamespace

URLS = [f"s3://bucket/data/file{i}.nc" for i in range(3)]


def _zarray(count: int) -> str:
    return json.dumps({"shape": [count], "chunks": [1], "dtype": "<f4", "compressor": None, "fill_value": 0,
                       "filters": None, "order": "C", "zarr_format": 2})


def _compare(data: bytes, rows: int) -> int:
    """Compare every row (and two past the end); return how many the page reader answered itself."""
    whole = read_record(data, str, "refs.0.parq")
    lazy = LazyRecord(data, "refs.0.parq")
    answered = 0
    for row in range(rows + 2):
        try:
            got = lazy.reference(row, str)
        except Unsupported:
            continue
        assert got == whole.reference(row), row
        answered += 1
    return answered


# one chunk: missing (None), a range into one of few URLs, a whole object, inline bytes
chunks = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(URLS), st.integers(0, 2**40), st.integers(1, 2**20)).map(list),
    st.sampled_from(URLS).map(lambda url: [url]),
    st.binary(min_size=1, max_size=12).map(lambda raw: "base64:" + base64.b64encode(raw).decode()),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 40), st.lists(chunks, min_size=1, max_size=90), st.sampled_from([0, 10]))
def test_rows_of_sets_kerchunk_writes_read_as_the_whole_file_reads_them(record_size, values, threshold):
    from kerchunk.df import refs_to_dataframe

    refs = {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": _zarray(len(values))}
    refs.update({f"v/{n}": value for n, value in enumerate(values) if value is not None})
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "set.parq"
        refs_to_dataframe({"version": 1, "refs": refs}, str(root), record_size=record_size,
                          categorical_threshold=threshold)
        for path in sorted((root / "v").glob("refs.*.parq")):
            _compare(path.read_bytes(), record_size)
        # through the tree: each chunk as kerchunk wrote it, a missing one absent, as a listing (whole decode) says
        fs = fsspec.filesystem("file")
        tree = ParquetNamespace(fs, str(root), (root / ".zmetadata").read_bytes())
        listed = set(ParquetNamespace(fs, str(root), (root / ".zmetadata").read_bytes()).listdir("v"))
        for n, value in enumerate(values):
            if value is None:
                with pytest.raises(NotFound):
                    tree.lookup(f"v/{n}")
                assert str(n) not in listed
                continue
            ref = tree.lookup(f"v/{n}").ref
            assert str(n) in listed
            if isinstance(value, str):
                assert ref == Inline(base64.b64decode(value[7:]))
            else:
                assert (ref.url, getattr(ref, "offset", 0), getattr(ref, "length", 0)) == (
                    value[0], *(value[1:] or [0, 0]))


def test_a_kerchunk_set_with_few_urls_is_read_row_by_row():
    """Not a vacuous comparison: fsspec's own layout (dictionary URLs, PLAIN integers) is read from the pages,
    every row of it, and a record asked for many rows is decoded whole with the same answers."""
    from kerchunk.df import refs_to_dataframe

    count = 500
    refs = {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": _zarray(count)}
    refs.update({f"v/{n}": [URLS[n % 3], n * 10, 10] for n in range(count) if n % 7})
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "set.parq"
        refs_to_dataframe({"version": 1, "refs": refs}, str(root), record_size=200)
        for path in sorted((root / "v").glob("refs.*.parq")):
            assert _compare(path.read_bytes(), 200) == 202
        # through the tree: past DECODE_AFTER rows of a record it is decoded whole; the answers do not change
        tree = ParquetNamespace(fsspec.filesystem("file"), str(root), (root / ".zmetadata").read_bytes())
        for n in range(count):
            if n % 7:
                assert tree.lookup(f"v/{n}").ref == Range(URLS[n % 3], n * 10, 10), n
            else:
                with pytest.raises(NotFound):
                    tree.lookup(f"v/{n}")
        assert tree.records_loaded == 3  # each record file fetched once, whether read by row or decoded


def _table(rows: int, draw_values: list) -> pa.Table:
    paths, offsets, sizes, raws = [], [], [], []
    for value in draw_values[:rows]:
        kind, number = value
        paths.append(None if kind in ("missing", "inline") else URLS[number % 3])
        offsets.append(number if kind == "range" else 0)
        sizes.append(number % 4096 + 1 if kind == "range" else 0)
        raws.append(number.to_bytes(6, "little") if kind == "inline" else None)
    return pa.table({"path": pa.array(paths, pa.string()), "offset": pa.array(offsets, pa.int64()),
                     "size": pa.array(sizes, pa.int64()), "raw": pa.array(raws, pa.binary())})


rows_drawn = st.lists(st.tuples(st.sampled_from(["missing", "range", "range", "whole", "inline"]),
                                st.integers(0, 2**40)), min_size=1, max_size=3000)
writer_options = st.fixed_dictionaries({
    "compression": st.sampled_from(["zstd", "snappy", "gzip", "none", "brotli", "lz4", "lz4_raw"]),
    "use_dictionary": st.booleans(),
    "data_page_version": st.sampled_from(["1.0", "2.0"]),
    "data_page_size": st.sampled_from([64, 1024, 1 << 20]),
    "write_statistics": st.booleans(),
})


@settings(max_examples=40, deadline=None)
@given(rows_drawn, writer_options, st.sampled_from([None, 1, 100]))
def test_rows_of_files_pyarrow_writes_read_as_the_whole_file_reads_them(values, options, row_group):
    sink = io.BytesIO()
    table = _table(len(values), values)
    pq.write_table(table, sink, row_group_size=row_group, **options)
    data = sink.getvalue()
    try:
        lazy = LazyRecord(data, "refs.0.parq")
    except Unsupported:
        # refused up front: several row groups, and LZ4 (pyarrow reports both framings as "LZ4")
        assert (row_group is not None and row_group < len(values)) or options["compression"].startswith("lz4")
        return
    assert lazy.rows == len(values)
    _compare(data, len(values))


def test_a_row_pointing_at_a_negative_offset_is_refused_naming_file_column_and_row():
    sink = io.BytesIO()
    pq.write_table(pa.table({"path": ["s3://b/o", "s3://b/o"], "offset": [4, -1], "size": [2, 2]}), sink)
    lazy = LazyRecord(sink.getvalue(), "s3://b/set/v/refs.0.parq")
    assert lazy.reference(0, str) is not None
    with pytest.raises(InvalidReferences, match=r"refs\.0\.parq: column 'offset' is negative \(-1\) in row 1"):
        lazy.reference(1, str)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 4000))
@example(b"\x01", 14)  # a dictionary page header whose value count turns negative
def test_damaged_pages_are_unsupported_not_misread(noise, where):
    """Bytes overwritten anywhere in a file: the page reader answers as the whole decode, or says it cannot."""
    sink = io.BytesIO()
    pq.write_table(_table(300, [("range", n * 7) for n in range(300)]), sink, compression="none")
    data = bytearray(sink.getvalue())
    where %= len(data)
    data[where : where + len(noise)] = noise[: len(data) - where]
    try:
        whole = read_record(bytes(data), str, "x")
    except InvalidReferences:
        whole = None
    try:
        lazy = LazyRecord(bytes(data), "x")
    except Unsupported:
        return
    for row in range(0, 302, 13):
        try:
            got = lazy.reference(row, str)
        except (Unsupported, InvalidReferences):
            continue
        if whole is not None:
            assert got == whole.reference(row), row


def test_a_read_sees_the_extent_of_the_whole_record_file(tmp_path):
    """The block cache cuts blocks at the extent: after a row lookup, the extent a read asks for is the
    record file's, as when the file was decoded whole, not the end of the one row looked up."""
    from kerchunk.df import refs_to_dataframe

    refs = {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": _zarray(300)}
    refs.update({f"v/{n}": [URLS[n % 2], n * 100, 100] for n in range(300)})
    root = tmp_path / "set.parq"
    refs_to_dataframe({"version": 1, "refs": refs}, str(root), record_size=100)
    fs = fsspec.filesystem("file")
    listed = ParquetNamespace(fs, str(root), (root / ".zmetadata").read_bytes())
    list(listed.listdir("v"))  # every record decoded whole
    tree = ParquetNamespace(fs, str(root), (root / ".zmetadata").read_bytes())
    ref = tree.lookup("v/101").ref  # record 1, row 1
    assert ref == Range(URLS[1], 10100, 100)
    assert tree.extent(URLS[1]) == 199 * 100 + 100  # record 1's last row of that URL, not row 1's end
    assert tree.extent(URLS[0]) == 198 * 100 + 100  # decoding record 1 covered its other URL too
    assert tree.extent(URLS[1]) < listed.extent(URLS[1])  # record 2 was never looked at: not covered
    assert tree.records_loaded == 1
