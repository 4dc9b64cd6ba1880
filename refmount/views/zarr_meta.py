"""Zarr v2 array metadata as the decoded view needs it: dtypes, codecs, chunk grid, decoding.

Pure functions over a parsed ``.zarray`` document plus :class:`ArrayCodec`,
the per-array object every chunk of that array shares: it knows the decoded
chunk size without decoding (``itemsize * prod(chunks)``), maps a chunk key
to grid coordinates, and turns raw chunk bytes into full-shape decoded bytes
or an error, never wrong bytes. ``refmount inspect`` uses the same functions
to say which codecs are missing before anything is mounted.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from refmount.errors import DecodeError, UnsupportedCodec

Order = Literal["C", "F"]


def numpy_dtype(spec: Any) -> np.dtype[Any]:
    """A Zarr v2 dtype (string, or a structured list of [name, type(, shape)]) as numpy."""
    if isinstance(spec, list):
        structured: np.dtype[Any] = np.dtype([tuple(_field(item)) for item in spec])
        return structured
    plain: np.dtype[Any] = np.dtype(spec)
    return plain


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
    _UnknownCodec = ValueError


def resolve_codecs(configs: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[str]]:
    """numcodecs codec objects for ``configs``, and a reason for each that is not available."""
    import numcodecs  # on first use: a raw-view mount never pays for loading every codec library

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


def fill_scalar(value: Any, dtype: np.dtype[Any]) -> Any:
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
    dtype: np.dtype[Any]
    order: Order
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
        declared = str(meta.get("order") or "C").upper()
        if declared not in ("C", "F"):
            raise ValueError(f"order {declared!r} is not C or F")
        order: Order = "F" if declared == "F" else "C"
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

    def decode(self, key: str, raw: bytes, coords: tuple[int, ...], *, decompressed: bytes | None = None) -> bytes:
        """The full-shape decoded bytes of chunk ``key``; UnsupportedCodec or DecodeError, never wrong bytes.

        ``decompressed``: what the compressor (the last codec) decodes ``raw``
        to, when the caller already has it; only the codecs before it run.
        """
        if self.problems:
            raise UnsupportedCodec(f"{key}: cannot decode: {'; '.join(self.problems)}")
        data: Any = raw
        codecs = self.codecs
        if decompressed is not None and codecs:
            data, codecs = decompressed, codecs[:-1]
        codec = None
        try:
            for codec in reversed(codecs):
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
