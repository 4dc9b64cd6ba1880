"""Checking that the answer to a ranged GET is the range that was asked for, of the object first seen.

A body of the right length is not enough: a server (or a proxy, or a CDN)
may answer ``206`` for other bytes of the object than those requested, or
``200`` with a body that is neither the whole object nor the range. Either
would be served and cached as the bytes of the reference. So every answer is
held against the request and against the facts of the object seen at first
contact:

* **Which version.** ETag, Last-Modified and the total size a ``206`` gives
  in ``Content-Range`` must agree with those facts
  (:func:`refmount.store.staleness.differences`); a difference means the
  object changed, whether or not the server honours ``If-Match``.
* **206** must carry ``Content-Range: bytes FIRST-LAST/TOTAL`` with exactly
  the requested first and last byte. A range past the object's end (the
  answer ends at the object's last byte, earlier than asked) is the
  references' fault and is not retried.
* **200** is the whole object. It is accepted only when the request was for
  the whole object (``[0, size)``) and the body is exactly that long; a 200
  with a longer body means the server ignores Range (not retried: it will
  again), and one with any other body is not the object at all.
* Any other status is not an answer to a ranged GET.

A mismatch of range or status is :class:`UnexpectedAnswer`: transient
(retried, then EIO), never data and never cached. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from refmount.byterange import ByteRange
from refmount.errors import BackendError
from refmount.store.retry import WrongLength
from refmount.store.staleness import SourceFacts

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class UnexpectedAnswer(BackendError):
    """The store answered a ranged GET with other bytes than asked for (wrong Content-Range or status)."""


#: A body as one buffer, or as consecutive pieces read straight from the socket (no join, no split).
Body = bytes | tuple[bytes, ...]


def body_length(body: Body) -> int:
    """The number of bytes in ``body``, whichever form it has."""
    return len(body) if isinstance(body, bytes) else sum(len(piece) for piece in body)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a ranged GET came back with: status, the headers that identify it, and the body."""

    status: int
    body: Body
    content_range: str | None = None
    etag: str | None = None
    last_modified: Any = None


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of ``bytes FIRST-LAST/TOTAL`` (total None for ``*``); None if unusable."""
    if not value:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    if total is not None and last >= total:
        return None
    return first, last, total


def answered_facts(answer: Answer) -> SourceFacts:
    """The facts of the object version an answer comes from.

    The size is the total of a 206's Content-Range; a 200's length is not
    used, since a 200 with a wrong body is a broken answer, not proof of a
    changed object.
    """
    parsed = parse_content_range(answer.content_range) if answer.status == 206 else None
    return SourceFacts.from_mapping({
        "size": parsed[2] if parsed is not None else None,
        "etag": answer.etag,
        "mtime": answer.last_modified,
    })


def requested_bytes(where: str, rng: ByteRange, answer: Answer, object_size: int | None) -> Body:
    """The body of ``answer`` if it is exactly ``rng`` of the object; else the error that says why.

    ``object_size`` is the size seen at first contact (None if the store
    did not say). Length errors of the body itself are left to the caller,
    which knows how to word them.
    """
    if answer.status == 206:
        parsed = parse_content_range(answer.content_range)
        if parsed is None:
            raise UnexpectedAnswer(f"{where}: 206 without a usable Content-Range ({answer.content_range!r})")
        first, last, total = parsed
        if first == rng.start and last == rng.stop - 1:
            return answer.body
        if first == rng.start and total is not None and last == total - 1 and total < rng.stop:
            raise WrongLength(f"{where}: the references reach beyond the end of the object ({total} bytes)",
                              oversized=True)
        raise UnexpectedAnswer(
            f"{where}: the store answered bytes {first}-{last} (Content-Range {answer.content_range!r}) "
            f"to a request for bytes {rng.start}-{rng.stop - 1}"
        )
    if answer.status == 200:
        whole_asked = rng.start == 0 and object_size is not None and rng.stop == object_size
        length = body_length(answer.body)
        if whole_asked and length == object_size:
            return answer.body
        if length > rng.length:
            return answer.body  # longer than asked: the caller's "server ignores Range" error
        raise UnexpectedAnswer(
            f"{where}: 200 with {length} bytes to a ranged GET; "
            f"a 200 must be the whole object ({object_size if object_size is not None else 'size unknown'} bytes)"
        )
    raise UnexpectedAnswer(f"{where}: status {answer.status} to a ranged GET")
