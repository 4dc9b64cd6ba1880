"""URL facts every layer needs: the protocol, whether it is local, and how a URL may be shown.

One module so that "is this local?" and "what may a log line show?" have
one answer each. Redaction drops userinfo (``user:password@``) and the query
string, because presigned URLs carry their signature there.
"""

from __future__ import annotations

import os
import posixpath

from fsspec.core import split_protocol

#: fsspec protocols that read this machine's filesystem.
LOCAL_PROTOCOLS = frozenset({"file", "local"})


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` (lower case, ``s3a`` as ``s3``); plain paths are ``file``."""
    if "::" in url:
        return url.split("::", 1)[0].split("://", 1)[0].lower() or "file"
    protocol, _ = split_protocol(url)
    if protocol is None:
        return "file"
    protocol = protocol.lower()
    return "s3" if protocol == "s3a" else protocol


def is_local(url: str) -> bool:
    """A plain path or a ``file://``/``local://`` URL."""
    return protocol_of(url) in LOCAL_PROTOCOLS


def is_plain_path(url: str) -> bool:
    """A path written without any protocol (``data/refs.json``, ``/tmp/x.json``)."""
    return "://" not in url and "::" not in url


def absolute_path(url: str) -> str:
    """A plain path made absolute (``~`` expanded); URLs are returned unchanged."""
    return os.path.abspath(os.path.expanduser(url)) if is_plain_path(url) else url


def local_path(url: str) -> str:
    """The local path a ``file://``/``local://`` URL or plain path names, lexically normalised."""
    for prefix in ("file://", "local://"):
        if url.lower().startswith(prefix):
            url = url[len(prefix) :]
            break
    return posixpath.normpath("/" + url.lstrip("/")) if url.startswith("/") else posixpath.normpath(url)


def redact_url(url: str) -> str:
    """``url`` as a message may show it: without userinfo and without the query string."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    path = path.split("?", 1)[0].split("#", 1)[0]
    host = host.split("?", 1)[0]
    return f"{scheme}://{host}{slash}{path}"
