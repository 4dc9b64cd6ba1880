"""Faults of an HTTP object store, injected by a real server on loopback, seen through a real mount.

The test bodies are the shared :class:`~tests.fault_contract.FaultContract`;
this module only supplies the store: the shared HTTP range server
(:mod:`tests.support.http_range_server`), which misbehaves itself and can
also ignore Range requests (answer 200 with the whole object).
"""

from __future__ import annotations

import pytest

from tests.contracts.fault_contract import FaultContract
from tests.support.faultstores import HTTPFaultStore

pytestmark = pytest.mark.fuse


class TestHTTPFaults(FaultContract):
    extra_persistent = ("ignore_range",)

    @pytest.fixture(scope="class")
    def store(self, tmp_path_factory):
        store = HTTPFaultStore(tmp_path_factory.mktemp("http-objects"))
        yield store
        store.close()
