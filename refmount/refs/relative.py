"""Relative URLs in a reference set, resolved against the set's own location.

fsspec's ``ReferenceFileSystem`` hands a URL without a protocol to its
default filesystem, so ``data/x.bin`` means whatever that filesystem makes
of it (a ``dir`` filesystem rooted at the set, or the working directory of
the process for the local one). A daemon's working directory means nothing
to the author of a set, so here a relative URL is resolved the way the set's
author meant it: against the directory holding the set (the reference file's
directory, a Parquet set's root). The result is an ordinary absolute URL and
goes through the URL policy like any other.
"""

from __future__ import annotations

import posixpath

from refmount.urls import is_plain_path

__all__ = ["is_relative", "resolve_relative", "set_base"]


def is_relative(url: str) -> bool:
    """A URL with neither protocol nor leading ``/`` (``data/x.bin``, ``./x``, ``../x``)."""
    return bool(url) and is_plain_path(url) and not url.startswith(("/", "~"))


def set_base(location: str, *, is_directory: bool = False) -> str | None:
    """The directory relative URLs of the set at ``location`` (absolute path or URL) resolve against.

    ``location`` is the reference file, or with ``is_directory`` the set's root
    directory. None for a chained URL (``simplecache::s3://...``), whose
    relative URLs stay unresolved and are refused by the policy.
    """
    if "::" in location:
        return None
    if "://" in location:
        scheme, rest = location.split("://", 1)
        rest = rest.split("?", 1)[0].split("#", 1)[0]  # a signed query belongs to the set's URL alone
        host, _, path = rest.partition("/")
        host = host.rpartition("@")[2]  # credentials of the set's URL are not handed to every chunk URL
        directory = path.rstrip("/") if is_directory else posixpath.dirname(path)
        return f"{scheme}://{host}/{directory}".rstrip("/") + "/"
    directory = location.rstrip("/") if is_directory else posixpath.dirname(location)
    return directory.rstrip("/") + "/"


def resolve_relative(url: str, base: str | None) -> str:
    """``url`` joined to ``base`` when it is relative (``..`` cannot climb above the host or ``/``)."""
    if base is None or not is_relative(url):
        return url
    if "://" in base:
        scheme, rest = base.split("://", 1)
        host, _, path = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/" + path, url))
        return f"{scheme}://{host}{joined}"
    return posixpath.normpath(posixpath.join(base, url))
