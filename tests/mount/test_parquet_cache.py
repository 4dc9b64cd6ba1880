"""The record-file LRU of a Parquet set: a real option, and a bound of N keeps at most N record files."""

from __future__ import annotations

import os

import fsspec
import pytest

from refmount.cli.main import build_parser, mount_config
from refmount.config.file import parse_config
from refmount.config.options import MountConfig, parse_mount_options
from refmount.errors import ConfigError
from refmount.refs.model import Range
from refmount.refs.parquet.layout import DEFAULT_RECORD_CACHE
from refmount.refs.parquet.tree import ParquetNamespace
from refmount.refs.parquet.write import write_parquet
from tests.support.mounting import mounted

GRID = 60  # one variable of 60 chunks, 6 record files of 10
RECORD_SIZE = 10
LOADED = "loaded record file"


@pytest.fixture(scope="module")
def parquet_set(tmp_path_factory):
    base = tmp_path_factory.mktemp("lru")
    data = base / "data.bin"
    data.write_bytes(bytes(range(256)) * 2)

    def items():
        from refmount.refs.model import Inline

        yield ".zgroup", Inline(b'{"zarr_format":2}')
        yield "v/.zarray", Inline(b'{"shape":[60],"chunks":[1],"dtype":"|u1","compressor":null,"fill_value":0,'
                                  b'"filters":null,"order":"C","zarr_format":2}')
        for n in range(GRID):
            yield f"v/{n}", Range(str(data), n, 8)

    write_parquet(items, str(base / "set.parq"), record_size=RECORD_SIZE)
    return base


def _namespace(parquet_set, bound: int) -> ParquetNamespace:
    root = parquet_set / "set.parq"
    return ParquetNamespace(fsspec.filesystem("file"), str(root), (root / ".zmetadata").read_bytes(),
                            record_cache=bound)


@pytest.mark.parametrize("bound", [1, 2, 4])
def test_a_bound_of_n_keeps_at_most_n_record_files(parquet_set, bound):
    namespace = _namespace(parquet_set, bound)
    for n in list(range(GRID)) + list(range(GRID - 1, -1, -1)):
        namespace.lookup(f"v/{n}")
        assert namespace.records_cached <= bound
    assert namespace.records_cached == bound
    loaded = namespace.records_loaded
    namespace.lookup("v/0")  # record 0: among the last `bound` used when walking back down
    assert namespace.records_loaded == loaded
    namespace.lookup(f"v/{GRID - 1}")  # record 5: evicted (unless all six fit)
    assert namespace.records_loaded == loaded + (1 if bound < 6 else 0)
    assert len(list(namespace.listdir("v"))) == GRID + 1
    assert namespace.records_cached <= bound


def test_the_option_is_a_flag_an_o_option_and_a_config_key(tmp_path):
    assert MountConfig("s", "m").record_cache == DEFAULT_RECORD_CACHE
    assert parse_mount_options("record_cache=5")[0] == {"record_cache": 5}
    assert parse_config("record_cache = 6\n").values == {"record_cache": 6}
    args = build_parser().parse_args(["mount", "src", str(tmp_path), "--record-cache", "7"])
    assert mount_config(args).record_cache == 7
    with pytest.raises(ConfigError, match="record_cache"):
        MountConfig("s", "m", record_cache=-1)


@pytest.mark.fuse
def test_a_mount_with_record_cache_2_refetches_the_third_record_back(parquet_set, tmp_path):
    with mounted(parquet_set / "set.parq", tmp_path / "mnt", ["-o", "record_cache=2"]) as m:
        def loads() -> int:
            return m.log().count(LOADED)

        for n in (0, 10, 20):  # records 0, 1, 2: record 0 is dropped
            os.stat(m.path / f"v/{n}")
        assert loads() == 3
        os.stat(m.path / "v/21")  # record 2: still held
        os.stat(m.path / "v/11")  # record 1: still held
        assert loads() == 3
        os.stat(m.path / "v/1")  # record 0: fetched again
        assert loads() == 4
        assert "record_cache=2" in m.log()


def test_a_short_record_file_does_not_shift_the_names_after_it(parquet_set, tmp_path):
    """Rows missing from the end of a record file are absent chunks; later records keep their names."""
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "short.parq"
    shutil.copytree(parquet_set / "set.parq", copy)
    first = copy / "v" / "refs.0.parq"
    pq.write_table(pq.read_table(first).slice(0, 4), first)
    namespace = ParquetNamespace(fsspec.filesystem("file"), str(copy), (copy / ".zmetadata").read_bytes())
    names = [name for name in namespace.listdir("v") if not name.startswith(".")]
    assert names == [str(n) for n in range(4)] + [str(n) for n in range(RECORD_SIZE, GRID)]
    assert namespace.lookup("v/11").ref == Range(str(parquet_set / "data.bin"), 11, 8)


@pytest.mark.parametrize("bound", [1, 32])
def test_a_listing_loads_each_record_file_once(parquet_set, bound):
    """With room for two records the next one is decoded ahead; never twice, never beyond the field."""
    namespace = _namespace(parquet_set, bound)
    for _ in range(3):
        names = namespace.listdir("v")
        assert next(names) == ".zarray"
        assert sum(1 for _ in names) == GRID
        assert namespace.records_loaded <= GRID // RECORD_SIZE * (1 if bound > 1 else 3)
    assert namespace.records_loaded == GRID // RECORD_SIZE * (1 if bound > 1 else 3)


def test_a_corrupt_record_file_fails_the_listing_naming_it(parquet_set, tmp_path):
    import shutil

    from refmount.errors import InvalidReferences

    copy = tmp_path / "corrupt.parq"
    shutil.copytree(parquet_set / "set.parq", copy)
    (copy / "v" / "refs.3.parq").write_bytes(b"PAR1 but not really")
    namespace = ParquetNamespace(fsspec.filesystem("file"), str(copy), (copy / ".zmetadata").read_bytes())
    names = namespace.listdir("v")
    with pytest.raises(InvalidReferences, match=r"refs\.3\.parq"):
        for _ in names:
            pass
    assert namespace.lookup("v/41").ref.offset == 41  # the records after it still serve
