"""Which store failures are worth another attempt, how long to wait, and the error given up with.

Pure decisions over exceptions (no I/O), so the rule is in one place and
reads as a rule. Worth another attempt: everything except what a retry
cannot change: a missing object, denied access, a refused URL, a changed
object, a client error (4xx other than 408 and 429, or botocore's missing
credentials and request validation), and a body *longer*
than asked (the server ignores Range, and will again). A body cut short is
retried, unless the object is known to end before the range does.

Attempts wait a jittered, exponentially growing delay (0.1 s doubling, at
most 2 s), and stop at ``retries`` attempts or when the next one could not
start before the deadline, whichever comes first.

:class:`RecentFailures` is the one piece of state here: the ranges whose
reads have just failed after all their attempts, remembered for a few
seconds. The kernel re-issues a failed readahead as a smaller read of its
own; a read of a remembered range gets one short attempt
(:func:`probe_budget`) instead of the whole time bound, so one read(2) is
answered within about ``timeout`` rather than twice it, while a store that
has healed meanwhile is still read at once.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from refmount.byterange import ByteRange
from refmount.errors import BackendError, ForbiddenURL, NotFound, StaleObject

#: HTTP statuses of client errors that a retry can cure.
_RETRYABLE_4XX = frozenset({408, 429})

#: Client-side failures of botocore (matched by class name, so botocore need not be imported) that
#: a retry cannot cure: no or partial credentials, a request the client itself refuses to build.
_NON_RETRYABLE_NAMES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError",
    "InvalidRegionError", "UnknownSignatureVersionError", "ProfileNotFound", "InvalidConfigError",
    "UnknownServiceError", "UnknownCredentialError",
})


class WrongLength(BackendError):
    """A body whose length is not the one asked for (cut short, or range ignored)."""

    def __init__(self, message: str, *, oversized: bool = False) -> None:
        super().__init__(message)
        self.oversized = oversized


class GaveUp(BackendError):
    """A failure worth retrying outlasted the attempts or the time bound: the one error worth remembering."""


class ChangedObject(Exception):
    """The store says the object no longer has the ETag seen at first access (HTTP 412)."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an fsspec/aiohttp/botocore error, if there is one."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        status = getattr(candidate, "status", None)
        if isinstance(status, int):
            return status
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


def unwrap(exc: BaseException) -> BaseException:
    """fsspec's HTTP lookups report *any* failure (a 503, a reset) as FileNotFoundError; undo that."""
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        if http_status(cause) not in (404, 410):
            return cause
    return exc


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt: timeouts, resets, 5xx, throttling, short bodies."""
    exc = unwrap(exc)
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        NotFound, ForbiddenURL, StaleObject, ChangedObject)):
        return False
    if isinstance(exc, WrongLength):
        return not exc.oversized
    if type(exc).__name__ == "TooManyRedirects":
        return False  # aiohttp's: a redirect loop stays one
    if any(cls.__name__ in _NON_RETRYABLE_NAMES for cls in type(exc).__mro__):
        return False  # missing credentials or a malformed request stay so
    status = http_status(exc)
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return False
    if isinstance(exc, (TypeError, AttributeError, NameError, AssertionError)):
        return False  # a bug, not the network
    return True


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): jittered, doubling, at most 2 s."""
    return min(2.0, 0.1 * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)


def retry_delay(exc: BaseException, attempt: int, *, where: str, retries: int, deadline: float, timeout: float) -> float:
    """The pause before another attempt after ``exc``; raises the error to give up with instead.

    ``where`` names the object (and range) for the message; ``deadline`` is
    a ``time.monotonic()`` instant. A changed object (:class:`ChangedObject`)
    is the caller's to handle first: it has to mark the object stale.
    """
    exc = unwrap(exc)
    if isinstance(exc, (StaleObject, ForbiddenURL)):
        raise exc
    if isinstance(exc, WrongLength) and exc.oversized:
        raise BackendError(str(exc)) from None
    if isinstance(exc, FileNotFoundError):
        raise BackendError(f"{where}: object not found") from None
    if isinstance(exc, PermissionError):
        raise BackendError(f"{where}: access denied") from None
    delay = backoff(attempt)
    if not is_transient(exc) or attempt >= retries or time.monotonic() + delay >= deadline:
        timed_out = isinstance(exc, (asyncio.TimeoutError, TimeoutError))
        reason = f"no answer within {timeout:g} s" if timed_out else describe(exc)
        error = GaveUp if is_transient(exc) else BackendError
        raise error(f"{where}: {reason} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
    return delay


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for one log line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Failure:
    span: ByteRange | None  # None: the object's lookup failed, so every range of it would
    until: float
    message: str
    at: float


class RecentFailures:
    """Ranges of URLs whose reads just failed for good, remembered for ``seconds``.

    Only :class:`GaveUp` is worth remembering: other failures are answered
    at once anyway. :meth:`find` tells whether a read overlaps a remembered
    failure; a successful read clears what it overlaps, and entries expire
    on their own. ``seconds`` of 0 remembers nothing.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._failed: dict[str, list[_Failure]] = {}
        self._lock = threading.Lock()

    def remember(self, url: str, spans: Sequence[ByteRange] | None, error: BaseException) -> None:
        """Record that reading ``spans`` of ``url`` (None: looking it up) failed with ``error``."""
        if self.seconds <= 0 or not isinstance(error, GaveUp):
            return
        now = self._clock()
        failed: list[ByteRange | None] = list(spans) if spans else [None]
        entries = [_Failure(span, now + self.seconds, str(error), now) for span in failed]
        with self._lock:
            kept = [f for f in self._failed.get(url, []) if f.until > now]
            self._failed[url] = kept + entries

    def find(self, url: str, spans: Sequence[ByteRange] | None) -> str | None:
        """The message of a remembered failure that ``spans`` of ``url`` (None: its lookup) overlap."""
        if not self._failed:
            return None
        now = self._clock()
        with self._lock:
            entries = self._failed.get(url)
            if not entries:
                return None
            entries[:] = [f for f in entries if f.until > now]
            if not entries:
                del self._failed[url]
                return None
            hit = next((f for f in entries if _overlaps(f.span, spans)), None)
        return None if hit is None else f"{hit.message}, {now - hit.at:.1f} s ago"

    def forget(self, url: str, spans: Sequence[ByteRange] | None) -> None:
        """A read of ``spans`` (None: a lookup) succeeded: drop the failures it overlaps."""
        if not self._failed:
            return
        with self._lock:
            entries = self._failed.get(url)
            if entries:
                entries[:] = [f for f in entries if not _overlaps(f.span, spans)]
                if not entries:
                    del self._failed[url]


def probe_budget(timeout: float) -> float:
    """Seconds one read of a range that just failed may take: enough for a healthy store, far less than ``timeout``."""
    return min(1.0, timeout / 4)


def _overlaps(failed: ByteRange | None, spans: Sequence[ByteRange] | None) -> bool:
    """A failed lookup matches everything; a failed range matches the ranges it shares bytes with."""
    if failed is None:
        return True
    if spans is None:
        return False
    return any(s.start < failed.stop and failed.start < s.stop for s in spans)
