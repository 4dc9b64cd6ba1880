"""Large sets: the compact JSON tree agrees with the plain one; big variables list by streaming.

Sizes here are modest (the 1M/10M cases are in benchmarks/bench_scale.py);
what is checked is behaviour, not speed.
"""

from __future__ import annotations

import json
import os
import random
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmount.errors import InvalidReferences, NotADirectory, NotFound
from refmount.mount.control import read_stats
from refmount.refs.compact import CompactNamespace
from refmount.refs.kerchunk.parse import parse_references
from refmount.refs.model import Inline, Range, Whole
from refmount.refs.open import open_reference_set
from refmount.refs.parquet.write import write_parquet
from refmount.refs.tree import Dir, File, Namespace
from tests.support.datasets import kerchunk_references, write_hdf5
from tests.support.mounting import mounted


def _assert_same_tree(plain: Namespace, compact: CompactNamespace) -> None:
    assert len(compact) == len(plain)
    assert compact.directory_count == plain.directory_count
    referenced = {ref.url for _, ref in plain.iter_references() if isinstance(ref, (Range, Whole))}
    assert set(compact.urls) == referenced  # (the plain tree leaves out URLs only read for 0 bytes)
    assert set(plain.urls) <= referenced
    for url in plain.urls:
        assert compact.extent(url) == plain.extent(url)
    for key in plain:
        assert compact.lookup(key) == plain.lookup(key)
        assert compact.lookup("/" + key) == plain.lookup("/" + key)
    directories = {""} | {key.rsplit("/", 1)[0] for key in plain if "/" in key}
    for directory in list(directories):
        while directory:
            directory = directory.rpartition("/")[0]
            directories.add(directory)
    for directory in directories:
        assert sorted(compact.listdir(directory)) == sorted(plain.listdir(directory))
        prefix = directory + "/" if directory else ""
        for name, size in compact.listdir_sizes(directory):  # what a listing hands the kernel
            node = plain.lookup(prefix + name)
            if isinstance(node, Dir):
                assert size is None, prefix + name
            else:
                assert size == (-1 if isinstance(node.ref, Whole) else node.ref.size), prefix + name
        assert [name for name, _ in compact.listdir_sizes(directory)] == list(compact.listdir(directory))
        assert compact.subdirectory_count(directory) == plain.subdirectory_count(directory)
        assert isinstance(compact.lookup(directory), Dir)
    assert dict(compact.iter_references()) == dict(plain.iter_references())


def test_compact_tree_equals_the_plain_tree_on_a_real_set(tmp_path):
    write_hdf5(tmp_path / "d.h5")
    refs = parse_references(kerchunk_references(tmp_path / "d.h5", str(tmp_path / "d.h5")))
    _assert_same_tree(Namespace(refs), CompactNamespace(refs))


_names = st.text(alphabet="abc.0é", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
_keys = st.lists(_names, min_size=1, max_size=3).map("/".join)
_refs = st.one_of(
    st.binary(max_size=8).map(Inline),
    st.tuples(st.sampled_from(["s3://b/x", "s3://b/y", "https://h/z"]), st.integers(0, 2**40), st.integers(0, 2**33))
    .map(lambda t: Range(*t)),
    st.sampled_from(["s3://b/x", "s3://b/w"]).map(Whole),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _refs, max_size=25))
def test_compact_tree_equals_the_plain_tree_on_random_sets(refs):
    try:
        plain = Namespace(refs)
    except InvalidReferences:
        with pytest.raises(InvalidReferences):
            CompactNamespace(refs)
        return
    _assert_same_tree(plain, CompactNamespace(refs))


def test_compact_tree_refuses_a_key_that_is_also_a_directory():
    refs = {"a/b": Inline(b"x"), "a/b/c": Inline(b"y")}
    with pytest.raises(InvalidReferences, match="a/b"):
        CompactNamespace(refs)


def test_listings_stream_and_errors_come_first():
    refs = {f"v/{i}": Range("s3://b/x", i * 10, 10) for i in range(10_000)}
    namespace = CompactNamespace(refs)
    names = namespace.listdir("v")
    assert isinstance(names, types.GeneratorType)
    assert next(names) == "0"
    assert sum(1 for _ in names) == 9_999
    with pytest.raises(NotADirectory):
        namespace.listdir("v/3")
    with pytest.raises(NotFound):
        namespace.listdir("w")
    with pytest.raises(NotADirectory):
        namespace.listdir_sizes("v/3")
    with pytest.raises(NotFound):
        namespace.listdir_sizes("w")
    assert isinstance(namespace.lookup("v/9999"), File)
    assert namespace.extent("s3://b/x") == 100_000


def test_json_sets_open_in_the_compact_form(tmp_path):
    path = tmp_path / "refs.json"
    refs = {f"v/{i}.0": ["s3://b/x", i, 1] for i in range(1000)}
    refs["v/.zarray"] = {"shape": [1000, 1], "chunks": [1, 1]}
    path.write_text(json.dumps({"version": 1, "refs": refs}))
    info, namespace = open_reference_set(str(path))
    assert info.format == "json" and isinstance(namespace, CompactNamespace)
    assert namespace.lookup("v/999.0").ref == Range("s3://b/x", 999, 1)
    assert namespace.lookup("v/.zarray").ref.data == b'{"shape":[1000,1],"chunks":[1,1]}'


GRID = (400, 500)  # 200,000 chunks
RECORD = 20_000


def _big_set(data_file: str):
    """Chunk (i, j) is 4 bytes of the data file; every 7th chunk is missing."""

    def items():
        yield ".zgroup", Inline(b'{"zarr_format":2}')
        yield "big/.zarray", Inline(json.dumps({
            "shape": list(GRID), "chunks": [1, 1], "dtype": "<i4", "compressor": None, "fill_value": 0,
            "filters": None, "order": "C", "zarr_format": 2,
        }).encode())
        for n in range(GRID[0] * GRID[1]):
            if n % 7:
                yield f"big/{n // GRID[1]}.{n % GRID[1]}", Range(data_file, (n % 1000) * 4, 4)

    return items


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    base = tmp_path_factory.mktemp("big")
    data = base / "data.bin"
    data.write_bytes(bytes(range(256)) * 16)
    write_parquet(_big_set(str(data)), str(base / "big.parq"), record_size=RECORD)
    return base


@pytest.mark.fuse
def test_a_large_parquet_variable_lists_and_stats_lazily(big_parquet, tmp_path):
    total = GRID[0] * GRID[1]
    present = total - len(range(0, total, 7))
    with mounted(big_parquet / "big.parq", tmp_path / "mnt") as m:
        rng = random.Random(3)
        stats = 0
        for _ in range(20):
            n = rng.randrange(total)
            path = m.path / f"big/{n // GRID[1]}.{n % GRID[1]}"
            if n % 7:
                assert path.stat().st_size == 4
                stats += 1
            else:
                assert not path.exists()
        loaded = m.log().count("loaded record file")
        assert 1 <= loaded <= 20, "one record file at most per chunk looked up"
        names = os.listdir(m.path / "big")
        assert len(names) == present + 1  # and .zarray
        assert "0.0" not in names and "0.1" in names and f"{GRID[0] - 1}.{GRID[1] - 1}" in names
        assert m.log().count("loaded record file") <= loaded + total // RECORD
        assert read_stats(str(m.path))["listed_with_attrs"] == 0  # a listing looks no Parquet entry up
        data = (big_parquet / "data.bin").read_bytes()
        assert (m.path / "big/3.17").read_bytes() == data[((3 * GRID[1] + 17) % 1000) * 4:][:4]
