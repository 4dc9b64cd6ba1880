"""Which URLs a reference set may reach: pure decisions, no I/O.

A reference set is input from outside. Mounted with ``allow_other``, a set
that points at ``/etc/shadow`` would hand that file to every user, so local
files are reachable only from a reference set that itself lives on the local
disk, unless the operator allows them explicitly. ``allow`` entries are
either protocol names (``s3``, ``https``) or URL prefixes (``s3://archive/``,
``/data/``).

Without ``allow``, the object-store and web protocols of
:data:`DEFAULT_REMOTE_PROTOCOLS` are reachable; any other fsspec protocol
(``memory``, ``ftp``, ``ssh``, ``github`` ...) must be named. Some URLs are
refused whatever the list says, because what they would read cannot be
judged from their text:

* chained URLs (``simplecache::file:///etc/shadow``) wrap another protocol;
* with prefixes, a path with ``.`` or ``..`` segments or an encoded dot or
  slash (``%2e``, ``%2f``): servers and the local filesystem resolve those,
  so ``https://host/public/../private`` would leave ``https://host/public/``.

Prefixes match on a path boundary: ``s3://archive`` admits
``s3://archive/x`` but not ``s3://archive-private/x``. Local prefixes are
compared in one spelling (``file:///data/x`` and ``/data/x`` are the same
file); the backend opens local files below an allowed prefix one path
component at a time without following symbolic links
(:mod:`refmount.store.localfile`). A relative local path (``data/x.bin``)
is refused: it would name a file under the daemon's working directory, not
next to the reference set.

Two more defaults guard a shared machine. A *remote* set may not reach hosts
with internal addresses (loopback, link-local, private) other than its own
origin unless a prefix names them (:mod:`refmount.store.addresses`). A mount
with ``allow_other`` refuses local files their owner did not make
world-readable, unless ``allow_private_files`` is set: the daemon reads as
root, and would otherwise show every user what only root may read.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from refmount.urls import LOCAL_PROTOCOLS, local_path, protocol_of

#: Reachable by default from any reference set (local files: only from a local set).
DEFAULT_REMOTE_PROTOCOLS = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "adl", "http", "https"})

#: Protocols whose URLs name a network host (``scheme://host:port/...``).
HOST_PROTOCOLS = frozenset({"http", "https", "ftp", "sftp", "ssh", "smb", "webdav", "hdfs", "webhdfs"})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "sftp": 22, "ssh": 22, "smb": 445}

_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")
_ENCODED_DOT_OR_SLASH = re.compile(r"%(?:2e|2f|5c)", re.IGNORECASE)


def _is_prefix(entry: str) -> bool:
    return "://" in entry or entry.startswith("/")


def _under(url: str, prefix: str) -> bool:
    """``url`` equals ``prefix`` or lies below it on a path boundary."""
    if not url.startswith(prefix):
        return False
    return prefix.endswith("/") or len(url) == len(prefix) or url[len(prefix)] in "/?"


def _canonical(url: str) -> str:
    """One spelling of a remote URL's scheme (``S3A://`` -> ``s3://``); the rest is kept verbatim."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    return ("s3" if scheme == "s3a" else scheme) + "://" + rest


def _path_of(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` of a host URL (default ports made explicit, host in lower case), or None."""
    protocol = protocol_of(url)
    if protocol not in HOST_PROTOCOLS or "://" not in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    port = port if port is not None else _DEFAULT_PORTS.get(protocol)
    shown = f"[{host}]" if ":" in host else host
    return f"{protocol}://{shown}" + ("" if port is None else f":{port}")



@dataclass(frozen=True)
class UrlPolicy:
    """Allow-list of protocols and prefixes applied to every URL before it is read."""

    allow: tuple[str, ...] = ()
    local_allowed: bool = False
    #: Refuse hosts with internal addresses outside ``origin`` and the prefixes (a remote set).
    guard_addresses: bool = False
    #: ``scheme://host:port`` the reference set was loaded from, if it is a host URL.
    origin: str | None = None
    #: Local files their owner did not make world-readable may be served (False with allow_other).
    private_files: bool = True

    @classmethod
    def for_source(
        cls, source_url: str, allow: tuple[str, ...], *, shared: bool = False, private_files: bool = False
    ) -> UrlPolicy:
        """The default policy for a set loaded from ``source_url``.

        Usual remote protocols always, local files only for a local set, internal hosts only
        for a local set (or the remote set's own origin); ``shared`` (allow_other) refuses
        private local files unless ``private_files``.
        """
        local = protocol_of(source_url) in LOCAL_PROTOCOLS
        return cls(allow=allow, local_allowed=local, guard_addresses=not local, origin=origin_of(source_url),
                   private_files=private_files or not shared)

    def names(self, url: str) -> bool:
        """An ``allow`` URL prefix names ``url`` explicitly (a protocol name does not)."""
        if _DOT_SEGMENT.search(_path_of(url).split("?", 1)[0]) or _ENCODED_DOT_OR_SLASH.search(url):
            return False
        return any(_under(_canonical(url), _canonical(entry)) for entry in self.allow if "://" in entry)

    def local_root(self, url: str) -> str | None:
        """The allowed directory below which local ``url`` must be opened without following links.

        None when no prefix confines it (a local set's default, or ``allow=file``).
        """
        if not self.allow or "file" in (entry.lower() for entry in self.allow if not _is_prefix(entry)):
            return None
        target = local_path(url)
        for entry in self.allow:
            if _is_prefix(entry) and protocol_of(entry) in LOCAL_PROTOCOLS:
                base = local_path(entry)
                if target == base:
                    return posixpath.dirname(base)
                if target.startswith(base.rstrip("/") + "/"):
                    return base
        return None

    def permits(self, url: str) -> bool:
        return self.reason(url) is None

    def reason(self, url: str) -> str | None:
        """Why ``url`` is refused (for the log line and error message), or None if it is allowed."""
        if "::" in url:
            return "chained URLs (PROTOCOL::URL) are never reachable from a reference set"
        protocol = protocol_of(url)
        local = protocol in LOCAL_PROTOCOLS
        if local and not local_path(url).startswith("/"):
            return "relative local path: write it as an absolute path or file:// URL"
        if not self.allow:
            if local:
                return None if self.local_allowed else (
                    "local file referenced by a remote reference set (allow it with -o allow=file "
                    "or a path prefix such as allow=/data/)"
                )
            if protocol in DEFAULT_REMOTE_PROTOCOLS:
                return None
            return f"protocol {protocol!r} is not reachable by default (allow it with -o allow={protocol})"
        if protocol in (entry.lower() for entry in self.allow if not _is_prefix(entry)):
            return None
        if local and "file" in (entry.lower() for entry in self.allow if not _is_prefix(entry)):
            return None
        prefixes = [entry for entry in self.allow if _is_prefix(entry)]
        if prefixes:
            if _DOT_SEGMENT.search(_path_of(url).split("?", 1)[0]) or _ENCODED_DOT_OR_SLASH.search(url):
                return "URL has '.'/'..' segments or encoded dots or slashes, which an allowed prefix cannot vouch for"
            for entry in prefixes:
                if local and protocol_of(entry) in LOCAL_PROTOCOLS:
                    target, base = local_path(url), local_path(entry)
                    if target == base or target.startswith(base.rstrip("/") + "/"):
                        return None
                elif _under(_canonical(url), _canonical(entry)):
                    return None
        return f"{protocol} URL outside the allowed list ({', '.join(self.allow)})"
