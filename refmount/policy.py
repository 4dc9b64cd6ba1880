"""Which URLs a reference set may reach: pure decisions, no I/O.

A reference set is input from outside. Mounted with ``allow_other``, a set
that points at ``/etc/shadow`` would hand that file to every user, so local
files are reachable only from a reference set that itself lives on the local
disk, unless the operator allows them explicitly. ``allow`` entries are
either protocol names (``s3``, ``https``) or URL prefixes (``s3://archive/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fsspec.core import split_protocol

LOCAL_PROTOCOLS = frozenset({"file", "local"})


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url``; plain paths are ``file``."""
    protocol, _ = split_protocol(url)
    if protocol is None:
        return "file"
    return "s3" if protocol == "s3a" else protocol


@dataclass(frozen=True)
class UrlPolicy:
    """Allow-list of protocols and prefixes applied to every URL before it is read."""

    allow: tuple[str, ...] = ()
    local_allowed: bool = False

    @classmethod
    def for_source(cls, source_url: str, allow: tuple[str, ...]) -> "UrlPolicy":
        """The default policy: remote protocols always, local files only for a local set."""
        return cls(allow=allow, local_allowed=protocol_of(source_url) in LOCAL_PROTOCOLS)

    def permits(self, url: str) -> bool:
        protocol = protocol_of(url)
        if self.allow:
            return any(
                protocol == entry or (("://" in entry or entry.startswith("/")) and url.startswith(entry))
                for entry in self.allow
            )
        if protocol in LOCAL_PROTOCOLS:
            return self.local_allowed
        return True

    def reason(self, url: str) -> str:
        """Why ``url`` is refused, for the log line and error message."""
        if self.allow:
            return f"{protocol_of(url)} URL outside the allowed list ({', '.join(self.allow)})"
        return "local file referenced by a remote reference set (allow it with -o allow=file)"
