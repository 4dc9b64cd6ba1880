"""Icechunk manifest files (spec version 1) decoded into chunk references: pure, no I/O.

The ``icechunk`` package reads chunk bytes but does not say where a virtual
chunk lives, and that location is what lets refmount read it as a ranged GET
through its own block cache and URL policy. So the manifest objects
(``manifests/<id>``) are decoded here. Their layout is the published
Icechunk format: a 39-byte header (12 magic bytes ``ICE🧊CHUNK``, 24 bytes
naming the writer, the spec version, the file type, the compression), then
a (usually zstd-compressed) FlatBuffers ``Manifest`` table::

    Manifest      { id: ObjectId12; arrays: [ArrayManifest] }
    ArrayManifest { node_id: ObjectId8; refs: [ChunkRef] }
    ChunkRef      { index: [uint32]; inline: [uint8]; offset: uint64; length: uint64;
                    chunk_id: ObjectId12; location: string; checksum_etag: string;
                    checksum_last_modified: uint32 }

A reference with ``inline`` bytes is an inline chunk, one with ``chunk_id``
a native chunk (``length`` bytes at ``offset`` of the repository's
``chunks/<id>`` object), one with ``location`` a virtual chunk. Only the
fields this needs are read, with every offset checked against the buffer, so
a damaged manifest is an error naming the file, never a wrong reference.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from refmount.errors import InvalidReferences

MAGIC = "ICE🧊CHUNK".encode()
HEADER_SIZE = 39
SPEC_VERSION = 1
MANIFEST_FILE = 2
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

__all__ = ["ChunkEntry", "base32", "decode_manifest", "manifest_payload"]


def base32(raw: bytes) -> str:
    """Crockford base32 without padding: how Icechunk spells object and node ids in paths and JSON."""
    number = int.from_bytes(raw, "big")
    bits = len(raw) * 8
    pad = (-bits) % 5
    number <<= pad
    count = (bits + pad) // 5
    return "".join(_CROCKFORD[(number >> (5 * (count - 1 - i))) & 31] for i in range(count))


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk of one array: exactly one of ``inline``, ``chunk_id`` and ``location`` is set."""

    index: tuple[int, ...]
    inline: bytes | None = None
    chunk_id: str | None = None
    location: str | None = None
    offset: int = 0
    length: int = 0


def manifest_payload(data: bytes, name: str) -> bytes:
    """The FlatBuffers bytes of a manifest file, header checked and body decompressed."""
    if len(data) < HEADER_SIZE or data[:12] != MAGIC:
        raise InvalidReferences(f"Icechunk manifest {name} does not start with the Icechunk magic bytes")
    version, kind, compression = data[36], data[37], data[38]
    if version != SPEC_VERSION:
        raise InvalidReferences(f"Icechunk manifest {name} uses format version {version}; refmount reads version "
                                f"{SPEC_VERSION} (repositories written by icechunk 1.x)")
    if kind != MANIFEST_FILE:
        raise InvalidReferences(f"Icechunk file {name} is of type {kind}, not a manifest")
    body = data[HEADER_SIZE:]
    if compression == 0:
        return body
    if compression != 1:
        raise InvalidReferences(f"Icechunk manifest {name} uses unknown compression {compression}")
    try:
        import zstandard
    except ImportError:
        raise InvalidReferences("reading Icechunk manifests needs the 'zstandard' package "
                                "(pip install 'refmount[icechunk]')") from None
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    except zstandard.ZstdError as exc:
        raise InvalidReferences(f"Icechunk manifest {name} cannot be decompressed: {exc}") from None


class _Buffer:
    """Bounds-checked FlatBuffers reading: tables, vectors, strings and inline structs."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.name = name

    def _fail(self) -> InvalidReferences:
        return InvalidReferences(f"Icechunk manifest {self.name} is damaged (an offset points outside the file)")

    def u32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.data):
            raise self._fail()
        value: int = struct.unpack_from("<I", self.data, at)[0]
        return value

    def root(self) -> int:
        return self.u32(0)

    def field(self, table: int, number: int) -> int | None:
        """Absolute position of field ``number`` of the table at ``table``; None when it is absent."""
        if table < 0 or table + 4 > len(self.data):
            raise self._fail()
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        if vtable < 0 or vtable + 4 > len(self.data):
            raise self._fail()
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * number
        if slot + 2 > vtable_size or vtable + slot + 2 > len(self.data):
            return None
        relative = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + relative if relative else None

    def follow(self, at: int) -> int:
        """Where the offset stored at ``at`` points (tables, vectors, strings)."""
        return at + self.u32(at)

    def vector(self, at: int, item: int) -> tuple[int, int]:
        """``(first element, count)`` of the vector whose offset is stored at ``at``."""
        start = self.follow(at)
        count = self.u32(start)
        if start + 4 + count * item > len(self.data):
            raise self._fail()
        return start + 4, count

    def blob(self, at: int, size: int) -> bytes:
        if at < 0 or at + size > len(self.data):
            raise self._fail()
        return bytes(self.data[at:at + size])

    def u64(self, at: int | None) -> int:
        if at is None:
            return 0
        if at + 8 > len(self.data):
            raise self._fail()
        value: int = struct.unpack_from("<Q", self.data, at)[0]
        return value


def decode_manifest(payload: bytes, name: str, node_id: str) -> Iterator[ChunkEntry]:
    """The chunk references a manifest holds for the array with ``node_id`` (its base32 id)."""
    buffer = _Buffer(payload, name)
    manifest = buffer.root()
    arrays_at = buffer.field(manifest, 1)
    if arrays_at is None:
        return
    first, count = buffer.vector(arrays_at, 4)
    for i in range(count):
        array = buffer.follow(first + 4 * i)
        node_at = buffer.field(array, 0)
        if node_at is None or base32(buffer.blob(node_at, 8)) != node_id:
            continue
        refs_at = buffer.field(array, 1)
        if refs_at is None:
            continue
        refs, total = buffer.vector(refs_at, 4)
        for j in range(total):
            yield _chunk(buffer, buffer.follow(refs + 4 * j))


def _chunk(buffer: _Buffer, ref: int) -> ChunkEntry:
    index_at = buffer.field(ref, 0)
    if index_at is None:
        raise InvalidReferences(f"Icechunk manifest {buffer.name}: a chunk reference has no index")
    start, dims = buffer.vector(index_at, 4)
    index = tuple(buffer.u32(start + 4 * d) for d in range(dims))
    offset, length = buffer.u64(buffer.field(ref, 2)), buffer.u64(buffer.field(ref, 3))
    inline_at = buffer.field(ref, 1)
    if inline_at is not None:
        data_at, size = buffer.vector(inline_at, 1)
        return ChunkEntry(index, inline=buffer.blob(data_at, size))
    chunk_at = buffer.field(ref, 4)
    if chunk_at is not None:
        return ChunkEntry(index, chunk_id=base32(buffer.blob(chunk_at, 12)), offset=offset, length=length)
    location_at = buffer.field(ref, 5)
    if location_at is not None:
        text_at, size = buffer.vector(location_at, 1)
        try:
            location = buffer.blob(text_at, size).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidReferences(f"Icechunk manifest {buffer.name}: a virtual chunk location is not UTF-8") from None
        return ChunkEntry(index, location=location, offset=offset, length=length)
    raise InvalidReferences(f"Icechunk manifest {buffer.name}: chunk {list(index)} is neither inline, native nor virtual")
