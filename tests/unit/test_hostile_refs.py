"""Hostile and broken reference sets: refused with a reason, or EIO for the bad key alone.

Property tests feed the parsers (JSON, ``gen``, Parquet metadata and record
files, the decompressors) and every tree (dict, compact columns, Parquet)
arbitrary and near-valid sets: they must never crash, never produce a path
that leaves the mountpoint or a range off_t cannot address, the dict and
compact trees must agree, and every refusal is a RefmountError that says
what is wrong.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import string
import tempfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refmount.errors import BackendError, InvalidReferences, RefmountError, errno_for
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.refs.compact import CompactNamespace
from refmount.refs.kerchunk.parse import decode_json, parse_reference_bytes, parse_references
from refmount.refs.model import Range, Whole
from refmount.refs.parquet.tree import ParquetNamespace
from refmount.refs.source import decompress
from refmount.refs.tree import Dir, File, Namespace
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import BackendOptions
from refmount.store.policy import UrlPolicy

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

hostile_segments = st.sampled_from(["a", "b", "..", ".", "", "\x00", "x\x00y", "é", "a\\b", " ", "\n", "~", "-"])
hostile_keys = st.lists(hostile_segments, min_size=1, max_size=4).map("/".join) | st.text(
    alphabet=string.printable + "\x00/.", max_size=12
)
hostile_values = st.one_of(
    st.tuples(st.just("/tmp/x"), st.integers(-(2**65), 2**65), st.integers(-(2**65), 2**65)).map(list),
    st.tuples(st.sampled_from(["s3://b/k", None, "", 3, "a\x00b"])).map(list),
    st.sampled_from(["base64:AAAA", "base64:!!!", "base64:A", "plain text", {"zarr_format": 2}, 7, None, [], [1, 2]]),
)


def _check_tree(refs: dict) -> None:
    """A tree built from accepted references stays inside the mountpoint and finds every key."""
    try:
        namespace = Namespace(refs)
    except InvalidReferences as exc:
        assert str(exc).strip()
        return
    for key in namespace:
        parts = key.split("/")
        assert not key.startswith("/") and "\x00" not in key
        assert all(part not in ("", ".", "..") for part in parts), key
        node = namespace.lookup("/" + key)
        assert isinstance(node, File) and node.path == key
    stack = [""]
    while stack:
        directory = stack.pop()
        for name in namespace.listdir(directory):
            assert name and "/" not in name and name not in (".", ".."), name
            child = namespace.lookup(f"{directory}/{name}" if directory else name)
            if isinstance(child, Dir):
                stack.append(child.path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_crashes_the_parser(doc):
    try:
        refs = parse_references(doc)
    except InvalidReferences as exc:
        assert str(exc).strip()
        return
    _check_tree(refs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(hostile_keys, hostile_values, max_size=6), st.booleans())
def test_near_valid_sets_are_refused_with_a_reason_or_stay_inside_the_tree(refs, v1):
    doc = {"version": 1, "refs": refs} if v1 else refs
    try:
        parsed = parse_reference_bytes(json.dumps(doc).encode())
    except InvalidReferences as exc:
        assert str(exc).strip()
        return
    _check_tree(parsed)


@pytest.mark.parametrize(
    "refs, reason",
    [
        ({"../etc/passwd": "x"}, "'..' path segment"),
        ({"a/../../b": "x"}, "'..' path segment"),
        ({"/etc/passwd": "x"}, "absolute path"),
        ({"a/./b": "x"}, "'.' path segment"),
        ({"a\x00b": "x"}, "control character U+0000"),
        ({"a//b": "x"}, "empty path segment"),
        ({"a/": "x"}, "empty path segment"),
        ({"a": "x", "a/b": "y"}, "is a file and also the directory"),
        ({"k": ["s3://b/o", -1, 10]}, "offset must not be negative"),
        ({"k": ["s3://b/o", 0, -10]}, "length must not be negative"),
        ({"k": ["s3://b/o", 2**63, 1]}, "beyond 2**63"),
        ({"k": ["s3://b/o", 2**62, 2**62 + 1]}, "beyond 2**63"),
        ({"k": ["s3://b/o", "0", 1]}, "offset must be an integer"),
        ({"k": ["s3://b/o", 1.5, 1]}, "offset must be an integer"),
        ({"k": "base64:not base64!"}, "invalid base64"),
        ({"k": ["s3://b/o\x00/etc", 0, 1]}, "control character"),
        ({"k": [None, 0, 1]}, "no url"),
        ({"k": ["s3://b/o", 0]}, "[url] or [url, offset, length]"),
    ],
)
def test_each_hostile_entry_is_refused_naming_its_cause(refs, reason):
    with pytest.raises(InvalidReferences) as caught:
        Namespace(parse_reference_bytes(json.dumps(refs).encode()))
    assert reason in str(caught.value)


def test_duplicate_key_from_refs_and_gen_is_refused():
    doc = {
        "version": 1,
        "refs": {"x/0": "a"},
        "gen": [{"key": "x/{{i}}", "url": "s3://b/o", "offset": "{{i}}", "length": "1", "dimensions": {"i": [0, 1]}}],
    }
    with pytest.raises(InvalidReferences) as caught:
        parse_references(doc)
    assert "x/0" in str(caught.value)


def test_references_beyond_the_object_fail_alone(tmp_path):
    """A key that reaches past the object's end is EIO; its neighbours in the same block still read."""
    data = os.urandom(10_000)
    (tmp_path / "obj").write_bytes(data)
    url = str(tmp_path / "obj")
    refs = {"good": [url, 100, 5000], "tail": [url, 9000, 1000], "past": [url, 9500, 1000], "far": [url, 2**40, 10]}
    namespace = Namespace(parse_references(refs))
    backend = FsspecBackend(BackendOptions(policy=UrlPolicy(local_allowed=True), timeout=5))
    cache = BlockCache(backend, capacity=1 << 20, block_size=1 << 16, max_request=1 << 20)
    reader = Reader(namespace, cache, backend, readahead=0)
    try:
        assert reader.read(namespace.lookup("good"), 0, 5000) == data[100:5100]
        assert reader.read(namespace.lookup("tail"), 0, 4096) == data[9000:10_000]
        for key in ("past", "far"):
            with pytest.raises(BackendError) as caught:
                reader.read(namespace.lookup(key), 0, 4096)
            assert "beyond the end of the object (10000 bytes)" in str(caught.value)
            assert errno_for(caught.value) == 5
        assert reader.read(namespace.lookup("good"), 4000, 1000) == data[4100:5100]
    finally:
        reader.close()
        backend.close()


# --------------------------------------------------------------------------
# Every parser and every tree: a RefmountError naming the problem, or a consistent tree


def _refused_with_a_reason(exc: RefmountError) -> None:
    message = str(exc).strip()
    assert message and "Traceback" not in message
    assert len(message) < 2000  # names the cause; never echoes a whole hostile document


def _walk(tree) -> tuple[set[str], set[str]]:
    """(files, directories) reached by listing from the root, each listed name found by lookup."""
    files, dirs, stack = set(), {""}, [""]
    while stack:
        directory = stack.pop()
        for name in itertools.islice(tree.listdir(directory), 500):
            assert name and "/" not in name and name not in (".", ".."), name
            path = f"{directory}/{name}" if directory else name
            node = tree.lookup(path)
            if isinstance(node, Dir):
                dirs.add(path)
                stack.append(path)
            else:
                assert node.path == path
                files.add(path)
    return files, dirs


def _check_reference(ref) -> None:
    if isinstance(ref, Range):
        assert 0 <= ref.offset and 0 <= ref.length and ref.offset + ref.length <= 2**63
    if isinstance(ref, (Range, Whole)):
        assert ref.url and "\x00" not in ref.url


gen_dimension = st.one_of(
    st.fixed_dictionaries({"stop": st.integers(-3, 6)}, optional={"start": st.integers(-3, 3),
                                                                  "step": st.integers(-2, 3)}),
    st.lists(st.integers(-2, 5) | st.sampled_from(["a", "b", "..", ""]), max_size=3),
    st.fixed_dictionaries({"stop": st.sampled_from([2**63 - 1, 2**64, 10**7])},
                          optional={"start": st.sampled_from([-(2**63), 0, 2**70])}),
    st.none() | st.integers() | st.text(max_size=3),
)
gen_entries = st.fixed_dictionaries(
    {"key": st.sampled_from(["g/{{i}}", "g/{{i}}.{{j}}", "{{i}}", "g/{{ i * 2 }}", "g/{{k}}", "../{{i}}", "g/x",
                             "g/{{'%04d' % i}}", "g/{{i // 0}}"]),
     "url": st.sampled_from(["s3://b/f{{i}}", "data/{{i}}.bin", "", None, "{{j}}", "s3://b/{u}"]),
     "dimensions": st.dictionaries(st.sampled_from(["i", "j", "u", "for"]), gen_dimension, max_size=2)},
    optional={"offset": st.sampled_from([0, -1, "{{i * 10}}", "{{i - 5}}", "x", 2**63]),
              "length": st.sampled_from([1, -1, "{{j}}", "10", 2**63])},
)
documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 2, "1", None])},
    optional={"refs": st.dictionaries(hostile_keys, hostile_values, max_size=5),
              "gen": st.lists(gen_entries, max_size=2) | st.sampled_from([{}, "x", None]),
              "templates": st.sampled_from([{"u": "s3://b/t"}, {"1x": "a"}, {"u": 3}, [], None])},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.sampled_from([None, "/srv/sets/", "s3://bucket/sets/"]))
def test_generated_documents_give_a_refusal_or_the_same_tree_in_dict_and_compact_form(doc, base):
    """Through the JSON text (orjson, then the standard library) into both in-memory trees."""
    try:
        refs = parse_reference_bytes(json.dumps(doc).encode()) if base is None else parse_references(
            json.loads(json.dumps(doc)), base_url=base)
        plain, compact = Namespace(refs), CompactNamespace(refs)
    except RefmountError as exc:
        _refused_with_a_reason(exc)
        return
    assert len(refs) <= len(doc.get("refs") or {}) + 2 * 6 * 6 * 2
    for key, ref in refs.items():
        _check_reference(ref)
        if base is not None and isinstance(ref, (Range, Whole)) and "://" not in ref.url:
            assert ref.url.startswith("/"), ref.url  # relative URLs were resolved against the base
        assert compact.lookup(key) == plain.lookup(key)
    walked = _walk(plain)
    assert walked == _walk(compact)
    assert walked[0] == set(refs)


def _write_parquet_set(root: Path, shape, chunks, record_size, columns) -> None:
    meta = {".zgroup": {"zarr_format": 2},
            "v/.zarray": {"shape": shape, "chunks": chunks, "dtype": "|u1", "compressor": None, "filters": None,
                          "fill_value": 0, "order": "C", "zarr_format": 2}}
    (root / ".zmetadata").write_text(json.dumps({"metadata": meta, "record_size": record_size}))
    (root / "v").mkdir()
    if columns is not None:
        pq.write_table(pa.table(columns), root / "v" / "refs.0.parq")


parquet_integers = st.integers(-(2**63), 2**63 - 1)
record_columns = st.integers(1, 6).flatmap(lambda rows: st.fixed_dictionaries(
    {},
    optional={
        "path": st.lists(st.sampled_from(["s3://b/o", "data/a.bin", None, "s3://b/\x00"]), min_size=rows,
                         max_size=rows),
        "offset": st.lists(st.sampled_from([0, 1, -1, 2**62]) | parquet_integers, min_size=rows, max_size=rows),
        "size": st.lists(st.sampled_from([0, 4, -4, 2**62]) | parquet_integers, min_size=rows, max_size=rows),
        "raw": st.lists(st.sampled_from([None, b"inline"]), min_size=rows, max_size=rows)
               .map(lambda values: pa.array(values, pa.binary())),
    },
)) | st.none()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([0, 1, 3, 7, 2**45, 2**53, 2**54, -1]) | st.sampled_from([2.0, "3"]), max_size=3),
    st.lists(st.sampled_from([1, 2, 5, 0, -1]), max_size=3),
    st.sampled_from([1, 2, 4, 0, -3, "4"]),
    record_columns,
)
def test_generated_parquet_sets_give_a_refusal_or_a_consistent_tree(shape, chunks, record_size, columns):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        _write_parquet_set(root, shape, chunks, record_size, columns)
        try:
            tree = ParquetNamespace(fsspec.filesystem("file"), str(root), (root / ".zmetadata").read_bytes(),
                                    base=str(root) + "/")
            files, dirs = _walk(tree)
        except RefmountError as exc:
            _refused_with_a_reason(exc)
            return
        assert {".zgroup", "v/.zarray"} <= files and "v" in dirs
        for path in files:
            node = tree.lookup(path)
            assert isinstance(node, File)
            _check_reference(node.ref)
            if isinstance(node.ref, (Range, Whole)):
                assert node.ref.url.startswith(("s3://", str(root))), node.ref.url
        grid = math.prod(max(1, -(-int(s) // c)) for s, c in zip(shape, chunks, strict=False)) if shape else 1
        assert len([f for f in files if f.startswith("v/") and not f.startswith("v/.")]) <= min(grid, 500)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([".gz", ".bz2", ".xz", ".zst", ".json"]))
def test_arbitrary_bytes_into_the_decompressor_and_decoder(data, extension):
    for payload in (data, gzip.compress(data) if extension == ".gz" else data):
        try:
            text = decompress(payload, f"refs{extension}", limit=256)
            assert len(text) <= 256 or extension == ".json"
            decode_json(text)
        except RefmountError as exc:
            _refused_with_a_reason(exc)


@pytest.mark.parametrize("listed", [False, True], ids=["row-lookup", "listing"])
def test_a_parquet_url_with_a_control_character_is_refused(listed):
    """The row read of one chunk and the whole-record decode of a listing refuse the same URL."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        _write_parquet_set(root, [2], [1], 10, {"path": ["s3://b/o", "s3://b/\x00"], "offset": [0, 0],
                                                "size": [4, 4]})
        tree = ParquetNamespace(fsspec.filesystem("file"), str(root), (root / ".zmetadata").read_bytes(),
                                base=str(root) + "/")
        with pytest.raises(RefmountError, match="control character U\\+0000"):
            if listed:
                _walk(tree)
            else:
                tree.lookup("v/1")
