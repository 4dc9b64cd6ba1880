"""Resuming a directory listing at the kernel's offset, without listing the directory again each time.

The kernel reads a directory a buffer at a time, each request naming the
offset to continue from (the cookie of the last entry it kept). libfuse's
high-level API gives attributes to the kernel (readdirplus) only when the
filesystem answers in this offset mode, so every request comes back here.
A listing restarted for each request would cost the square of the
directory's size; a :class:`DirStream` keeps the listing's iterator and the
last entries it produced, so a request continuing where the last one ended
(or a little before it: an entry that did not fit, or entries the kernel
dropped when the reader's buffer filled) is served from memory, and only a
seek far back (``rewinddir``, ``seekdir``) lists again.

Positions count from 0; the entry at position ``p`` carries the offset
``p + 1`` (0 means "from the start", so no entry may carry it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: Entries kept behind the newest one; several times the entries of one kernel request.
KEPT = 1024


class DirStream(Generic[T]):
    """The entries of one open directory, produced once and replayable over a recent window."""

    def __init__(self, produce: Callable[[], Iterator[T]], kept: int = KEPT) -> None:
        self._produce = produce
        self._kept = kept
        self._entries: Iterator[T] | None = None
        self._window: list[T] = []
        self._base = 0  # position of _window[0]
        self._done = False

    def starting_at(self, position: int) -> Iterator[tuple[int, T]]:
        """``(position, entry)`` from ``position`` on; the caller stops when the kernel's buffer is full."""
        if self._entries is None or position < self._base:
            self._restart()
        end = self._base + len(self._window)
        while end < position and self._draw() is not None:  # a seek ahead of what was produced
            end += 1
        for index in range(max(0, position - self._base), len(self._window)):
            yield self._base + index, self._window[index]
        while True:
            entry = self._draw()
            if entry is None:
                return
            yield self._base + len(self._window) - 1, entry

    def _restart(self) -> None:
        self._entries = self._produce()
        self._window = []
        self._base = 0
        self._done = False

    def _draw(self) -> T | None:
        """The next entry, kept in the window; None at the end."""
        if self._done or self._entries is None:
            return None
        try:
            entry = next(self._entries)
        except StopIteration:
            self._done = True
            return None
        except BaseException:
            self._entries = None  # a failed listing is listed again by the next read, not ended
            raise
        self._window.append(entry)
        if len(self._window) > 2 * self._kept:
            del self._window[: self._kept]
            self._base += self._kept
        return entry
