"""Zarr v2 metadata translated to Zarr v3 ``zarr.json`` documents, so the chunk files stay the same.

Pure functions over parsed ``.zarray``/``.zattrs`` documents; no I/O. The
translation never rewrites a chunk: the v3 document describes the bytes the
v2 chunk files already hold.

* ``chunk_key_encoding`` is ``v2`` with the array's own
  ``dimension_separator``, so ``temp/0.1`` is the same file to both readers
  (and ``0`` is the chunk of a 0-d array under both).
* codecs, in the v3 order (array->array, one array->bytes, bytes->bytes):
  ``transpose`` for an ``order: "F"`` array of two or more dimensions; the
  v2 filters that act on arrays (delta, fixedscaleoffset, quantize,
  bitround, packbits, astype) as ``numcodecs.<id>``; ``bytes`` with the
  endianness of the (encoded) dtype, or ``vlen-utf8``/``vlen-bytes`` for
  variable-length strings; then the byte codecs: ``gzip``, ``zstd``,
  ``blosc`` and ``crc32c`` in their v3 standard forms, and those without a
  v3 standard (zlib, shuffle, bz2, lzma, lz4, fletcher32, adler32, crc32,
  jenkins_lookup3) as ``numcodecs.<id>``, which zarr-python 3 reads and
  other v3 implementations may not. zlib has no v3 standard form (v3's
  ``gzip`` is a different framing), so a zlib array needs zarr-python
  3 in the raw view; ``-o view=decoded`` leaves only ``bytes``.
* data types: bool, (u)int8-64, float16/32/64, complex64/128 as the v3
  core names; datetime64/timedelta64, fixed-width bytes (``S``) and
  unicode (``U``) and variable-length strings (object dtype with
  ``vlen-utf8``/``vlen-bytes``) as the names zarr-python 3 gives them.
  Anything else (structured dtypes, other object codecs, ``V``) is
  :class:`NotTranslatable`: the array gets no ``zarr.json`` rather than a
  wrong one.
* ``fill_value``: the v2 value (its JSON spelling is the same in v3 for
  every type above); a v2 ``null`` becomes the type's zero, as v3 has no
  "no fill value".
* ``attributes`` from ``.zattrs``, ``dimension_names`` from its
  ``_ARRAY_DIMENSIONS`` (which is then left out of the attributes, where
  v3 readers do not look for it). v2 writers put NaN and infinities into
  ``.zattrs`` as bare ``NaN``/``Infinity``, which is not JSON; v3 metadata
  is strict JSON (tensorstore refuses the document otherwise), so they
  become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, the
  spelling v3 uses for such fill values.
* xarray keeps a float variable's ``_FillValue`` attribute in v3 as the
  base64 of the value as a little-endian float64 (a pair of those for
  complex), and refuses a plain number there; so the ``_FillValue`` of a
  float or complex array is spelled that way, and xarray masks the same
  values on the v3 tree as on the v2 one.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["NotTranslatable", "array_metadata", "codecs_of", "data_type", "group_metadata"]

#: v2 filters that work on arrays: in v3 they come before the ``bytes`` codec.
ARRAY_TO_ARRAY = frozenset({"delta", "fixedscaleoffset", "quantize", "bitround", "packbits", "astype"})

#: v2 byte codecs without a v3 standard form: named ``numcodecs.<id>`` (zarr-python 3 reads them).
NUMCODECS_BYTES = frozenset(
    {"zlib", "shuffle", "bz2", "lzma", "lz4", "fletcher32", "adler32", "crc32", "jenkins_lookup3"}
)

#: Object-dtype codecs with a v3 counterpart: v2 id -> (v3 data type, v3 array->bytes codec).
OBJECT_CODECS = {"vlen-utf8": ("string", "vlen-utf8"), "vlen-bytes": ("variable_length_bytes", "vlen-bytes")}

DIMENSIONS_ATTR = "_ARRAY_DIMENSIONS"
FILL_VALUE_ATTR = "_FillValue"


class NotTranslatable(ValueError):
    """A v2 array that no v3 document describes correctly (said once in the log; the array gets no zarr.json)."""


def group_metadata(zattrs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` of a group: its attributes."""
    return {"zarr_format": 3, "node_type": "group", "attributes": strict_json(dict(zattrs))}


def array_metadata(zarray: Mapping[str, Any], zattrs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` of an array described by the v2 ``zarray`` and ``zattrs``; NotTranslatable if none fits."""
    try:
        shape = [int(n) for n in zarray["shape"]]
        chunks = [int(n) for n in zarray["chunks"]]
        dtype_spec = zarray["dtype"]
    except (KeyError, TypeError, ValueError) as exc:
        raise NotTranslatable(f".zarray lacks a usable shape, chunks or dtype ({exc})") from None
    if len(shape) != len(chunks) or any(c <= 0 for c in chunks):
        raise NotTranslatable(f"chunks {chunks} do not fit shape {shape}")
    name = data_type(dtype_spec, zarray)
    separator = str(zarray.get("dimension_separator") or ".")
    if separator not in (".", "/"):
        raise NotTranslatable(f"dimension_separator {separator!r} is not '.' or '/'")
    attributes = strict_json(dict(zattrs))
    dimensions = attributes.pop(DIMENSIONS_ATTR, None)
    if FILL_VALUE_ATTR in attributes and isinstance(dtype_spec, str) and np.dtype(dtype_spec).kind in "fc":
        attributes[FILL_VALUE_ATTR] = xarray_float_fill(attributes[FILL_VALUE_ATTR])
    doc: dict[str, Any] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": separator}},
        "fill_value": fill_value(zarray.get("fill_value"), dtype_spec, name),
        "codecs": codecs_of(zarray),
        "attributes": attributes,
    }
    if isinstance(dimensions, list) and len(dimensions) == len(shape) and all(isinstance(d, str) for d in dimensions):
        doc["dimension_names"] = dimensions
    elif dimensions is not None:
        attributes[DIMENSIONS_ATTR] = dimensions  # not usable as dimension names: kept where it was
    return doc


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity (floats, at any depth) spelled as v3 spells them: ``"NaN"``..."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[repr(value)]
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strict_json(item) for item in value]
    return value


def xarray_float_fill(value: Any) -> Any:
    """A float (or complex, as a pair) ``_FillValue`` as xarray stores it in v3: base64 of a little-endian float64.

    A value that is not a number is left as it is: xarray then says what is
    wrong with it rather than this view guessing.
    """
    if isinstance(value, list) and len(value) == 2:
        return [xarray_float_fill(part) for part in value]
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        number = float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[value])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        return value
    return base64.standard_b64encode(struct.pack("<d", number)).decode("ascii")


def data_type(spec: Any, zarray: Mapping[str, Any]) -> Any:
    """The v3 ``data_type`` for the v2 dtype ``spec``; NotTranslatable for the dtypes v3 readers cannot take."""
    if not isinstance(spec, str):
        raise NotTranslatable(f"structured dtype {spec!r} has no v3 data type readers share")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise NotTranslatable(f"dtype {spec!r} is not a numpy dtype") from None
    kind, size = dtype.kind, dtype.itemsize
    if kind == "b":
        return "bool"
    if kind in "iu" and size in (1, 2, 4, 8):
        return f"{'u' if kind == 'u' else ''}int{8 * size}"
    if kind == "f" and size in (2, 4, 8):
        return f"float{8 * size}"
    if kind == "c" and size in (8, 16):
        return f"complex{8 * size}"
    if kind in "Mm":
        unit, scale = np.datetime_data(dtype)
        return {"name": "numpy.datetime64" if kind == "M" else "numpy.timedelta64",
                "configuration": {"unit": unit, "scale_factor": int(scale)}}
    if kind == "S" and size > 0:
        return {"name": "null_terminated_bytes", "configuration": {"length_bytes": size}}
    if kind == "U" and size > 0:
        return {"name": "fixed_length_utf32", "configuration": {"length_bytes": size}}
    if kind == "O":
        object_codec = _object_codec(zarray)
        return OBJECT_CODECS[object_codec][0]
    raise NotTranslatable(f"dtype {spec!r} has no v3 data type readers share")


def _object_codec(zarray: Mapping[str, Any]) -> str:
    """The id of the first filter of an object array, if v3 has a counterpart; NotTranslatable otherwise."""
    filters = [f for f in (zarray.get("filters") or []) if isinstance(f, Mapping)]
    first = str(filters[0].get("id")) if filters else None
    if first not in OBJECT_CODECS:
        raise NotTranslatable(
            f"object dtype encoded by {first or 'no object codec'!s}: only vlen-utf8 and vlen-bytes have v3 counterparts"
        )
    return first


def codecs_of(zarray: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The v3 codec list for the v2 filters and compressor of ``zarray`` (encode order, as v3 lists them)."""
    configs = [dict(f) for f in (zarray.get("filters") or []) if isinstance(f, Mapping)]
    compressor = zarray.get("compressor")
    if isinstance(compressor, Mapping):
        configs.append(dict(compressor))
    elif compressor is not None:
        raise NotTranslatable(f"compressor {compressor!r} is not a codec configuration")
    dtype_spec = str(zarray["dtype"])
    dtype = np.dtype(dtype_spec)
    ndim = len(zarray["shape"])
    before: list[dict[str, Any]] = []
    if str(zarray.get("order") or "C").upper() == "F" and ndim > 1:
        before.append({"name": "transpose", "configuration": {"order": list(range(ndim - 1, -1, -1))}})
    if dtype.kind == "O":
        serializer = {"name": OBJECT_CODECS[_object_codec(zarray)][1]}
        configs = configs[1:]
    else:
        encoded = dtype
        while configs and str(configs[0].get("id")) in ARRAY_TO_ARRAY:
            config = configs.pop(0)
            before.append(_numcodecs(config))
            encoded = _encoded_dtype(config, encoded)
        serializer = _bytes_codec(encoded)
    after = [_bytes_to_bytes(config, dtype) for config in configs]
    return [*before, serializer, *after]


def _bytes_codec(dtype: np.dtype[Any]) -> dict[str, Any]:
    """``bytes``, with the endianness of ``dtype`` when it has one (single bytes have none)."""
    order = dtype.byteorder
    if dtype.itemsize <= 1 or order == "|" or dtype.kind in "SbO":
        return {"name": "bytes"}
    if order == "=":
        order = "<" if sys.byteorder == "little" else ">"
    return {"name": "bytes", "configuration": {"endian": "little" if order == "<" else "big"}}


def _encoded_dtype(config: Mapping[str, Any], current: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype an array->array codec hands on (the one ``bytes`` then serialises)."""
    codec_id = str(config.get("id"))
    spec = config.get("encode_dtype") if codec_id == "astype" else config.get("astype")
    if codec_id == "packbits":
        spec = "|u1"
    if spec is None:
        return current
    try:
        encoded: np.dtype[Any] = np.dtype(spec)
    except TypeError:
        raise NotTranslatable(f"codec {codec_id!r} names dtype {spec!r}, which is not a numpy dtype") from None
    return encoded


def _numcodecs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A numcodecs codec under its v3 name ``numcodecs.<id>``, configured as in v2."""
    settings = {k: v for k, v in config.items() if k != "id"}
    return {"name": f"numcodecs.{config.get('id')}", "configuration": settings}


def _bytes_to_bytes(config: Mapping[str, Any], dtype: np.dtype[Any]) -> dict[str, Any]:
    """One v2 byte codec as v3 names it: the standard form where v3 has one, else ``numcodecs.<id>``."""
    codec_id = str(config.get("id"))
    if codec_id == "gzip":
        return {"name": "gzip", "configuration": {"level": int(config.get("level", 1))}}
    if codec_id == "zstd":
        return {"name": "zstd", "configuration": {"level": int(config.get("level", 0)),
                                                  "checksum": bool(config.get("checksum", False))}}
    if codec_id == "blosc":
        return {"name": "blosc", "configuration": _blosc(config, dtype)}
    if codec_id == "crc32c" and str(config.get("location", "end")) == "end":
        return {"name": "crc32c"}
    if codec_id in NUMCODECS_BYTES or codec_id == "crc32c":
        return _numcodecs(config)
    if codec_id in ARRAY_TO_ARRAY:
        raise NotTranslatable(f"codec {codec_id!r} acts on arrays but comes after a byte codec; v3 cannot order it so")
    raise NotTranslatable(f"codec {codec_id!r} has no v3 form known here")


#: numcodecs' blosc shuffle numbers and v3's names; -1 (auto) is bitshuffle for single bytes, else shuffle.
_BLOSC_SHUFFLE = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


def _blosc(config: Mapping[str, Any], dtype: np.dtype[Any]) -> dict[str, Any]:
    shuffle = int(config.get("shuffle", 1))
    if shuffle == -1:
        shuffle = 2 if dtype.itemsize == 1 else 1
    if shuffle not in _BLOSC_SHUFFLE:
        raise NotTranslatable(f"blosc shuffle {shuffle} is not 0, 1, 2 or -1")
    return {
        "cname": str(config.get("cname", "lz4")),
        "clevel": int(config.get("clevel", 5)),
        "shuffle": _BLOSC_SHUFFLE[shuffle],
        "typesize": max(1, dtype.itemsize),
        "blocksize": int(config.get("blocksize", 0)),
    }


def fill_value(value: Any, dtype_spec: Any, name: Any) -> Any:
    """The v3 ``fill_value``: the v2 one (same JSON spelling for these types), or the type's zero for null."""
    if value is not None:
        return strict_json(value)
    if name == "bool":
        return False
    if isinstance(name, str) and name.startswith("complex"):
        return [0.0, 0.0]
    if isinstance(name, str) and name.startswith("float"):
        return 0.0
    if name in ("string",):
        return ""
    if isinstance(name, dict) and name["name"] in ("null_terminated_bytes",):
        return ""
    if isinstance(name, dict) and name["name"] == "fixed_length_utf32":
        return ""
    if name == "variable_length_bytes":
        return []
    return 0
