"""The decoded view: every chunk file holds its chunk's decoded bytes, every ``.zarray`` says no codecs.

Why it exists. The readers a mount is for — netCDF-C (``ncdump``, ``nccopy``,
Fortran and C models), GDAL, CDO/NCO — open a Zarr tree on a local path but
decode only the few codecs they were built with: netCDF-C 4.9 prints garbage
for a zlib chunk it has no filter for, GDAL refuses ``shuffle``. Under
``-o view=decoded`` the mount decodes with numcodecs (the codecs the
reference set names: zlib/gzip, shuffle, blosc, zstd, lz4, bz2, delta,
fixedscaleoffset, fletcher32, ...) and presents what every Zarr v2 reader
can read: ``compressor: null, filters: null``, and the same dtype, shape,
chunks, fill value, order, attributes and ``_ARRAY_DIMENSIONS``.

What a reader sees, per array:

* ``.zarray``: rewritten without codecs (also inside ``.zmetadata``).
* a chunk file: ``itemsize * prod(chunks)`` bytes, known without decoding, so
  ``stat`` and ``ls -l`` never touch the object store. The bytes are the
  chunk in the array's declared ``order`` (``C`` for nearly every array; an
  ``order: "F"`` array keeps ``F``, because that is how any Zarr reader
  interprets codec-free chunk bytes of that array). Zarr v2 chunks are
  full-shape, edge chunks included; a source that stores an edge chunk cut
  to the array's extent is padded with the fill value to the full shape.
* object dtypes (variable-length strings): unchanged, codec kept — their
  decoded form is Python objects, not bytes a reader could take raw.
* an array whose codec is not installed keeps its decoded ``.zarray`` and
  sizes, but every chunk read fails with EIO and a log line naming the
  codec: never wrong bytes. ``refmount inspect`` lists such arrays.

Caching. A chunk is decoded once and kept in a :class:`DecodedChunkCache`
whose budget is a share of ``cache_size`` (see :func:`cache_budgets`), so
the kernel sweeping a chunk file in 128 KiB pieces costs one fetch and one
decode, and concurrent readers of one chunk wait for a single decode
(single flight). The share is separate from the raw block cache on purpose:
raw readahead streams many blocks through the block cache and must not
evict the decoded chunk a reader is half-way through.

The view is a property of one reference set (:func:`present`): the tree and
reader it returns wrap the raw ones, so a mount of several sets can present
each in its own view.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cachetools import LRUCache

from refmount.errors import DecodeError, UnsupportedCodec
from refmount.metrics import Metrics
from refmount.read.ranges import clamp_read
from refmount.refs.model import Inline, Range, Reference, Whole, known_size
from refmount.refs.tree import File, Namespace
from refmount.urls import redact_url

log = logging.getLogger("refmount.decoded")

VIEWS = ("raw", "decoded")

#: Share of ``cache_size`` given to decoded chunks under the decoded view.
DECODED_SHARE = 0.5


def parse_view(text: Any) -> str:
    """The ``view`` option: ``raw`` (bytes as referenced) or ``decoded``."""
    value = str(text).strip().lower()
    if value not in VIEWS:
        raise ValueError(f"{text!r} is not a view (use raw or decoded)")
    return value


def cache_budgets(view: str, cache_size: int, block_size: int) -> tuple[int, int]:
    """Split one memory budget into (raw block cache, decoded chunk cache) bytes.

    The raw cache always keeps at least one block so a read can be served.
    """
    if view != "decoded":
        return cache_size, 0
    decoded = int(cache_size * DECODED_SHARE)
    raw = cache_size - decoded
    if raw < block_size:
        raw = min(block_size, cache_size)
        decoded = cache_size - raw
    return raw, decoded


# -- array metadata -------------------------------------------------------------


def numpy_dtype(spec: Any) -> np.dtype:
    """A Zarr v2 dtype (string, or a structured list of [name, type(, shape)]) as numpy."""
    if isinstance(spec, list):
        return np.dtype([tuple(_field(item)) for item in spec])
    return np.dtype(spec)


def _field(item: list[Any]) -> list[Any]:
    name, kind, *rest = item
    return [name, numpy_dtype(kind) if isinstance(kind, list) else kind, *(tuple(r) for r in rest)]


def codec_configs(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The codecs an array's chunks went through when written: filters in order, then the compressor."""
    configs = [dict(f) for f in (meta.get("filters") or []) if isinstance(f, Mapping)]
    compressor = meta.get("compressor")
    if isinstance(compressor, Mapping):
        configs.append(dict(compressor))
    return configs


try:
    from numcodecs.errors import UnknownCodecError as _UnknownCodec
except ImportError:  # numcodecs before 0.13 raised a plain ValueError
    _UnknownCodec = ValueError  # type: ignore[misc,assignment]


def resolve_codecs(configs: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[str]]:
    """numcodecs codec objects for ``configs``, and a reason for each that is not available."""
    import numcodecs

    codecs: list[Any] = []
    problems: list[str] = []
    for config in configs:
        codec_id = str(config.get("id", "?"))
        try:
            codecs.append(numcodecs.get_codec(dict(config)))
        except _UnknownCodec:
            problems.append(f"codec {codec_id!r} is not installed (no numcodecs codec has that id)")
        except Exception as exc:  # noqa: BLE001 - a codec that rejects its configuration cannot decode
            problems.append(f"codec {codec_id!r} rejects its configuration {dict(config)}: {exc}")
    return codecs, problems


def unavailable_codecs(meta: Mapping[str, Any]) -> list[str]:
    """Ids of the codecs of an array that cannot be built here (for ``refmount inspect``)."""
    missing = []
    for config in codec_configs(meta):
        _, problems = resolve_codecs([config])
        if problems:
            missing.append(str(config.get("id", "?")))
    return missing


def is_object_dtype(meta: Mapping[str, Any]) -> bool:
    """Object arrays (variable-length strings, ragged arrays) keep their codec in the decoded view."""
    spec = meta.get("dtype")
    return isinstance(spec, str) and spec.lstrip("|<>=") == "O"


def decoded_zarray(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``.zarray`` content of the decoded view: the same array, with no codecs."""
    out = dict(meta)
    out["compressor"] = None
    out["filters"] = None
    return out


def fill_scalar(value: Any, dtype: np.dtype) -> Any:
    """The numpy scalar a Zarr v2 ``fill_value`` stands for (zero when none is given)."""
    if value is None:
        return np.zeros((), dtype)[()]
    if dtype.kind == "f" and isinstance(value, str):
        return dtype.type({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(value, value))
    if dtype.kind in "SVU" and isinstance(value, str) and dtype.kind != "U":
        raw = base64.b64decode(value)
        return np.frombuffer(raw.ljust(dtype.itemsize, b"\0")[: dtype.itemsize], dtype)[0]
    if dtype.kind == "c" and isinstance(value, list):
        return dtype.type(complex(float(value[0]), float(value[1])))
    return np.array(value).astype(dtype)[()]


@dataclass(eq=False)
class ArrayCodec:
    """One array of the reference set and how its chunks are decoded; shared by all its chunks."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    order: str
    fill_value: Any
    separator: str
    configs: list[dict[str, Any]]
    codecs: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_meta(cls, path: str, meta: Mapping[str, Any]) -> ArrayCodec:
        dtype = numpy_dtype(meta["dtype"])
        shape = tuple(int(n) for n in meta["shape"])
        chunks = tuple(int(n) for n in meta["chunks"])
        if len(shape) != len(chunks) or any(c <= 0 for c in chunks):
            raise ValueError(f"chunks {list(chunks)} do not fit shape {list(shape)}")
        order = str(meta.get("order") or "C").upper()
        if order not in ("C", "F"):
            raise ValueError(f"order {order!r} is not C or F")
        configs = codec_configs(meta)
        codecs, problems = resolve_codecs(configs)
        return cls(
            path=path, shape=shape, chunks=chunks, dtype=dtype, order=order,
            fill_value=meta.get("fill_value"), separator=str(meta.get("dimension_separator") or "."),
            configs=configs, codecs=codecs, problems=problems,
        )

    @property
    def chunk_nbytes(self) -> int:
        """Size of every decoded chunk file, known without decoding."""
        return self.dtype.itemsize * math.prod(self.chunks)

    @property
    def label(self) -> str:
        return "+".join(str(c.get("id", "?")) for c in self.configs) or "none"

    def coords_of(self, name: str) -> tuple[int, ...] | None:
        """Grid coordinates of a chunk key relative to the array (``"3.1"``), or None if it is none."""
        parts = name.split(self.separator)
        if not self.shape:
            return () if name == "0" else None
        if len(parts) != len(self.shape) or not all(p.isdigit() for p in parts):
            return None
        coords = tuple(int(p) for p in parts)
        grid = tuple(max(1, -(-n // c)) for n, c in zip(self.shape, self.chunks, strict=False))
        return coords if all(i < g for i, g in zip(coords, grid, strict=False)) else None

    def edge_shape(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        """The part of chunk ``coords`` that lies inside the array."""
        return tuple(max(0, min(c, n - i * c)) for i, c, n in zip(coords, self.chunks, self.shape, strict=False))

    def decode(self, key: str, raw: bytes, coords: tuple[int, ...]) -> bytes:
        """The full-shape decoded bytes of chunk ``key``; UnsupportedCodec or DecodeError, never wrong bytes."""
        if self.problems:
            raise UnsupportedCodec(f"{key}: cannot decode: {'; '.join(self.problems)}")
        data: Any = raw
        codec = None
        try:
            for codec in reversed(self.codecs):
                data = codec.decode(data)
            out = np.asarray(_ndarray_like(data))
            payload = out.tobytes(order="A")
        except Exception as exc:  # noqa: BLE001 - corrupt input or failed checksum: an error, never data
            name = codec.codec_id if codec is not None else "?"
            raise DecodeError(f"{key}: codec {name!r} failed to decode the chunk: {exc}") from None
        expected = self.chunk_nbytes
        if len(payload) == expected:
            return payload
        return self._pad(key, payload, coords)

    def _pad(self, key: str, payload: bytes, coords: tuple[int, ...]) -> bytes:
        """Bring an edge chunk stored at the array's extent to the full chunk shape."""
        edge = self.edge_shape(coords)
        if edge != self.chunks and len(payload) == self.dtype.itemsize * math.prod(edge):
            part = np.frombuffer(payload, self.dtype).reshape(edge, order=self.order)
            try:
                full = np.full(self.chunks, fill_scalar(self.fill_value, self.dtype), self.dtype, order=self.order)
            except (TypeError, ValueError):
                full = np.zeros(self.chunks, self.dtype, order=self.order)
            full[tuple(slice(0, n) for n in edge)] = part
            return full.tobytes(order=self.order)
        raise DecodeError(
            f"{key}: decoded to {len(payload)} bytes, but a chunk of {list(self.chunks)} {self.dtype.str} "
            f"holds {self.chunk_nbytes} (codecs {self.label})"
        )


def _ndarray_like(data: Any) -> Any:
    from numcodecs.compat import ensure_ndarray_like

    return ensure_ndarray_like(data)


@dataclass(frozen=True, slots=True)
class DecodedChunk:
    """A chunk file of the decoded view: the raw reference it is decoded from, and its array."""

    source: Reference
    array: ArrayCodec
    coords: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.array.chunk_nbytes

    def describe(self) -> dict[str, str]:
        """Extended attributes: where the bytes come from and how they are decoded."""
        info = {"kind": "decoded", "codecs": self.array.label, "decoded-length": str(self.size)}
        source = self.source
        if isinstance(source, Inline):
            info.update({"source": "inline", "length": str(len(source.data))})
        elif isinstance(source, Range):

            info.update({"source": "range", "url": redact_url(source.url), "offset": str(source.offset),
                         "length": str(source.length)})
        elif isinstance(source, Whole):

            info.update({"source": "whole", "url": redact_url(source.url)})
        if self.array.problems:
            info["error"] = "; ".join(self.array.problems)
        return info


# -- the transformed tree ---------------------------------------------------------


@dataclass
class ViewReport:
    """What the decoded view did with each array, for the mount log and tests."""

    decoded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # no codecs: chunks passed through
    kept: dict[str, str] = field(default_factory=dict)  # array -> why its codec is kept
    unavailable: dict[str, list[str]] = field(default_factory=dict)


def decoded_references(
    refs: Mapping[str, Reference], read_meta: Callable[[str, Reference], bytes]
) -> tuple[dict[str, Reference], ViewReport]:
    """The reference set of the decoded view, built from the raw one without decoding anything.

    ``read_meta(key, ref)`` returns the bytes of a metadata key (only called
    for a ``.zarray``/``.zmetadata`` that is not inline).
    """
    report = ViewReport()
    arrays: dict[str, ArrayCodec] = {}
    out: dict[str, Reference] = dict(refs)
    rewritten: dict[str, dict[str, Any]] = {}
    for key, ref in refs.items():
        parent, _, name = key.rpartition("/")
        if name != ".zarray":
            continue
        try:
            meta = json.loads(ref.data if isinstance(ref, Inline) else read_meta(key, ref))
            if is_object_dtype(meta):
                report.kept[parent or "/"] = f"object dtype {meta.get('dtype')!r} keeps codecs " + (
                    "+".join(str(c.get("id")) for c in codec_configs(meta)) or "none")
                continue
            array = ArrayCodec.from_meta(parent, meta)
        except Exception as exc:  # noqa: BLE001 - an array the view cannot model stays raw, said loudly
            report.kept[parent or "/"] = f"metadata not understood ({exc}); presented raw"
            log.warning("decoded view: %s presented raw: cannot read its .zarray: %s", key, exc)
            continue
        arrays[parent] = array
        new_meta = decoded_zarray(meta)
        rewritten[key] = new_meta
        out[key] = Inline(json.dumps(new_meta, indent=4).encode())
        if array.problems:
            report.unavailable[parent or "/"] = list(array.problems)
        elif array.configs:
            report.decoded.append(parent or "/")
        else:
            report.unchanged.append(parent or "/")
    for key, ref in refs.items():
        found = _owning_array(key, arrays)
        if found is None:
            continue
        array, rest = found
        coords = array.coords_of(rest)
        if coords is None:
            continue
        if not array.configs and known_size(ref) == array.chunk_nbytes:
            continue  # already what the view presents: served straight from the block cache
        out[key] = DecodedChunk(ref, array, coords)
    consolidated = refs.get(".zmetadata")
    if consolidated is not None and rewritten:
        out[".zmetadata"] = _rewrite_consolidated(consolidated, rewritten, read_meta)
    return out, report


def _owning_array(key: str, arrays: Mapping[str, ArrayCodec]) -> tuple[ArrayCodec, str] | None:
    """The deepest array whose directory holds ``key`` and the key relative to it."""
    if key.rpartition("/")[2].startswith("."):
        return None
    parent = key
    while parent:
        parent = parent.rpartition("/")[0]
        array = arrays.get(parent)
        if array is not None:
            return array, key[len(parent) + 1 :] if parent else key
    return None


def _rewrite_consolidated(
    ref: Reference, rewritten: Mapping[str, dict[str, Any]], read_meta: Callable[[str, Reference], bytes]
) -> Reference:
    """``.zmetadata`` with the decoded ``.zarray`` of every decoded array, so consolidated readers agree."""
    try:
        doc = json.loads(ref.data if isinstance(ref, Inline) else read_meta(".zmetadata", ref))
        metadata = doc.get("metadata", {})
        for key, meta in rewritten.items():
            if key in metadata:
                metadata[key] = meta
        return Inline(json.dumps(doc, indent=4).encode())
    except Exception as exc:  # noqa: BLE001 - better no consolidated metadata than a wrong one
        log.warning("decoded view: .zmetadata could not be rewritten (%s); it is left out of the tree", exc)
        return Inline(b'{"metadata": {}, "zarr_consolidated_format": 1}')


# -- decoded chunk cache and reader -----------------------------------------------


class DecodedChunkCache:
    """Decoded chunks under a byte budget, LRU, with one decode per chunk in flight.

    A decode that fails is not remembered: its error goes to every reader
    waiting for it, and the next read tries again.
    """

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self._chunks: LRUCache[tuple[str, str], bytes] = LRUCache(maxsize=max(1, capacity), getsizeof=len)
        self._inflight: dict[tuple[str, str], Future[bytes]] = {}
        self._lock = threading.Lock()
        self.metrics.gauge("decoded_cache_bytes", lambda: self._chunks.currsize)

    @property
    def capacity(self) -> int:
        return int(self._chunks.maxsize)

    @property
    def size(self) -> int:
        return int(self._chunks.currsize)

    def get(self, key: tuple[str, str], produce: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self.metrics.add("decoded_hits")
                return data
            future = self._inflight.get(key)
            mine = future is None
            if mine:
                future = self._inflight[key] = Future()
        if not mine:
            self.metrics.add("decoded_waits")
            return future.result()
        try:
            data = produce()
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            try:
                self._chunks[key] = data
            except ValueError:  # larger than the whole share: serve it, do not keep it
                pass
            del self._inflight[key]
        future.set_result(data)
        return data


class DecodingReader:
    """The reader of the decoded view: decoded chunks from their cache, everything else from the raw reader."""

    def __init__(self, raw: Any, chunks: DecodedChunkCache, set_id: str = "") -> None:
        self.raw = raw
        self.chunks = chunks
        self.set_id = set_id

    @property
    def cache(self) -> Any:
        return self.raw.cache

    @property
    def metrics(self) -> Metrics:
        return self.raw.metrics

    @property
    def namespace(self) -> Namespace:
        return self.raw.namespace

    def size(self, ref: Reference) -> int:
        if isinstance(ref, DecodedChunk):
            return ref.size
        return self.raw.size(ref)

    def read(self, file: File, offset: int, size: int) -> bytes:
        ref = file.ref
        if not isinstance(ref, DecodedChunk):
            return self.raw.read(file, offset, size)
        rng = clamp_read(offset, size, ref.size)
        if rng.length == 0:
            return b""
        data = self.chunks.get((self.set_id, file.path), lambda: self._decode(file.path, ref))
        self.metrics.add_many((("reads", 1), ("bytes_delivered", rng.length)))
        return data[rng.start : rng.stop]

    def describe(self, file: File) -> dict[str, str]:
        """Extended attributes: a decoded chunk says how it is decoded, other files where they come from."""
        if isinstance(file.ref, DecodedChunk):
            return file.ref.describe()
        return dict(self.raw.describe(file))

    def close(self) -> None:
        self.raw.close()

    def _decode(self, path: str, ref: DecodedChunk) -> bytes:
        try:
            if ref.array.problems:  # fail before fetching anything
                raise UnsupportedCodec(f"{path}: cannot decode: {'; '.join(ref.array.problems)}")
            raw = self.raw.read(File(path, ref.source), 0, self.raw.size(ref.source))
            data = ref.array.decode(path, raw, ref.coords)
        except Exception:
            self.metrics.add("decode_errors")
            raise
        self.metrics.add_many((("decodes", 1), ("bytes_decoded", len(data))))
        return data


def present(
    view: str,
    namespace: Namespace,
    reader: Any,
    *,
    chunk_cache: DecodedChunkCache | None = None,
    set_id: str = "",
) -> tuple[Namespace, Any]:
    """The tree and reader one reference set shows in ``view`` (``raw`` returns them unchanged)."""
    if view == "raw":
        return namespace, reader
    if view != "decoded":
        raise ValueError(f"unknown view {view!r}")
    if chunk_cache is None:
        chunk_cache = DecodedChunkCache(reader.cache.block_size * 64, reader.metrics)
    refs = {key: namespace.lookup(key).ref for key in namespace}  # type: ignore[union-attr]

    def read_meta(key: str, ref: Reference) -> bytes:
        return reader.read(File(key, ref), 0, reader.size(ref))

    decoded, report = decoded_references(refs, read_meta)
    for name, problems in sorted(report.unavailable.items()):
        log.warning("decoded view: %s: %s; its chunks will read as EIO", name, "; ".join(problems))
    for name, why in sorted(report.kept.items()):
        log.info("decoded view: %s: %s", name, why)
    log.info(
        "decoded view: %d arrays decoded, %d without codecs, %d kept as they are, %d with unavailable codecs; "
        "decoded chunk cache %d bytes",
        len(report.decoded), len(report.unchanged), len(report.kept), len(report.unavailable), chunk_cache.capacity,
    )
    largest = max((r.size for r in decoded.values() if isinstance(r, DecodedChunk)), default=0)
    if largest > chunk_cache.capacity:
        log.warning(
            "decoded view: chunks of up to %d bytes exceed the decoded chunk cache (%d bytes): such chunks are "
            "decoded again for every read; raise cache_size", largest, chunk_cache.capacity,
        )
    return Namespace(decoded), DecodingReader(reader, chunk_cache, set_id)
