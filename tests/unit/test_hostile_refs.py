"""Hostile and broken reference sets: refused with a reason, or EIO for the bad key alone.

Property tests feed the parser and the tree builder arbitrary JSON and
near-valid sets: they must never crash, never produce a path that leaves the
mountpoint, and every refusal must say what is wrong.
"""

from __future__ import annotations

import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refmount.errors import BackendError, InvalidReferences, errno_for
from refmount.read.cache import BlockCache
from refmount.read.reader import Reader
from refmount.refs.kerchunk.parse import parse_reference_bytes, parse_references
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
