"""Object stores that fail on demand, behind one small interface, so one fault test body runs on each.

:mod:`tests.fault_contract` says what a mount must do when its store fails;
the classes here say how to make a particular store fail: the HTTP server on
loopback misbehaves itself, and S3 (the real SeaweedFS) fails through the
fault-injecting proxy in front of it. Fault names are the contract's; each
store maps them onto what its server calls them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol

from refmount.devtools.localstore import LocalS3
from tests.support.http_range_server import RangeHTTPServer
from tests.support.s3proxy import S3Proxy

#: Faults every store can inject, in the contract's words.
#: ``short``: body cut short; ``wrong_length``: Content-Length larger than the body;
#: ``oversized``: more bytes than the range asked for; ``stall``: nothing sent for a while;
#: ``wrong_range``: 206 whose Content-Range names another offset, with that offset's bytes;
#: ``partial_200``: 200 (a whole-object answer) whose body is only the range asked for.
COMMON_FAULTS = ("503", "500", "reset", "stall", "short", "wrong_length", "oversized", "wrong_range",
                 "partial_200")

#: Seconds a transient stall lasts: longer than one attempt may stay silent, shorter than the bound.
TRANSIENT_STALL = 4.0


class FaultStore(Protocol):
    """What the fault contract needs from a store."""

    name: str
    #: Faults this store can inject beyond :data:`COMMON_FAULTS`.
    extra_faults: tuple[str, ...]

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` as object ``name`` (bypassing any fault) and return its URL."""

    def etag(self, name: str) -> str:
        """The ETag the store gives object ``name`` now."""

    def inject(self, fault: str, count: int) -> None:
        """Apply ``fault`` to the next ``count`` requests."""

    def always(self, fault: str) -> None:
        """Apply ``fault`` to every request until :meth:`heal`."""

    def heal(self) -> None:
        """No more faults; release anything stalled."""

    def gets(self) -> int:
        """GET requests the store has received so far."""

    def requested(self, name: str) -> bool:
        """Whether a GET for object ``name`` has arrived."""

    def kill(self) -> None:
        """Stop answering at once: open connections dropped, new ones refused."""

    def revive(self) -> None:
        """Serve again at the same address after :meth:`kill`."""

    def mount_options(self) -> list[str]:
        """Extra ``refmount mount`` arguments that reach this store."""

    def mount_env(self) -> dict[str, str]:
        """Extra environment for the daemon (credentials)."""


class HTTPFaultStore:
    """The shared HTTP range server on loopback, misbehaving itself."""

    name = "http"
    extra_faults = ("ignore_range",)

    def __init__(self, root: Path) -> None:
        self.server = RangeHTTPServer(root).start()

    def close(self) -> None:
        self.server.kill()

    def put(self, name: str, data: bytes) -> str:
        return self.server.put(name, data)

    def etag(self, name: str) -> str:
        return self.server.etag_for(name)

    @staticmethod
    def _switches(fault: str, stall: float) -> dict[str, object]:
        return {
            "503": {"fail": True, "fail_status": 503},
            "500": {"fail": True, "fail_status": 500},
            "reset": {"reset": True},
            "stall": {"stall": stall},
            "short": {"cut_body": 1000},
            "wrong_length": {"content_length_delta": 1000},
            "oversized": {"extra_bytes": 100},
            "ignore_range": {"ignore_range": True},
            "wrong_range": {"wrong_range": True},
            "partial_200": {"partial_200": True},
            "slow": {"slow": 0.05},
        }[fault]

    def inject(self, fault: str, count: int) -> None:
        self.server.misbehave(count=count, **self._switches(fault, TRANSIENT_STALL))

    def always(self, fault: str) -> None:
        self.server.misbehave(**self._switches(fault, 60.0))

    def heal(self) -> None:
        self.server.behave()

    def gets(self) -> int:
        return self.server.counts()["by_method"].get("GET", 0)

    def requested(self, name: str) -> bool:
        return any(method == "GET" and path == f"/{name}" for method, path, _ in list(self.server.requests))

    def kill(self) -> None:
        self.server.kill()

    def revive(self) -> None:
        self.server.start()

    def mount_options(self) -> list[str]:
        return []

    def mount_env(self) -> dict[str, str]:
        return {}


class S3FaultStore:
    """The real S3 server (SeaweedFS), failing through the fault-injecting proxy in front of it.

    It owns a bucket and a proxy for its lifetime; the daemon talks to the
    proxy (``-o endpoint_url``) with the store's credentials from the
    environment, while :meth:`put` writes straight to the store.
    """

    name = "s3"
    extra_faults: tuple[str, ...] = ()

    #: Contract fault names -> (proxy kind, proxy options).
    _KINDS = {
        "503": ("503", {}),
        "500": ("500", {}),
        "reset": ("reset", {}),
        "short": ("cut", {}),
        "wrong_length": ("bad_length", {"delta": 1000}),
        "oversized": ("oversized", {}),
        "slow": ("slow", {}),
        "wrong_range": ("wrong_range", {}),
        "partial_200": ("partial_200", {}),
    }

    def __init__(self, store: LocalS3) -> None:
        self.store = store
        store.start()
        self.bucket = f"faults-{uuid.uuid4().hex[:12]}"
        store.create_bucket(self.bucket)
        self.proxy = S3Proxy(store.endpoint_url, store).start()

    def close(self) -> None:
        self.proxy.stop()
        if self.store.running:
            self.store.delete_bucket(self.bucket)

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def put(self, name: str, data: bytes) -> str:
        self.store.put(self.url(name), data)
        return self.url(name)

    def etag(self, name: str) -> str:
        return self.store.filesystem().info(self.url(name))["ETag"]

    def _rule(self, fault: str, **selection: float) -> None:
        if fault == "stall":
            seconds = TRANSIENT_STALL if "count" in selection else None  # None: until healed
            self.proxy.inject("stall", seconds=seconds, **selection)
            return
        kind, options = self._KINDS[fault]
        self.proxy.inject(kind, **options, **selection)

    def inject(self, fault: str, count: int) -> None:
        self._rule(fault, count=count)

    def always(self, fault: str) -> None:
        self._rule(fault, share=1.0)

    def heal(self) -> None:
        self.proxy.clear_faults()

    def gets(self) -> int:
        return self.proxy.gets()

    def requested(self, name: str) -> bool:
        wanted = f"/{self.bucket}/{name}"
        return any(method == "GET" and path.split("?", 1)[0] == wanted for method, path, _ in list(self.proxy.requests))

    def kill(self) -> None:
        """Drop the connections in flight at the proxy, then stop SeaweedFS itself."""
        self.proxy.pause()
        self.store.stop()

    def revive(self) -> None:
        self.store.start()
        self.proxy.resume()

    def mount_options(self) -> list[str]:
        return ["-o", f"endpoint_url={self.proxy.endpoint_url}"]

    def mount_env(self) -> dict[str, str]:
        return {k: v for k, v in self.store.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
