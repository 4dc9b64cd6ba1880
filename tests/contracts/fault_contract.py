"""What a mount does when its object store fails: one test body, run against each store.

Every read either returns the reference's exact bytes or fails with EIO
(ESTALE for a changed object) within the configured bound, and the daemon
survives to serve the next read once the store is healthy again. Readers
run in child processes with timeouts, so a hang fails a test instead of CI.

A test module subclasses :class:`FaultContract` and supplies a ``store``
fixture (scope ``class``) returning a :class:`~tests.faultstores.FaultStore`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.faultstores import COMMON_FAULTS, FaultStore
from tests.support.mounting import mounted
from tests.support.readers import read_file

KEY_SIZE = 32 << 10
KEYS = 96
TIMEOUT = 6.0  # the mount's `timeout`; `retries` is 4, so one silent attempt is cut after 1.5 s
BOUND = 3 * TIMEOUT + 10  # a reader still blocked after this is a hang
MOUNT_OPTIONS = [
    "--timeout", str(TIMEOUT), "--retries", "4", "--block-size", "32K", "--readahead", "0",
    "--cache-size", "1M", "--max-request", "1M",
]
TRANSIENT = ("503", "500", "reset", "stall", "short", "wrong_length", "wrong_range", "partial_200")
PERSISTENT = ("503", "reset", "stall", "short", "wrong_length", "oversized", "wrong_range", "partial_200")
assert set(TRANSIENT) | set(PERSISTENT) <= set(COMMON_FAULTS)

_READ_TO_THE_END = (
    "import errno,sys\n"
    "try:\n    open(sys.argv[1],'rb').read(); print('OK')\n"
    "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
)


class FaultContract:
    """The fault tests; subclasses provide ``store`` and may list ``extra_persistent`` faults."""

    #: Persistent faults only some stores can produce (e.g. a server that ignores Range).
    extra_persistent: tuple[str, ...] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "persistent_fault" in metafunc.fixturenames:
            metafunc.parametrize("persistent_fault", PERSISTENT + self.extra_persistent)

    @pytest.fixture(scope="class")
    def store(self) -> FaultStore:  # pragma: no cover - always overridden
        raise NotImplementedError("a FaultContract subclass must provide the store fixture")

    @pytest.fixture(scope="class")
    def dataset(self, store, tmp_path_factory):
        """Keys k/0..k/95 (one block each), a 4 MiB object, and objects for the staleness tests."""
        base = tmp_path_factory.mktemp(f"faults-{store.name}")
        data = os.urandom(KEY_SIZE * KEYS)
        big = os.urandom(4 << 20)
        mutable = os.urandom(KEY_SIZE * 4)
        recorded_wrong = os.urandom(KEY_SIZE)
        urls = {
            "data": store.put("data.bin", data),
            "big": store.put("big.bin", big),
            "mutable": store.put("mutable.bin", mutable),
            "stale": store.put("stale.bin", recorded_wrong),
        }
        refs = {f"k/{i}": [urls["data"], i * KEY_SIZE, KEY_SIZE] for i in range(KEYS)}
        refs["big"] = [urls["big"], 0, len(big)]
        refs.update({f"mut/{i}": [urls["mutable"], i * KEY_SIZE, KEY_SIZE] for i in range(4)})
        refs["stale/0"] = [urls["stale"], 0, KEY_SIZE]
        doc = {
            "version": 1,
            "refs": refs,
            "refmount": {
                "sources": {
                    urls["data"]: {"size": len(data), "etag": store.etag("data.bin")},
                    urls["stale"]: {"size": len(recorded_wrong), "etag": '"0123456789abcdef"'},
                }
            },
        }
        path = base / "refs.json"
        path.write_text(json.dumps(doc))
        return {"refs": str(path), "data": data, "big": big, "mutable": mutable, "base": base,
                "fresh": itertools.count(1)}

    @pytest.fixture(scope="class")
    def mount(self, store, dataset):
        options = [*MOUNT_OPTIONS, *store.mount_options()]
        with mounted(dataset["refs"], dataset["base"] / "mnt", options, env=store.mount_env()) as m:
            assert read_file(m.path / "k/0", timeout=BOUND).data == dataset["data"][:KEY_SIZE]
            yield m

    @pytest.fixture(autouse=True)
    def healthy(self, store):
        store.heal()
        yield
        store.heal()

    @staticmethod
    def fresh_key(dataset) -> tuple[str, bytes]:
        """A key no earlier test read (so neither the kernel nor the block cache holds it)."""
        i = next(dataset["fresh"])
        assert i < KEYS, "add keys to the dataset"
        return f"k/{i}", dataset["data"][i * KEY_SIZE : (i + 1) * KEY_SIZE]

    @pytest.mark.parametrize("fault", TRANSIENT)
    def test_transient_faults_are_retried_and_the_bytes_are_right(self, store, dataset, mount, fault):
        key, expected = self.fresh_key(dataset)
        before = store.gets()
        store.inject(fault, 2)
        result = read_file(mount.path / key, timeout=BOUND)
        assert result.ok, f"{fault}: {result.error}\n{mount.log()[-3000:]}"
        assert result.data == expected
        assert store.gets() - before >= 3  # two failed attempts, then the good one
        assert mount.process.poll() is None

    def test_persistent_faults_are_eio_and_the_next_read_works_once_healed(
        self, store, dataset, mount, persistent_fault
    ):
        key, expected = self.fresh_key(dataset)
        store.always(persistent_fault)
        result = read_file(mount.path / key, timeout=BOUND)
        assert result.error == "EIO", result
        assert mount.process.poll() is None, "the daemon died"
        store.heal()
        again = read_file(mount.path / key, timeout=BOUND)
        assert again.ok, again.error
        # Nothing of the bad bodies was cached: the same key now reads exactly right.
        assert again.data == expected

    def test_store_killed_during_a_large_read_gives_eio_then_works_after_restart(self, store, dataset, mount):
        store.always("slow")
        reader = subprocess.Popen([sys.executable, "-c", _READ_TO_THE_END, str(mount.path / "big")],
                                  stdout=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while not store.requested("big.bin"):
                assert time.monotonic() < deadline, "the large read never reached the server"
                time.sleep(0.02)
            time.sleep(0.2)  # mid-body
            store.kill()
            out, _ = reader.communicate(timeout=BOUND)
        finally:
            reader.kill()
            store.heal()
            store.revive()
        assert out.decode().strip() == "EIO"
        assert mount.process.poll() is None
        after = read_file(mount.path / "big", timeout=BOUND)
        assert after.ok, after.error
        assert after.data == dataset["big"]

    def test_object_recorded_with_other_facts_is_estale_with_a_log_line(self, dataset, mount):
        result = read_file(mount.path / "stale/0", timeout=BOUND)
        assert result.error == "ESTALE"
        log = mount.log()
        assert "changed since the references were made" in log and "stale.bin" in log
        assert mount.process.poll() is None

    def test_object_rewritten_after_first_access_is_estale_not_other_bytes(self, store, dataset, mount):
        first = read_file(mount.path / "mut/0", timeout=BOUND)
        assert first.data == dataset["mutable"][:KEY_SIZE]
        store.put("mutable.bin", os.urandom(len(dataset["mutable"])))  # same size, new ETag
        result = read_file(mount.path / "mut/2", timeout=BOUND)
        assert result.error == "ESTALE", result
        assert "mutable.bin changed since the references were made" in mount.log()

    def test_recorded_facts_that_match_are_read_normally(self, dataset, mount):
        key, expected = self.fresh_key(dataset)
        assert read_file(mount.path / key, timeout=BOUND).data == expected
