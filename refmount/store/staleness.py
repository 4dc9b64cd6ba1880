"""Detecting objects that changed since their references were made.

A reference set describes byte ranges of objects as they were when it was
made. If an object is rewritten afterwards, the same ranges hold other
bytes, and serving them would hand a reader plausible-looking garbage. So
every object is checked once, at its first access, against the facts the
scanner recorded in the reference set (the top-level
``"refmount": {"sources": {url: {"size", "etag", "mtime"}}}`` of a v1 set);
the facts seen then are remembered, and every later GET carries them
(``If-Match`` on HTTP and S3) so a change while mounted is noticed too. A
changed object answers ESTALE (:class:`~refmount.errors.StaleObject`), with
one clear log line per object, instead of other bytes.

Rules, chosen to avoid both false alarms and misses:

* A different size is always a change.
* When both sides have an ETag, the ETag decides (quotes and a weak ``W/``
  prefix are ignored for comparison); the modification time is then not
  compared, because re-uploading identical bytes changes it harmlessly.
* Without ETags, modification times are compared to within one second
  (HTTP dates have one-second resolution).
* A recorded fact that cannot be understood is ignored, not trusted: a
  reference set is input from outside, and a broken fact must not make a
  good object unreadable.

After first contact the facts are held against every answer
(:mod:`refmount.store.responses`): a server that ignores ``If-Match``, sends
no ETag at all, or reports a new total size is caught there. A local file
has no ETag and its mtime can be set back (``os.utime``), so its facts also
carry its identity: device, inode, size, and mtime and ctime in nanoseconds.
The ctime cannot be set back, so a rewrite shows even when size and mtime
were restored.

This module does no I/O except through the ``info`` callable it is given and
:func:`local_facts` (one ``stat``).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from refmount.errors import StaleObject
from refmount.refs.source import to_posix_seconds

log = logging.getLogger("refmount.staleness")

#: Modification times closer than this are the same time (HTTP dates are whole seconds).
MTIME_TOLERANCE = 1.0


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What identifies one version of an object; ``None`` means unknown."""

    size: int | None = None
    etag: str | None = None
    mtime: float | None = None
    #: A local file's (device, inode, size, mtime_ns, ctime_ns); never taken from a reference set.
    identity: tuple[int, ...] | None = None

    @classmethod
    def from_mapping(cls, raw: Any) -> SourceFacts:
        """Facts from a recorded ``{"size", "etag", "mtime"}`` or an fsspec ``info`` dict; junk is dropped."""
        if not isinstance(raw, Mapping):
            return cls()
        size = raw.get("size")
        size = size if type(size) is int and size >= 0 else None
        etag = None
        for key in ("etag", "ETag", "ETAG"):
            value = raw.get(key)
            if isinstance(value, str) and value.strip():
                etag = value.strip()
                break
        mtime = None
        for key in ("mtime", "LastModified", "last_modified", "Last-Modified", "modified"):
            if key in raw:
                mtime = to_posix_seconds(raw[key])
                if mtime is not None:
                    break
        identity = raw.get("identity")
        if not (isinstance(identity, tuple) and len(identity) == 5 and all(type(i) is int for i in identity)):
            identity = None
        return cls(size, etag, mtime, identity)

    @property
    def strong_etag(self) -> str | None:
        """The ETag usable in ``If-Match`` (weak ETags never match there)."""
        if self.etag is None or self.etag.startswith("W/"):
            return None
        return self.etag

    def describe(self) -> str:
        parts = []
        if self.size is not None:
            parts.append(f"size {self.size}")
        if self.etag is not None:
            parts.append(f"ETag {self.etag}")
        if self.mtime is not None:
            parts.append(f"mtime {self.mtime:.0f}")
        return ", ".join(parts) or "nothing known"


def _bare_etag(etag: str) -> str:
    etag = etag[2:] if etag.startswith("W/") else etag
    return etag.strip().strip('"')


def differences(recorded: SourceFacts, seen: SourceFacts) -> list[str]:
    """How ``seen`` differs from ``recorded``, comparing only facts both sides know."""
    found = []
    if recorded.size is not None and seen.size is not None and recorded.size != seen.size:
        found.append(f"size {recorded.size} -> {seen.size}")
    if recorded.etag is not None and seen.etag is not None:
        if _bare_etag(recorded.etag) != _bare_etag(seen.etag):
            found.append(f"ETag {recorded.etag} -> {seen.etag}")
    elif recorded.mtime is not None and seen.mtime is not None:
        if abs(recorded.mtime - seen.mtime) > MTIME_TOLERANCE:
            found.append(f"modified at {seen.mtime:.0f}, references made from the version of {recorded.mtime:.0f}")
    if recorded.identity is not None and seen.identity is not None and recorded.identity != seen.identity:
        found.append("the file was rewritten or replaced (inode, mtime or ctime differ)")
    return found


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells one version of a local file from another, to the nanosecond."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def local_facts(path: str) -> dict[str, Any]:
    """An fsspec-style info dict of a local file, with its :func:`file_identity`."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        return {"type": "directory", "size": 0}
    return {"type": "file", "size": st.st_size, "mtime": st.st_mtime, "identity": file_identity(st)}


def local_changes(path: str, first: SourceFacts) -> list[str]:
    """How the local file at ``path`` now differs from the facts seen at first contact (stat'ed now)."""
    return differences(first, SourceFacts.from_mapping(local_facts(path)))


def recorded_facts(sources: Any) -> dict[str, SourceFacts]:
    """The usable facts of a reference set's ``sources`` mapping (url -> facts); junk is skipped."""
    if not isinstance(sources, Mapping):
        return {}
    out = {}
    for url, raw in sources.items():
        if isinstance(url, str):
            facts = replace(SourceFacts.from_mapping(raw), identity=None)  # only ever seen, never recorded
            if facts != SourceFacts():
                out[url] = facts
    return out


class SourceGuard:
    """Checks each object once against what the references expect and remembers what it saw.

    ``info`` returns an fsspec-style info dict for a URL; it is called at most
    once per URL that checks out (again after a failure, so a store that was
    down is asked again). A stale verdict is remembered for the mount's life:
    the references cannot become right again without being remade.
    """

    def __init__(self, recorded: Mapping[str, SourceFacts], info: Callable[[str], Mapping[str, Any]],
                 *, shown: Callable[[str], str] = str) -> None:
        self._recorded = dict(recorded)
        self._info = info
        self._shown = shown
        self._seen: dict[str, SourceFacts] = {}
        self._stale: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def add_recorded(self, recorded: Mapping[str, SourceFacts]) -> None:
        """Learn the facts of a reference set loaded after the mount started (multi-set mounts)."""
        with self._lock:
            self._recorded.update(recorded)

    def recorded(self, url: str) -> SourceFacts:
        return self._recorded.get(url, SourceFacts())

    def check(self, url: str, info: Callable[[str], Mapping[str, Any]] | None = None) -> SourceFacts:
        """The facts of ``url`` as first seen; StaleObject if they contradict the references.

        ``info``, if given, looks the object up instead of the guard's own callable (e.g. with a shorter bound).
        """
        facts = self._seen.get(url)
        if facts is not None:
            return facts
        reason = self._stale.get(url)
        if reason is not None:
            raise StaleObject(reason)
        with self._lock:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:  # one info() per URL even when many readers arrive together
            facts = self._seen.get(url)
            if facts is not None:
                return facts
            if url in self._stale:
                raise StaleObject(self._stale[url])
            seen = SourceFacts.from_mapping((info or self._info)(url))
            changed = differences(self.recorded(url), seen)
            if changed:
                self.mark_stale(url, "; ".join(changed))
                raise StaleObject(self._stale[url])
            self._seen[url] = seen
            return seen

    def mark_stale(self, url: str, what: str) -> None:
        """Remember (and log once) that ``url`` no longer holds the referenced bytes."""
        with self._lock:
            if url in self._stale:
                return
            self._stale[url] = (
                f"{self._shown(url)} changed since the references were made ({what}); "
                "reads of it fail with ESTALE until the reference set is remade"
            )
            self._seen.pop(url, None)
        log.error("stale object: %s", self._stale[url])

    def known_size(self, url: str) -> int | None:
        """The size seen at first access, or recorded by the scanner."""
        facts = self._seen.get(url)
        if facts is not None and facts.size is not None:
            return facts.size
        return self.recorded(url).size
