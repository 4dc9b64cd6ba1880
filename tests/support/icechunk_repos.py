"""Real Icechunk repositories for the tests, written with icechunk and zarr-python 3.

Each repository holds the three kinds of chunk a mount must serve: native
chunks (written by zarr, stored as ``chunks/<id>`` objects), inline chunks
(small enough for icechunk to keep them in the manifest) and virtual chunks
(byte ranges of an HDF5 file written with h5py, registered with
``set_virtual_ref``), in a nested group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import icechunk
import numpy as np
import zarr

#: icechunk's warning that local storage is unsafe for concurrent commits is noise here.
icechunk.set_logs_filter("error")


@dataclass
class BuiltRepository:
    storage: Any
    container: str  # the url prefix of the virtual chunk container
    snapshots: dict[str, str]  # label -> snapshot id


def write_hdf5(path: str) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """An uncompressed chunked int32 dataset; ``(data, [(row chunk, offset, size)])`` of its chunks."""
    data = np.arange(6 * 10, dtype="<i4").reshape(6, 10) * 7 - 100
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(2, 10))
    with h5py.File(path, "r") as f:
        dataset = f["v"]
        chunks = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    return data, [(info.chunk_offset[0] // 2, info.byte_offset, info.size) for info in chunks]


def build_repository(storage: Any, hdf5_url: str, container: str, container_store: Any,
                     chunks: list[tuple[int, int, int]]) -> BuiltRepository:
    """Commit ``v1`` (tagged), then ``v2`` on main, to ``storage``; virtual chunks point at ``hdf5_url``."""
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(container, container_store))
    repo = icechunk.Repository.create(storage, config=config)
    snapshots: dict[str, str] = {}

    session = repo.writable_session("main")
    root = zarr.group(session.store, attributes={"title": "icechunk test"})
    native = root.create_array("native", shape=(1000,), chunks=(300,), dtype="f8", fill_value=0.0,
                               dimension_names=["t"])
    native[:] = np.random.default_rng(7).random(1000)
    small = root.create_array("small", shape=(6,), chunks=(2,), dtype="i2", fill_value=-1)
    small[:4] = np.array([1, 2, 3, 4], dtype="i2")  # the last chunk is never written: fill value
    group = root.create_group("sub", attributes={"kind": "virtual"})
    group.create_array("virt", shape=(6, 10), chunks=(2, 10), dtype="<i4", compressors=None, fill_value=0,
                       dimension_names=["y", "x"])
    for row, offset, size in chunks:
        session.store.set_virtual_ref(f"sub/virt/c/{row}/0", hdf5_url, offset=offset, length=size)
    snapshots["v1"] = session.commit("first")
    repo.create_tag("v1", snapshots["v1"])

    session = repo.writable_session("main")
    zarr.open_array(session.store, path="small", mode="r+")[:2] = np.array([10, 20], dtype="i2")
    snapshots["v2"] = session.commit("second")
    return BuiltRepository(storage, container, snapshots)


def read_in_process(storage: Any, container: str, credentials: Any = None, **version: str) -> dict[str, Any]:
    """Every array and attribute of the repository as icechunk and zarr read it: the oracle."""
    access = {container: None} if credentials is None else icechunk.containers_credentials({container: credentials})
    repo = icechunk.Repository.open(storage, authorize_virtual_chunk_access=access)
    session = repo.readonly_session(**(version or {"branch": "main"}))
    return snapshot_of(zarr.open_group(session.store, mode="r"))


def snapshot_of(group: zarr.Group) -> dict[str, Any]:
    found: dict[str, Any] = {"/attrs": dict(group.attrs)}
    for name, member in group.members(max_depth=None):
        if isinstance(member, zarr.Array):
            found[name] = member[...]
            found[f"{name}/dims"] = tuple(member.metadata.dimension_names or ())
        else:
            found[f"{name}/attrs"] = dict(member.attrs)
    return found


def assert_same(shown: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    assert sorted(shown) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(shown[key], value, err_msg=key)
            assert shown[key].dtype == value.dtype, key
        else:
            assert shown[key] == value, key
