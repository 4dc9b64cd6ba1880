"""Fetch a reference file's bytes from a local path or any fsspec URL.

The file is read once, whole, at mount time: reference sets are parsed in
full before the tree exists, so streaming would buy nothing. Compression is
chosen by extension (``.gz``, ``.bz2``, ``.xz``, ``.zst``) rather than sniffed,
so that a plain file is never mistaken for a compressed one.

Errors are sorted for the operator: a file that does not exist or cannot be
read as configured is a :class:`ConfigError` (fix the command line), a store
that fails is a :class:`BackendError` (retry later), and bytes that do not
decompress are :class:`InvalidReferences`. Messages name the URL with any
password removed and never include storage options.
"""

from __future__ import annotations

import bz2
import datetime as _dt
import email.utils
import gzip
import io
import lzma
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import fsspec

from refmount.errors import BackendError, ConfigError, InvalidReferences
from refmount.refs.kerchunk.parse import parse_reference_document
from refmount.refs.model import Reference
from refmount.refs.relative import set_base
from refmount.urls import absolute_path, is_plain_path, redact_url

__all__ = ["MAX_DECOMPRESSED_BYTES", "ReferenceFile", "load_references", "read_reference_file"]


@dataclass(frozen=True)
class ReferenceFile:
    """The raw (decompressed) reference document and where it came from."""

    url: str  # as given (local paths made absolute)
    data: bytes  # decompressed
    mtime: float  # the reference file's modification time (POSIX seconds), 0.0 if unknown
    #: ``{url: {"size", "etag", "mtime"}}`` recorded by ``refmount scan`` (empty if none), for staleness checks
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def read_reference_file(url: str, storage_options: dict[str, Any] | None = None) -> ReferenceFile:
    """Read and decompress the reference file at ``url`` (a path or fsspec URL).

    ``storage_options`` go to ``fsspec.filesystem(protocol, **storage_options)``
    untouched, so any fsspec backend option (endpoint, credentials, anon) works.
    """
    if not isinstance(url, str) or url == "":
        raise ConfigError(f"reference file URL must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    shown = redact_url(url)
    if is_plain_path(url):
        url = absolute_path(url)
        shown = url
    fs, path = _filesystem(url, shown, options)
    info = _call(lambda: fs.info(path), "look up", shown, options)
    if info.get("type") == "directory":
        raise ConfigError(f"reference file {shown} is a directory, not a file")
    raw = _call(lambda: fs.cat_file(path), "read", shown, options)
    if not isinstance(raw, (bytes, bytearray)):
        raise BackendError(f"reading reference file {shown} returned {type(raw).__name__}, not bytes")
    data = decompress(bytes(raw), _path_part(url), shown)
    return ReferenceFile(url=url, data=data, mtime=mtime_from_info(info))


def load_references(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[ReferenceFile, dict[str, Reference]]:
    """Read the reference file at ``url`` and parse it into key -> Reference.

    Parse errors are prefixed with the file's URL (the operator may mount
    several sets); the offending key stays available as ``error.key``.
    Relative URLs in the set resolve against the file's directory.
    """
    ref_file = read_reference_file(url, storage_options)
    try:
        references, sources = parse_reference_document(ref_file.data, base_url=set_base(ref_file.url))
    except InvalidReferences as exc:
        error = InvalidReferences(f"in {redact_url(ref_file.url)}: {exc}")
        error.key = exc.key
        raise error from None
    return replace(ref_file, sources=sources), references


# --------------------------------------------------------------------------
# Locating the file



def _filesystem(url: str, shown: str, options: dict[str, Any]) -> tuple[Any, str]:
    """Instantiate the filesystem for ``url``; an unusable protocol is a config error."""
    try:
        if "::" in url:  # chained URL such as simplecache::s3://...
            fs, path = fsspec.core.url_to_fs(url, **options)
            return fs, path
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = fsspec.filesystem(protocol, **options)
        return fs, fs._strip_protocol(url)
    except ImportError as exc:
        raise ConfigError(
            f"cannot read reference file {shown}: the filesystem for this URL needs a package "
            f"that is not installed ({exc.name or 'unknown module'})"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"cannot read reference file {shown}: unsupported URL or storage options "
            f"({type(exc).__name__}: {_scrub(str(exc), options)})"
        ) from None


def _call(action: Callable[[], Any], verb: str, shown: str, options: Mapping[str, Any]) -> Any:
    """Run one filesystem call and translate its failure into refmount's taxonomy."""
    try:
        return action()
    except FileNotFoundError as exc:
        status = _http_failure(exc.__cause__)
        if status is None or status in (404, 410):
            raise ConfigError(f"reference file not found: {shown}") from None
        if status in (401, 403):
            raise ConfigError(f"permission denied to {verb} reference file {shown} (HTTP {status})") from None
        cause = exc.__cause__
        detail = _scrub(str(cause), options)
        raise BackendError(
            f"could not {verb} reference file {shown}: {type(cause).__name__}" + (f": {detail}" if detail else "")
        ) from None
    except (IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"reference file {shown} is not a regular file") from None
    except PermissionError:
        raise ConfigError(f"permission denied to {verb} reference file {shown}") from None
    except Exception as exc:  # noqa: BLE001 - network, timeouts, HTTP 5xx, client errors of any backend
        detail = _scrub(str(exc), options)
        raise BackendError(
            f"could not {verb} reference file {shown}: {type(exc).__name__}"
            + (f": {detail}" if detail else "")
        ) from None


def _http_failure(cause: BaseException | None) -> int | None:
    """Tell a genuine "not found" from a failure fsspec's HTTP backend reports as one.

    fsspec's HTTP ``info`` raises FileNotFoundError for *any* failure,
    including refused connections and HTTP 500, chaining the real error.
    Returns None for a genuine absence, the HTTP status for a response
    error, and 0 for a failure with no response at all.
    """
    if cause is None or isinstance(cause, FileNotFoundError):
        return None
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        return status
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency of fsspec's http
        return None
    if isinstance(cause, (aiohttp.ClientError, TimeoutError, OSError)):
        return 0
    return None



def _scrub(message: str, options: Mapping[str, Any]) -> str:
    """Blank out every storage option value that appears in a backend's message.

    Backends sometimes echo request details; credentials passed through
    ``storage_options`` must never reach a log or terminal.
    """
    for value in _strings_in(options):
        if len(value) >= 4 and value in message:
            message = message.replace(value, "***")
    message = re.sub(r"(?i)(://[^/\s:@]*:)[^@\s/]*@", r"\1***@", message)
    return message[:500]


def _strings_in(value: Any) -> list[str]:
    """All strings nested in storage options (e.g. ``client_kwargs``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings_in(v)]
    return []


def _path_part(url: str) -> str:
    """The path of ``url`` without query or fragment, for choosing a decompressor."""
    if "://" in url.split("::")[-1]:
        return urlsplit(url.split("::")[-1]).path
    return url


# --------------------------------------------------------------------------
# Decompression

#: Most bytes a compressed reference file may decompress to. A few MB of
#: gzip can hold gigabytes of whitespace; streaming with this cap keeps the
#: cost of loading a set proportional to what the operator could have meant.
#: A larger set can be stored uncompressed (its size is then the file's own)
#: or in the Parquet layout.
MAX_DECOMPRESSED_BYTES = 256 << 20

_STREAM_PIECE = 1 << 20


class _Stream(Protocol):
    """What the decompressors' file objects offer: pieces of the output, then closing."""

    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


def _zstd_reader(data: bytes) -> _Stream:
    try:
        import zstandard
    except ImportError:
        raise ConfigError(
            "reading a .zst reference file needs the 'zstandard' package "
            "(pip install 'refmount[zstd]' or pip install zstandard)"
        ) from None
    # Streaming: frames written without a content size cannot use decompress().
    reader: _Stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader


_DECOMPRESSORS: dict[str, tuple[str, Callable[[bytes], _Stream]]] = {
    ".gz": ("gzip", lambda data: gzip.GzipFile(fileobj=io.BytesIO(data))),
    ".bz2": ("bzip2", lambda data: bz2.BZ2File(io.BytesIO(data))),
    ".xz": ("xz", lambda data: lzma.LZMAFile(io.BytesIO(data))),
    ".zst": ("zstandard", _zstd_reader),
}


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def decompress(data: bytes, path: str, shown: str | None = None, *, limit: int | None = None) -> bytes:
    """Decompress ``data`` according to the extension of ``path``; other files pass through.

    The output is produced in pieces and refused (naming the file and the
    limit) as soon as it would exceed ``limit`` bytes
    (:data:`MAX_DECOMPRESSED_BYTES` by default), so a decompression bomb costs
    at most the limit, never its declared size.
    """
    lowered = path.lower()
    cap = MAX_DECOMPRESSED_BYTES if limit is None else limit
    for extension, (name, opener) in _DECOMPRESSORS.items():
        if lowered.endswith(extension):
            out = io.BytesIO()  # getvalue() hands over its buffer: no second copy of the document
            try:
                stream = opener(data)
                try:
                    while True:
                        piece = stream.read(min(_STREAM_PIECE, cap + 1 - out.tell()))
                        if not piece:
                            break
                        out.write(piece)
                        if out.tell() > cap:
                            raise InvalidReferences(
                                f"reference file {shown or path} decompresses to more than {cap} bytes, the limit "
                                f"for a compressed reference file: store it uncompressed or in the Parquet layout"
                            )
                finally:
                    stream.close()
            except _decode_errors() as exc:
                raise InvalidReferences(
                    f"reference file {shown or path} is not valid {name} data: {exc}"
                ) from None
            return out.getvalue()
    return data


# --------------------------------------------------------------------------
# Modification time

#: Info keys backends use for a modification time, most specific first.
_MTIME_KEYS = (
    "mtime",
    "LastModified",
    "last_modified",
    "Last-Modified",
    "modified",
    "updated",
    "time_modified",
    "created",
    "timeCreated",
    "creation_time",
)


def mtime_from_info(info: Mapping[str, Any]) -> float:
    """Find a modification time in a backend's ``info`` and make it POSIX seconds.

    Backends disagree on both the key and the type (float, datetime, ISO
    string, HTTP date), so every known spelling is tried; 0.0 means unknown.
    """
    for key in _MTIME_KEYS:
        if key in info:
            seconds = to_posix_seconds(info[key])
            if seconds is not None:
                return seconds
    return 0.0


def to_posix_seconds(value: Any) -> float | None:
    """Normalise a timestamp of any common shape; None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            return None
        return seconds / 1000.0 if seconds > 1e11 else seconds  # milliseconds from some APIs
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return float(value.timestamp())
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return to_posix_seconds(float(text))
        except ValueError:
            pass
        try:
            return to_posix_seconds(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
        try:
            return to_posix_seconds(email.utils.parsedate_to_datetime(text))
        except (TypeError, ValueError, IndexError):
            return None
    return None
