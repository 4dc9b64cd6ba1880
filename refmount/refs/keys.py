"""Validation of reference-set keys, which become paths in the mounted tree.

A key is exposed verbatim as a relative POSIX path, so anything the kernel
would interpret differently from the key itself must be refused up front:
absolute paths, ``.``/``..`` segments, empty segments (``a//b``, trailing
``/``), NUL and other control characters, and names longer than NAME_MAX.
Keys are never normalised: accepting ``a//b`` as ``a/b`` would let two
distinct keys collide silently, so a non-normal key is an error instead.
One spelling is the exception, because a widely used writer produces it:
VirtualiZarr writes the one chunk of a 0-d array ``crs`` as ``crs/``
rather than ``crs/0``. :func:`scalar_chunk_array` recognises that shape;
the reader that knows the array is 0-d (its ``.zarray`` says ``shape: []``)
renames it to ``crs/0`` and refuses it like any other empty segment
otherwise, and refuses both spellings together.

Backslash is allowed: it is an ordinary filename character on POSIX and
Zarr itself never produces it, so refusing it would only reject valid data.
"""

from __future__ import annotations

import re

from refmount.errors import InvalidReferences

__all__ = [
    "NAME_MAX", "SCALAR_CHUNK", "ZMETADATA", "is_meta_key", "key_problem", "scalar_chunk_array", "split_key",
    "validate_key",
]

#: Longest file name (one path segment) Linux accepts, in bytes.
NAME_MAX = 255

# C0 controls (includes NUL), DEL and C1 controls: never meaningful in a
# path and hazardous in terminals and logs.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# A character can take at most 4 bytes in UTF-8, so a segment of at most
# NAME_MAX // 4 characters never needs encoding to check its byte length.
_SAFE_CHARS = NAME_MAX // 4


def _segment_problem(segment: str) -> str | None:
    """Say why one path segment could not be a file name, or None if it can."""
    if segment == "":
        return "key has an empty path segment (leading, trailing or doubled '/')"
    if segment == "." or segment == "..":
        return f"key has a {segment!r} path segment"
    if len(segment) > _SAFE_CHARS:
        try:
            size = len(segment.encode("utf-8"))
        except UnicodeEncodeError:
            return "key is not valid Unicode (lone surrogate)"
        if size > NAME_MAX:
            return f"key has a path segment of {size} bytes, longer than NAME_MAX ({NAME_MAX})"
    return None


def key_problem(key: str) -> str | None:
    """Say why ``key`` is not a normal relative path, or return None if it is.

    Returning the reason instead of raising lets callers that know more
    context (such as which generator produced the key) word the refusal.
    """
    if key == "":
        return "key is empty"
    if key[0] == "/":
        return "key is an absolute path (starts with '/')"
    bad = _CONTROL.search(key)
    if bad is not None:
        return f"key contains control character U+{ord(bad.group()):04X} at position {bad.start()}"
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    if not key.isascii():
        # Lone surrogates (possible from a lenient JSON decoder) are not
        # encodable, so the key could not become a file name.
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return "key is not valid Unicode (lone surrogate)"
    return None


#: The key of the only chunk of a 0-d Zarr array, relative to the array.
SCALAR_CHUNK = "0"


def scalar_chunk_array(key: str) -> str | None:
    """The array ``crs`` if ``key`` is ``crs/`` (VirtualiZarr's spelling of ``crs/0``) and ``crs`` is a legal key.

    Only the shape of the key is judged here; whether ``crs`` is a 0-d
    array is for the caller, who has its ``.zarray``.
    """
    if not key.endswith("/"):
        return None
    array = key[:-1]
    return array if array and key_problem(array) is None else None


def validate_key(key: object) -> None:
    """Raise :class:`InvalidReferences` unless ``key`` is a normal relative path."""
    if not isinstance(key, str):
        raise InvalidReferences(f"key {key!r} must be a string, not {type(key).__name__}")
    problem = key_problem(key)
    if problem is not None:
        raise InvalidReferences(problem, key=key)


def split_key(key: object) -> tuple[str, ...]:
    """Validate ``key`` and return its path segments.

    This module is the single place that decides what a legal key is, so
    that the parser and the tree builder can never disagree.
    """
    validate_key(key)
    assert isinstance(key, str)
    return tuple(key.split("/"))


#: Zarr's consolidated metadata key; the Parquet layout keeps every metadata document in it.
ZMETADATA = ".zmetadata"
#: The metadata document of every Zarr v3 group and array.
ZARR_JSON = "zarr.json"


def is_meta_key(key: str) -> bool:
    """Whether ``key`` is a Zarr metadata document (``.zgroup``, ``x/.zarray``...) rather than a chunk.

    fsspec's rule (its Parquet layout keeps exactly these keys as JSON in
    ``.zmetadata``); the writers use it to store such keys as JSON documents.
    """
    return key.startswith(".z") or "/.z" in key
