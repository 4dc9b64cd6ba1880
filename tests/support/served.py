"""Served trees without a mount: reference files on disk, opened the way a mount opens them.

``open_served`` builds the layers with :func:`refmount.mount.assemble.open_tree`,
the function ``refmount mount`` calls, so the router under test is the one a
mount serves; only FUSE is left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refmount.config.options import MountConfig
from refmount.errors import errno_for
from refmount.mount import assemble


def write_reference_set(path: Path, refs: dict[str, Any]) -> Path:
    """A kerchunk JSON file (version 1) holding ``refs``; its mtime moves forward on every rewrite."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps({"version": 1, "refs": refs}))
    if path.stat().st_mtime_ns <= previous:  # coarse clocks: the reload must see a new fingerprint
        os.utime(path, ns=(previous + 1_000_000, previous + 1_000_000))
    return path


def open_served(source: Path, **options: Any) -> assemble.ServedTree:
    """Everything a mount of ``source`` serves, small caches, no readahead; close it after use."""
    settings: dict[str, Any] = {"cache_size": 4 << 20, "block_size": 64 << 10, "max_request": 1 << 20,
                                "readahead": 0, **options}
    return assemble.open_tree(MountConfig(str(source), "/nonexistent-mountpoint", **settings))


def errno_of(call: Callable[..., Any], *args: Any) -> int:
    """The errno the FUSE adapter would answer for ``call(*args)`` (0 if it succeeds)."""
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - the errno of whatever it raised is the point
        return errno_for(exc)
    return 0
