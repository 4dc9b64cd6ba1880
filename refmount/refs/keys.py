"""Validation of reference-set keys, which become paths in the mounted tree.

A key is exposed verbatim as a relative POSIX path, so anything the kernel
would interpret differently from the key itself must be refused up front:
absolute paths, ``.``/``..`` segments, empty segments (``a//b``, trailing
``/``), NUL and other control characters, and names longer than NAME_MAX.
Keys are never normalised: accepting ``a//b`` as ``a/b`` would let two
distinct keys collide silently, so a non-normal key is an error instead.

Backslash is allowed: it is an ordinary filename character on POSIX and
Zarr itself never produces it, so refusing it would only reject valid data.
"""

from __future__ import annotations

import re

from refmount.errors import InvalidReferences

__all__ = ["NAME_MAX", "split_key", "validate_key"]

#: Longest file name (one path segment) Linux accepts, in bytes.
NAME_MAX = 255

# C0 controls (includes NUL), DEL and C1 controls: never meaningful in a
# path and hazardous in terminals and logs.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# A character can take at most 4 bytes in UTF-8, so a segment of at most
# NAME_MAX // 4 characters never needs encoding to check its byte length.
_SAFE_CHARS = NAME_MAX // 4


def _check_segment(key: str, segment: str) -> None:
    """Refuse one path segment of ``key`` that the tree could not represent."""
    if segment == "":
        raise InvalidReferences("key has an empty path segment (leading, trailing or doubled '/')", key=key)
    if segment == "." or segment == "..":
        raise InvalidReferences(f"key has a {segment!r} path segment", key=key)
    if len(segment) > _SAFE_CHARS:
        try:
            size = len(segment.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidReferences("key is not valid Unicode (lone surrogate)", key=key) from None
        if size > NAME_MAX:
            raise InvalidReferences(
                f"key has a path segment of {size} bytes, longer than NAME_MAX ({NAME_MAX})", key=key
            )


def split_key(key: object) -> tuple[str, ...]:
    """Validate ``key`` and return its path segments.

    This is the single place that decides what a legal key is, so that the
    parser and the tree builder can never disagree.
    """
    if not isinstance(key, str):
        raise InvalidReferences(f"key {key!r} must be a string, not {type(key).__name__}")
    if key == "":
        raise InvalidReferences("key is empty", key=key)
    if key[0] == "/":
        raise InvalidReferences("key is an absolute path (starts with '/')", key=key)
    bad = _CONTROL.search(key)
    if bad is not None:
        raise InvalidReferences(
            f"key contains control character U+{ord(bad.group()):04X} at position {bad.start()}", key=key
        )
    segments = tuple(key.split("/"))
    for segment in segments:
        _check_segment(key, segment)
    if not key.isascii():
        # Lone surrogates (possible from a lenient JSON decoder) are not
        # encodable, so the key could not become a file name.
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidReferences("key is not valid Unicode (lone surrogate)", key=key) from None
    return segments


def validate_key(key: object) -> None:
    """Raise :class:`InvalidReferences` unless ``key`` is a normal relative path."""
    split_key(key)
