"""An opt-in Prometheus endpoint with the figures of ``refmount stats``.

Off unless ``metrics_port`` is given; binds to ``metrics_address``
(127.0.0.1 by default) so figures do not leave the node unless the operator
says so. The text exposition format is rendered here from the same snapshot
``refmount stats`` prints: there is one source of figures, two views.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from refmount.metrics import COUNTERS, TIER_COUNTERS, TIER_GAUGES

log = logging.getLogger("refmount.prometheus")

EXTRA_COUNTERS = ("reloads", "reload_failures")
HELP = {
    "reads": "read calls answered",
    "bytes_delivered": "bytes returned to readers",
    "bytes_fetched": "bytes fetched from object storage",
    "gets": "ranged GET requests sent",
    "get_retries": "GET requests retried after a transient error",
    "cache_hits": "block cache hits",
    "cache_misses": "block cache misses",
    "errors": "operations that failed with an error worth attention (EIO and alike)",
    "prefetches": "readahead fetches started",
    "attr_requests": "attribute requests (lookup, stat) answered",
    "listed_with_attrs": "directory entries listed with their attributes (readdirplus)",
    "reloads": "successful reloads",
    "reload_failures": "failed reloads",
    "cache_bytes": "bytes held by the block cache",
    "cache_capacity": "byte budget of the block cache",
    "open_handles": "open files",
    "sets": "reference sets served",
    "sets_loaded": "reference sets currently loaded",
    "uptime_seconds": "seconds since the mount started",
    "disk_cache_stored_bytes": "bytes of blocks in the disk cache directory",
    "disk_cache_capacity": "byte budget of the disk cache",
    "shared_cache_queued": "blocks waiting to be uploaded to the shared cache",
    "shared_cache_leases_won": "shared cache: fetch leases taken (this node fetched the block for the fleet)",
    "shared_cache_leases_held": "shared cache: blocks another node was fetching, waited for",
    "shared_cache_lease_timeouts": "shared cache: blocks waited for that did not arrive in time (fetched here)",
    **{
        f"{tier}_cache_{figure}": f"{where} {what}"
        for tier, where in (("disk", "disk cache:"), ("shared", "shared cache:"))
        for figure, what in (
            ("hits", "blocks found and verified"),
            ("misses", "blocks looked up and not found (or not verified)"),
            ("bytes_read", "bytes of blocks served"),
            ("bytes_written", "bytes of blocks stored"),
            ("corrupt", "stored blocks that did not verify and were ignored"),
            ("errors", "failed lookups or writes"),
            ("dropped", "blocks not stored (writes off, or the upload queue full)"),
        )
    },
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(figures: dict[str, Any], labels: dict[str, str]) -> str:
    """Prometheus text format (version 0.0.4) of a stats snapshot."""
    label_text = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
    lines: list[str] = []

    def emit(name: str, kind: str, help_text: str, value: float, extra: str = "") -> None:
        if not any(line.startswith(f"# TYPE {name} ") for line in lines):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
        joined = ",".join(part for part in (label_text, extra) if part)
        lines.append(f"{name}{{{joined}}} {float(value):g}" if joined else f"{name} {float(value):g}")

    for key in (*COUNTERS, *EXTRA_COUNTERS, *TIER_COUNTERS):
        if key in figures:
            emit(f"refmount_{key}_total", "counter", HELP.get(key, key), figures[key])
    for key in ("cache_bytes", "cache_capacity", "open_handles", "sets", "sets_loaded", "uptime_seconds",
                *TIER_GAUGES):
        if key in figures:
            emit(f"refmount_{key}", "gauge", HELP[key], figures[key])
    for label, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
        key = f"read_latency_{label}_ms"
        if key in figures:
            emit("refmount_read_latency_seconds", "summary", "latency of recent reads",
                 figures[key] / 1000.0, f'quantile="{quantile}"')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serve ``/metrics`` from a daemon thread until :meth:`close`."""

    def __init__(self, report: Callable[[], dict[str, Any]], labels: dict[str, str], address: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render(outer._report(), outer._labels).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
                log.debug("metrics request from %s: %s", self.address_string(), format % args)

        self._report = report
        self._labels = labels
        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self.address = self._server.server_address
        self._thread = threading.Thread(target=self._server.serve_forever, name="refmount-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", self.address[0], self.address[1])
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
