"""Parquet page headers: the Thrift compact protocol, read into plain dictionaries.

pyarrow parses a Parquet file's footer but exposes nothing below a column
chunk, and a row lookup (:mod:`.rows`) needs the page headers inside one.
A page header is a small Thrift struct in the compact protocol; this reads
any such struct into ``{field id: value}`` (nested structs as dictionaries,
lists as lists, maps as lists of pairs), so the caller picks the fields the Parquet format defines
and ignores the rest (statistics, CRC, fields of later format versions).

Input is untrusted: every read is bounds-checked and nesting is limited, and
any malformed header raises :class:`ThriftError`, which the row lookup
answers by decoding the record file the ordinary way (and reporting that
decoder's error, if it has one).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ThriftError", "read_struct"]

_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)

#: Deepest nesting of structs and lists accepted (a page header nests three levels).
MAX_DEPTH = 8


class ThriftError(ValueError):
    """Bytes that are not a well-formed compact-protocol struct."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data) and data[pos] < 0x80:  # most numbers in a page header take one byte
        return data[pos], pos + 1
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ThriftError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _zigzag(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(data, pos)
    return (value >> 1) ^ -(value & 1), pos


def _value(data: bytes, pos: int, kind: int, depth: int) -> tuple[Any, int]:
    if kind in (_TRUE, _FALSE):
        return kind == _TRUE, pos
    if kind == _BYTE:
        if pos >= len(data):
            raise ThriftError("truncated byte")
        return data[pos], pos + 1
    if kind in (_I16, _I32, _I64):
        return _zigzag(data, pos)
    if kind == _DOUBLE:
        if pos + 8 > len(data):
            raise ThriftError("truncated double")
        return data[pos : pos + 8], pos + 8
    if kind == _BINARY:
        length, pos = _varint(data, pos)
        if pos + length > len(data):
            raise ThriftError("truncated binary")
        return data[pos : pos + length], pos + length
    if depth >= MAX_DEPTH:
        raise ThriftError("nested too deeply")
    if kind == _STRUCT:
        return _struct(data, pos, depth + 1)
    if kind in (_LIST, _SET):
        if pos >= len(data):
            raise ThriftError("truncated list")
        header = data[pos]
        pos += 1
        count, element = header >> 4, header & 0x0F
        if count == 15:
            count, pos = _varint(data, pos)
        if count > len(data) - pos:  # every element takes a byte at least
            raise ThriftError("list longer than its bytes")
        items = []
        for _ in range(count):
            if element in (_TRUE, _FALSE):  # in a list a boolean is one byte of its own
                item, pos = _value(data, pos, _BYTE, depth + 1)
                item = item == _TRUE
            else:
                item, pos = _value(data, pos, element, depth + 1)
            items.append(item)
        return items, pos
    if kind == _MAP:
        count, pos = _varint(data, pos)
        if not count:
            return [], pos
        if pos >= len(data) or count > len(data) - pos:
            raise ThriftError("truncated map")
        key_kind, value_kind = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        pairs = []  # (key, value) pairs: a key may be a list or struct, which no dict takes
        for _ in range(count):
            key, pos = _value(data, pos, key_kind, depth + 1)
            value, pos = _value(data, pos, value_kind, depth + 1)
            pairs.append((key, value))
        return pairs, pos
    raise ThriftError(f"unknown compact type {kind}")


def _struct(data: bytes, pos: int, depth: int) -> tuple[dict[int, Any], int]:
    fields: dict[int, Any] = {}
    last = 0
    while True:
        if pos >= len(data):
            raise ThriftError("struct without its end")
        header = data[pos]
        pos += 1
        if header == _STOP:
            return fields, pos
        delta, kind = header >> 4, header & 0x0F
        if delta:
            field = last + delta
        else:
            field, pos = _zigzag(data, pos)
        fields[field], pos = _value(data, pos, kind, depth)
        last = field


def read_struct(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """The struct starting at ``pos`` of ``data`` and the position just past it."""
    return _struct(data, pos, 0)
