"""Shared fixtures: the real servers every test layer runs against.

Nothing here skips. If ``weed`` or FUSE is missing the tests that need them
must fail loudly, so a CI machine that lost a dependency cannot go green.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

# hdf5plugin first, before anything imports netCDF4: netCDF4 points HDF5_PLUGIN_PATH at its own
# filter plugins, built against its own copy of HDF5. hdf5plugin registers a filter with h5py only
# when h5py does not already find one, and h5py would find netCDF4's, which then fails inside h5py's
# HDF5 ("error during user callback") when a test writes a Blosc or Zstd dataset.
import hdf5plugin  # noqa: F401
import pytest

from refmount.devtools.localstore import LocalS3, LocalS3Error
from tests.support.http_range_server import RangeHTTPServer
from tests.support.s3proxy import S3Proxy

# The session's store, so a failing test's report can carry the server log.
_STORE: LocalS3 | None = None


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One SeaweedFS S3 server for the whole session, stopped at the end whatever happens.

    Its directory lives under pytest's basetemp, so the log (``weed.log``)
    of the last few runs stays around for post-mortems.
    """
    global _STORE
    store = LocalS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        store.start()
    except LocalS3Error as exc:
        store.stop()
        pytest.fail(f"could not start the local S3 server: {exc}", pytrace=False)
    except BaseException:
        print(store.log_tail())
        store.stop()
        raise
    _STORE = store
    try:
        yield store
    finally:
        _STORE = None
        store.close()


@pytest.fixture
def s3_bucket(local_s3: LocalS3) -> Iterator[str]:
    """A fresh, empty bucket with a unique name; deleted (with its contents) afterwards.

    Deleting matters: every SeaweedFS bucket holds a volume, and a long
    session would otherwise run out of them.
    """
    local_s3.start()  # no-op when running; revives it if an earlier test left it stopped
    name = f"t-{uuid.uuid4().hex[:16]}"
    local_s3.create_bucket(name)
    yield name
    if local_s3.running:
        try:
            local_s3.delete_bucket(name)
        except Exception as exc:  # noqa: BLE001 - teardown must not mask the test's own outcome
            print(f"could not delete bucket {name}: {exc!r}")


@pytest.fixture
def s3_proxy(local_s3: LocalS3) -> Iterator[S3Proxy]:
    """A counting, fault-injecting proxy in front of ``local_s3``; use its ``storage_options()``."""
    local_s3.start()
    with S3Proxy(local_s3.endpoint_url, local_s3) as proxy:
        yield proxy


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[RangeHTTPServer]:
    """A range-capable HTTP server on an empty directory (``http_server.root``); write files there."""
    root = tmp_path / "http-root"
    root.mkdir()
    with RangeHTTPServer(root) as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use the S3 server with ``s3`` so ``-m 'not s3'`` can select around them."""
    s3_fixtures = {"local_s3", "s3_bucket", "s3_proxy"}
    for item in items:
        if s3_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tail of the SeaweedFS log to failing tests that used it."""
    report = yield
    if report.failed and _STORE is not None and "local_s3" in getattr(item, "fixturenames", ()):
        report.sections.append(("seaweedfs log (tail)", _STORE.log_tail(40)))
    return report
