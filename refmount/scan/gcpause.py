"""Cyclic garbage collection paused while h5py reads through a Python file object.

h5py holds its global lock (``phil``) while it calls the file object's
``read``; an fsspec file answers that read on fsspec's event-loop thread.
Should the cyclic collector run on that thread and find an h5py object in
the garbage, freeing it needs ``phil``: the loop thread waits for the lock,
the reading thread waits for the loop, and the scan hangs for good (h5py
issue 2019; h5py's documentation names pausing the collector as the remedy).
Reference counting still frees everything not in a cycle while paused, and
one collection runs when the last reader leaves.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_readers = 0
_was_enabled = False


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the duration; nested and concurrent uses share one pause."""
    global _readers, _was_enabled
    with _lock:
        if _readers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _readers += 1
    try:
        yield
    finally:
        with _lock:
            _readers -= 1
            resume = _readers == 0 and _was_enabled
            if resume:
                gc.enable()
        if resume:
            gc.collect()
