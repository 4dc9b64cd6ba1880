"""How far a compressed chunk expands, counted before numcodecs decodes it whole.

numcodecs decompresses a chunk in one call, so a payload of a few hundred
KB declared as a small chunk could expand to gigabytes before the decoded
view sees its size. :func:`check_expansion` inflates zlib, gzip and zstd
payloads in pieces, dropping the output, and refuses past the limit
(option ``max_decoded_chunk``).
"""

from __future__ import annotations

import zlib
from typing import Any

from refmount.errors import DecodeError

__all__ = ["check_expansion"]

#: Deflate cannot expand its input more than this (RFC 1951 blocks: 258 bytes from 2 bits, ~1032:1).
_DEFLATE_MAX_RATIO = 1032


def check_expansion(path: str, codec_id: Any, raw: bytes, limit: int) -> None:
    """Refuse a zlib/gzip/zstd payload that decompresses to more than ``limit`` bytes, before numcodecs runs.

    Deflate payloads too small to reach ``limit`` even at deflate's maximum
    ratio are not examined at all; malformed data is left to the codec,
    which reports it as a :class:`DecodeError`.
    """
    if codec_id in ("zlib", "gzip"):
        if len(raw) * _DEFLATE_MAX_RATIO <= limit:
            return
        produced = _deflated_size(raw, limit)
    elif codec_id == "zstd":
        produced = _zstd_size(raw, limit)
    else:
        return
    if produced > limit:
        raise DecodeError(
            f"{path}: codec {codec_id!r} data decompresses to more than max_decoded_chunk ({limit} bytes)"
        )


def _deflated_size(raw: bytes, limit: int) -> int:
    """Bytes a zlib or (multi-member) gzip stream inflates to, counted up to just past ``limit``."""
    produced = 0
    data = bytes(raw)
    try:
        while data and produced <= limit:
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, detected
            while data and produced <= limit and not inflater.eof:
                produced += len(inflater.decompress(data, 1 << 20))
                data = inflater.unconsumed_tail
                if not data and not inflater.eof:
                    break
            data = inflater.unused_data if inflater.eof else b""
    except zlib.error:
        return produced  # the codec reports the corruption itself
    return produced


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
