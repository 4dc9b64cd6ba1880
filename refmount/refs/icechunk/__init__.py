"""Icechunk repositories as reference sets: detection here; opening in :mod:`.repository` and :mod:`.tree`.

Only the marker test lives in this module, so that telling a repository from
a collection or a Parquet set costs no import of ``icechunk`` or zarr.
"""

from __future__ import annotations

import posixpath
from importlib import metadata
from typing import Any

from refmount.errors import ConfigError

__all__ = ["check_readable", "is_repository", "repository_format"]

#: What an Icechunk repository (format 1) holds at its root: the snapshots, and the branch and tag refs.
MARKERS = ("snapshots", "refs")
#: Format 2 keeps one ``repo`` object at the root.
MARKER_V2 = "repo"


def repository_format(fs: Any, path: str) -> int | None:
    """The format (1 or 2) of the Icechunk repository at the directory or prefix ``path`` of ``fs``; None if none is."""
    root = path.rstrip("/")
    try:
        if all(fs.isdir(posixpath.join(root, marker)) for marker in MARKERS):
            return 1
        return 2 if fs.isfile(posixpath.join(root, MARKER_V2)) else None
    except OSError:
        return None


def is_repository(fs: Any, path: str) -> bool:
    """Whether the directory or prefix ``path`` of ``fs`` is an Icechunk repository (format 1 or 2)."""
    return repository_format(fs, path) is not None


def check_readable(repository_format: int, shown: str) -> None:
    """Refuse, naming both versions, a format 2 repository that the installed ``icechunk`` cannot read.

    Without this, icechunk 1.x meets a format 2 repository (one ``repo``
    object, no ``refs/``) with an error about a missing branch, which says
    nothing of the real cause. icechunk 2 needs Python 3.12 or newer.
    """
    if repository_format != 2:
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
