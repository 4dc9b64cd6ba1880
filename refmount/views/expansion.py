"""How far a compressed chunk expands, counted before numcodecs decodes it whole.

numcodecs decompresses a chunk in one call, so a payload of a few hundred
KB declared as a small chunk could expand to gigabytes before the decoded
view sees its size. :func:`check_expansion` inflates zlib, gzip and zstd
payloads in pieces, dropping the output, and refuses past the limit
(option ``max_decoded_chunk``). A zlib or gzip payload it had to inflate is
handed back inflated (:func:`inflate_within`), so the chunk is not inflated
a second time by the codec: for chunks of a few hundred KB and more that
second pass was a fifth of a decoded read's CPU.
"""

from __future__ import annotations

import zlib
from typing import Any

from refmount.errors import DecodeError

__all__ = ["check_expansion", "inflate_within"]

#: Deflate cannot expand its input more than this (RFC 1951 blocks: 258 bytes from 2 bits, ~1032:1).
_DEFLATE_MAX_RATIO = 1032


def check_expansion(path: str, codec_id: Any, raw: bytes, limit: int) -> None:
    """Refuse a zlib/gzip/zstd payload that decompresses to more than ``limit`` bytes, before numcodecs runs."""
    inflate_within(path, codec_id, raw, limit)


def inflate_within(path: str, codec_id: Any, raw: bytes, limit: int) -> bytes | None:
    """Refuse a payload that decompresses past ``limit``; a zlib/gzip one that had to be inflated, inflated.

    Returns what the codec's own decode returns (numcodecs' ``zlib``: one
    zlib stream; ``gzip``: every member), or None when the payload was not
    inflated here: too small to reach ``limit`` even at deflate's maximum
    ratio, another codec, or malformed (left to the codec, which reports it
    as a :class:`DecodeError`).
    """
    if codec_id in ("zlib", "gzip"):
        if len(raw) * _DEFLATE_MAX_RATIO <= limit:
            return None
        produced, inflated = _inflate(raw, limit, gzip=codec_id == "gzip")
    elif codec_id == "zstd":
        produced, inflated = _zstd_size(raw, limit), None
    else:
        return None
    if produced > limit:
        raise DecodeError(
            f"{path}: codec {codec_id!r} data decompresses to more than max_decoded_chunk ({limit} bytes)"
        )
    return inflated


def _inflate(raw: bytes, limit: int, *, gzip: bool) -> tuple[int, bytes | None]:
    """Bytes the payload inflates to (counted up to just past ``limit``), and them when it decoded cleanly.

    zlib: one stream with a zlib header, as :func:`zlib.decompress`; gzip:
    members one after another, as :class:`gzip.GzipFile` reads them.
    """
    produced = 0
    pieces: list[bytes] = []
    data = bytes(raw)
    wbits = (16 + zlib.MAX_WBITS) if gzip else zlib.MAX_WBITS
    try:
        while data and produced <= limit:
            inflater = zlib.decompressobj(wbits)
            while data and produced <= limit and not inflater.eof:
                piece = inflater.decompress(data, 1 << 20)
                produced += len(piece)
                pieces.append(piece)
                data = inflater.unconsumed_tail
            if not inflater.eof:
                return produced, None  # truncated: the codec reports it
            data = inflater.unused_data if gzip else b""
    except zlib.error:
        return produced, None  # the codec reports the corruption itself
    return produced, (b"".join(pieces) if produced <= limit else None)


def _zstd_size(raw: bytes, limit: int) -> int:
    """Bytes zstd frames decompress to (the declared content size first), counted up to just past ``limit``."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - numcodecs brings its own zstd, this check then relies on the header
        return 0
    try:
        declared = zstandard.frame_content_size(raw)
        if declared > limit:
            return int(declared)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        produced = 0
        while produced <= limit:
            piece = reader.read(1 << 20)
            if not piece:
                break
            produced += len(piece)
        return produced
    except zstandard.ZstdError:
        return 0
