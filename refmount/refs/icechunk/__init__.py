"""Icechunk repositories as reference sets: detection here; opening in :mod:`.repository` and :mod:`.tree`.

Only the marker test lives in this module, so that telling a repository from
a collection or a Parquet set costs no import of ``icechunk`` or zarr.
"""

from __future__ import annotations

import posixpath
from importlib import metadata
from typing import Any

from refmount.errors import ConfigError

__all__ = ["check_readable", "is_repository"]

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


def check_readable(fs: Any, path: str, shown: str) -> None:
    """Refuse, naming both versions, a format 2 repository that the installed ``icechunk`` cannot read.

    Without this, icechunk 1.x meets a format 2 repository (one ``repo``
    object, no ``refs/``) with an error about a missing branch, which says
    nothing of the real cause. icechunk 2 needs Python 3.12 or newer.
    """
    root = path.rstrip("/")
    try:
        format_1 = all(fs.isdir(posixpath.join(root, marker)) for marker in MARKERS)
        format_2 = not format_1 and bool(fs.isfile(posixpath.join(root, MARKER_V2)))
    except OSError:
        return  # the open that follows reports the store's failure
    if not format_2:
        return
    try:
        installed = metadata.version("icechunk")
    except metadata.PackageNotFoundError:
        return  # the open reports the missing package
    if int(installed.split(".")[0]) < 2:
        raise ConfigError(
            f"Icechunk repository {shown} is of format 2 (written by Icechunk 2.x); the installed icechunk "
            f"{installed} reads format 1 only: install icechunk >= 2 (it needs Python >= 3.12) to mount it"
        )
