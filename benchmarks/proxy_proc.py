"""The counting S3 proxy (tests/support/s3proxy.py) in its own process, driven over stdin/stdout.

Run in the benchmark's own interpreter the proxy would share a GIL with the
in-process ways (zarr over ReferenceFileSystem, the raw-GET limit) and slow
exactly those down; in a child process every way pays the same relay cost.

Protocol: prints its port on the first line, then answers one line per
command read from stdin: ``counts`` -> JSON {gets, bytes_sent}, ``reset`` ->
``ok``; EOF or ``quit`` stops it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.s3proxy import S3Proxy  # noqa: E402


def main() -> None:
    proxy = S3Proxy(sys.argv[1]).start()
    try:
        print(proxy.port, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "counts":
                snap = proxy.counts()
                print(json.dumps({"gets": snap["by_method"].get("GET", 0), "bytes_sent": snap["bytes_sent"]}), flush=True)
            elif command == "reset":
                proxy.reset()
                print("ok", flush=True)
            elif command == "quit":
                break
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
