"""The RangeReader contract: one test body, run against the backend over each kind of store.

What the block cache relies on from :class:`~refmount.store.base.RangeReader`:
every range comes back with exactly the object's bytes, in the order asked;
the size is the object's; after the first contact the size is known without
another request; a range the object cannot fill, and a missing object, are
errors at once (no retries, never short data); no ranges, no request.

How a store that fails (5xx, resets, stalls, bodies of the wrong length) or
an object that changes is answered is the fault contract's
(:mod:`tests.contracts.fault_contract`), through a real mount; not repeated
here.

A subclass supplies ``put`` (store an object, return its URL) and
``backend`` (an :class:`~refmount.store.fsspec_store.FsspecBackend` that can
reach it).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

import pytest

from refmount.byterange import ByteRange
from refmount.errors import BackendError, errno_for
from refmount.store.fsspec_store import FsspecBackend
from refmount.store.options import BackendOptions
from refmount.store.policy import UrlPolicy

SIZE = 300_000  # several blocks of any sensible block size, and more than one TCP window

Put = Callable[[str, bytes], str]


class RangeReaderContract:
    """The contract; subclasses provide the ``put`` and ``backend`` fixtures."""

    @pytest.fixture
    def put(self) -> Put:  # pragma: no cover - always overridden
        raise NotImplementedError("a RangeReaderContract subclass must provide put")

    @pytest.fixture
    def backend(self) -> FsspecBackend:  # pragma: no cover - always overridden
        raise NotImplementedError("a RangeReaderContract subclass must provide backend")

    @pytest.fixture
    def stored(self, put: Put) -> tuple[str, bytes]:
        data = os.urandom(SIZE)
        return put("object.bin", data), data

    def test_several_ranges_come_back_in_order_with_the_objects_bytes(self, backend, stored):
        url, data = stored
        ranges = [ByteRange(100_000, 170_000), ByteRange(0, 10), ByteRange(5, 6), ByteRange(0, SIZE),
                  ByteRange(SIZE - 10, SIZE), ByteRange(150_000, 150_001), ByteRange(120_000, 160_000)]
        assert backend.read_ranges(url, ranges) == [data[r.start : r.stop] for r in ranges]
        assert backend.metrics.get("bytes_fetched") == sum(r.length for r in ranges)

    @pytest.mark.parametrize("piece", [1, 4096, 65_536, SIZE, SIZE + 1])
    def test_pieces_are_the_ranges_bytes_cut_from_each_ranges_start(self, backend, stored, piece):
        url, data = stored
        ranges = [ByteRange(100_000, 170_000), ByteRange(0, 10), ByteRange(0, SIZE), ByteRange(7, 7)]
        for rng, pieces in zip(ranges, backend.read_pieces(url, ranges, piece), strict=True):
            expected = data[rng.start : rng.stop]
            assert b"".join(pieces) == expected
            if rng.length == 0:
                assert pieces == [b""]
                continue
            assert all(len(p) == piece for p in pieces[:-1]) and 0 < len(pieces[-1]) <= piece
            assert len(pieces) == -(-rng.length // piece)
        assert backend.metrics.get("bytes_fetched") == sum(r.length for r in ranges)
        with pytest.raises(ValueError, match="piece_size"):
            backend.read_pieces(url, ranges, 0)

    def test_the_size_is_the_objects_and_is_known_after_the_first_contact(self, backend, put):
        url = put("sized.bin", os.urandom(SIZE))
        assert backend.size(url) == SIZE
        lookups = backend.metrics.get("heads")
        assert lookups >= 1
        assert backend.known_size(url) == SIZE
        assert backend.size(url) == SIZE
        assert backend.metrics.get("heads") == lookups  # answered from what the first contact saw

    def test_known_size_is_answered_from_a_read_as_well(self, backend, stored):
        url, data = stored
        assert backend.read_ranges(url, [ByteRange(0, 10)]) == [data[:10]]
        lookups, gets = backend.metrics.get("heads"), backend.metrics.get("gets")
        assert backend.known_size(url) == SIZE
        assert (backend.metrics.get("heads"), backend.metrics.get("gets")) == (lookups, gets)

    @pytest.mark.parametrize("past", [ByteRange(SIZE - 10, SIZE + 10), ByteRange(SIZE, SIZE + 1),
                                      ByteRange(SIZE + 1000, SIZE + 2000)],
                             ids=["across-the-end", "just-past", "far-past"])
    def test_a_range_past_the_end_is_an_error_at_once_never_short_data(self, backend, stored, past):
        url, data = stored
        with pytest.raises(BackendError) as failure:
            backend.read_ranges(url, [ByteRange(0, 10), past])
        assert errno_for(failure.value) == errno.EIO
        assert backend.metrics.get("get_retries") == 0  # a retry cannot make the object longer
        # The object itself is still fine to read.
        assert backend.read_ranges(url, [ByteRange(SIZE - 10, SIZE)]) == [data[-10:]]

    def test_a_missing_object_is_an_error_at_once_naming_it(self, backend, put):
        url = put("present.bin", b"x")
        missing = url.replace("present.bin", "absent.bin")
        for call in (lambda: backend.read_ranges(missing, [ByteRange(0, 1)]), lambda: backend.size(missing),
                     lambda: backend.known_size(missing)):
            with pytest.raises(BackendError, match="absent.bin: object not found") as failure:
                call()
            assert errno_for(failure.value) == errno.EIO
        assert backend.metrics.get("get_retries") == 0  # a retry cannot make it exist
        assert backend.metrics.get("gets") == 0  # the lookup at first access already failed

    def test_no_ranges_is_no_bytes_and_no_request(self, backend, stored):
        url, _ = stored
        assert backend.read_ranges(url, []) == []
        assert (backend.metrics.get("heads"), backend.metrics.get("gets")) == (0, 0)


def _closing(backend: FsspecBackend) -> Iterator[FsspecBackend]:
    try:
        yield backend
    finally:
        backend.close()


class TestLocalFiles(RangeReaderContract):
    @pytest.fixture
    def put(self, tmp_path) -> Put:
        def put(name: str, data: bytes) -> str:
            path = tmp_path / name
            path.write_bytes(data)
            return str(path)

        return put

    @pytest.fixture
    def backend(self) -> Iterator[FsspecBackend]:
        yield from _closing(FsspecBackend(BackendOptions(policy=UrlPolicy(local_allowed=True), timeout=10)))


class TestHTTP(RangeReaderContract):
    @pytest.fixture
    def put(self, http_server) -> Put:
        return http_server.put

    @pytest.fixture
    def backend(self) -> Iterator[FsspecBackend]:
        yield from _closing(FsspecBackend(BackendOptions(timeout=10)))


class TestS3(RangeReaderContract):
    @pytest.fixture
    def put(self, local_s3, s3_bucket) -> Put:
        def put(name: str, data: bytes) -> str:
            url = f"s3://{s3_bucket}/{name}"
            local_s3.put(url, data)
            return url

        return put

    @pytest.fixture
    def backend(self, local_s3) -> Iterator[FsspecBackend]:
        credentials = {k: local_s3.storage_options()[k] for k in ("key", "secret")}
        options = BackendOptions(endpoint_url=local_s3.endpoint_url, region="us-east-1", timeout=10,
                                 storage_options={"s3": credentials})
        yield from _closing(FsspecBackend(options))
