"""Progress of a many-file scan on stderr: a redrawn bar on a terminal, one line per file otherwise.

A log file or CI output gets plain lines it can keep; a person at a terminal
gets one line that updates in place.
"""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """Counts finished files out of ``total`` and reports each on ``stream`` (nothing when ``quiet``)."""

    def __init__(self, total: int, stream: TextIO, *, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.quiet = quiet
        self.bar = not quiet and _is_terminal(stream)
        self.started = time.monotonic()

    def advance(self, source: str, detail: str) -> None:
        """One more file finished: redraw the bar, or print ``[n/total] source: detail``."""
        self.done += 1
        if self.quiet:
            return
        if self.bar:
            filled = BAR_WIDTH * self.done // max(1, self.total)
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} files "
                              f"({elapsed:.0f}s)")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {source}: {detail}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that must not be overwritten by the bar (a problem with one file)."""
        if self.bar:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self.bar and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
