"""Icechunk repositories as reference sets: detection here; opening in :mod:`.repository` and :mod:`.tree`.

Only the marker test lives in this module, so that telling a repository from
a collection or a Parquet set costs no import of ``icechunk`` or zarr.
"""

from __future__ import annotations

import posixpath
from typing import Any

__all__ = ["is_repository"]

#: What an Icechunk repository (format 1) holds at its root: the snapshots, and the branch and tag refs.
MARKERS = ("snapshots", "refs")
#: Format 2 keeps one ``repo`` object at the root.
MARKER_V2 = "repo"


def is_repository(fs: Any, path: str) -> bool:
    """Whether the directory or prefix ``path`` of ``fs`` is an Icechunk repository (format 1 or 2)."""
    root = path.rstrip("/")
    try:
        if all(fs.isdir(posixpath.join(root, marker)) for marker in MARKERS):
            return True
        return bool(fs.isfile(posixpath.join(root, MARKER_V2)))
    except OSError:
        return False
