"""Where kerchunk's SingleHdf5ToZarr references a dataset, our references decode to the same array.

kerchunk is a test dependency. Datasets either tool cannot handle are
printed (run with -s) and recorded as a test property.
"""

from __future__ import annotations

import posixpath
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (lets h5py copy plugin-filtered datasets)
import numpy as np
import pytest

from refmount.scan import scan_hdf5
from tests.support.datasets import kerchunk_translate
from tests.support.h5matrix import make_matrix, make_netcdf
from tests.support.scan_fixtures import (
    assert_same_array,
    h5_datasets,
    h5_values,
    open_refs,
)


@pytest.mark.parametrize("maker", [make_matrix, make_netcdf], ids=["matrix", "netcdf"])
def test_same_arrays_as_kerchunk(maker, tmp_path: Path, record_property) -> None:
    path = maker(tmp_path)
    compared, only_ours, only_theirs, kerchunk_wrong = [], [], [], []
    files = [path] if _kerchunk(path) is not None else _split(path, tmp_path / "split")
    for file in files:
        theirs_refs = _kerchunk(file)
        ours = open_refs(scan_hdf5(str(file)).refs)
        theirs = open_refs(theirs_refs) if theirs_refs is not None else None
        datasets = h5_datasets(file)
        for name in datasets:
            a = _read(ours, name)
            b = _read(theirs, name) if theirs is not None else None
            if a is None and b is None:
                continue
            if b is None:
                only_ours.append(name)
            elif a is None:
                only_theirs.append(name)
            else:
                truth = h5_values(datasets[name])
                assert_same_array(a, truth, name)
                try:
                    assert_same_array(np.asarray(b), truth, name)
                except AssertionError as exc:
                    kerchunk_wrong.append(f"{name} ({str(exc).splitlines()[0]})")
                compared.append(name)
    print(f"\n{path.name}: compared {len(compared)} datasets with kerchunk")
    print(f"  handled only by refmount: {only_ours}")
    print(f"  handled only by kerchunk: {only_theirs}")
    print(f"  kerchunk's references decode differently from h5py: {kerchunk_wrong}")
    record_property("only_refmount", ",".join(only_ours))
    record_property("only_kerchunk", ",".join(only_theirs))
    record_property("kerchunk_differs_from_h5py", ",".join(kerchunk_wrong))
    assert len(compared) >= (40 if maker is make_matrix else 5)
    # kerchunk turns object references into strings of target names; we report them instead.
    assert set(only_theirs) <= {"refs/objref"}, f"kerchunk reads datasets we do not: {only_theirs}"


def _kerchunk(path: Path) -> dict | None:
    """kerchunk's references for a file, or None when it fails on the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return kerchunk_translate(str(path), inline_threshold=100)
        except Exception:  # noqa: BLE001 - kerchunk failing on a layout is a finding, reported below
            return None


def _split(path: Path, directory: Path) -> list[Path]:
    """One file per dataset (same path, filters and layout), so a failure stays local."""
    directory.mkdir()
    out = []
    with h5py.File(path, "r") as src:
        for i, name in enumerate(h5_datasets(path)):
            target = directory / f"{i}.h5"
            with h5py.File(target, "w") as dst:
                parent = posixpath.dirname(name)
                group = dst.require_group(parent) if parent else dst
                src.copy(src[name], group, name=posixpath.basename(name))
            out.append(target)
    return out


def _read(group, name: str):
    """The array's values, or None when the references do not yield it."""
    try:
        return group[name][...]
    except Exception:  # noqa: BLE001 - a dataset zarr cannot read is reported by the caller
        return None
