"""Mount options: one definition each, from which flags, ``-o`` options and config keys derive.

Operators meet the same option in three places: ``refmount mount --cache-size 4G``,
``-o cache_size=4G`` in fstab, and ``cache_size = "4G"`` in a config file. Each
option is declared once in :data:`OPTIONS` (name, type, default, help), and
the command line, the ``-o`` parser and the config loader are all generated
from that table, so they cannot drift apart.

The object-store options (endpoint, credentials, time bound, retries ...) are
the backend's: their defaults are written once, in
:class:`~refmount.store.options.BackendOptions`, and read from there by the
table and by :class:`MountConfig`; :func:`backend_options` hands a config's
values back to the backend by field name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from refmount.errors import ConfigError
from refmount.read.tiers.shared import split_shared_url
from refmount.store.options import BackendOptions
from refmount.store.policy import UrlPolicy
from refmount.views.present import parse_netcdf_format, parse_zarr_format
from refmount.views.present import parse_view as parse

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on", ""}
_FALSE = {"0", "false", "no", "off"}
#: The longest shared_cache_wait: a read blocked on another mount's fetch longer than this is better fetched itself.
MAX_SHARED_CACHE_WAIT = 300.0


def parse_size(text: str | int) -> int:
    """``"4G"``, ``"512MiB"``, ``"1048576"`` -> bytes (binary units, as mount tools use)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 64M, 4G)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def parse_octal(text: str | int) -> int:
    if isinstance(text, int):
        return text
    return int(str(text), 8)


def parse_list(text: str | list[str]) -> tuple[str, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(str(item) for item in text)
    return tuple(item for item in re.split(r"[\s,;|]+", str(text)) if item)


def parse_view(text: Any) -> str:
    return parse(text)


def _float(text: str | float) -> float:
    return float(text)


def _int(text: str | int) -> int:
    return int(text)


def _str(text: Any) -> str:
    return str(text)


@dataclass(frozen=True)
class Option:
    """One mount option, declared once."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    is_flag: bool = False  # a boolean that may be given without a value
    #: Whether it changes how ``refmount inspect`` loads or summarises a set (where, with what credentials,
    #: which version, in which view); inspect shows a flag only for these, and takes the rest in ``-o`` unused.
    inspect: bool = False


#: The defaults of the backend's options, as :class:`BackendOptions` declares them.
_STORE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(BackendOptions)}

OPTIONS: tuple[Option, ...] = (
    # Backend
    Option("endpoint_url", _str, _STORE_DEFAULTS["endpoint_url"],
           "S3 endpoint for S3-compatible stores (Ceph RGW, MinIO, SeaweedFS)", "URL", inspect=True),
    Option("region", _str, _STORE_DEFAULTS["region"], "S3 region", "NAME", inspect=True),
    Option("profile", _str, _STORE_DEFAULTS["profile"], "AWS profile to take credentials from", "NAME", inspect=True),
    Option("anon", parse_bool, _STORE_DEFAULTS["anon"], "access S3 anonymously (public buckets)", is_flag=True, inspect=True),
    Option("timeout", _float, _STORE_DEFAULTS["timeout"],
           "seconds after which a read that the store does not answer fails with EIO", "SECONDS", inspect=True),
    Option("retries", _int, _STORE_DEFAULTS["retries"], "attempts for a ranged GET that fails with a transient error", "N",
           inspect=True),
    Option("max_concurrency", _int, _STORE_DEFAULTS["max_concurrency"], "ranged GETs in flight at once for one read", "N"),
    Option(
        "allow",
        parse_list,
        (),
        "protocols or URL prefixes references may reach (s3,https or s3://archive/; in -o: allow=s3|https); "
        "default: s3, gs, az, abfs, http(s), and local files only for a local reference set",
        "LIST",
        inspect=True,
    ),
    # Cache and reading
    Option("cache_size", parse_size, 1 << 30, "memory budget of the block cache (e.g. 512M, 4G)", "SIZE"),
    Option("block_size", parse_size, 256 << 10, "unit of caching and fetching in each object's byte space "
           "(adjacent blocks are fetched together)", "SIZE"),
    Option("max_request", parse_size, 8 << 20, "largest single ranged GET built from adjacent blocks", "SIZE"),
    Option("readahead", parse_size, 32 << 20, "largest readahead window for sequential readers and for a chunk file "
           "read from its start; under view=netcdf, of the chunks decoded ahead of a .nc reader (0 disables)", "SIZE"),
    Option("disk_cache", _str, None, "keep fetched blocks in this local directory too, across unmounts and "
           "reboots (checked on every read; off unless given)", "DIR"),
    Option("disk_cache_size", parse_size, 10 << 30, "byte budget of disk_cache (least recently used blocks "
           "removed first, in the background)", "SIZE"),
    Option("shared_cache", _str, None, "look blocks up in, and upload fetched ones to, this S3 prefix shared by "
           "a fleet of mounts (s3://BUCKET/PREFIX; its own options as -o shared.NAME=VALUE, e.g. "
           "shared.endpoint_url; off unless given)", "URL"),
    Option("shared_cache_wait", _float, 10.0, "seconds a mount waits for a block another mount of the fleet is "
           "fetching (it holds the fetch lease of its stretch in shared_cache) before fetching it itself; 0 takes no leases",
           "SECONDS"),
    Option("record_cache", _int, 32, "record files of a Parquet reference set kept in memory (least recently "
           "used dropped first; each costs its file size while only looked up, about 9 bytes per reference once "
           "listed or decoded)", "N", inspect=True),
    Option("ref", _str, None, "branch, tag or snapshot id of an Icechunk repository to mount (default: main; "
           "other reference sets refuse it)", "REF", inspect=True),
    # Tree presentation
    Option("uid", _int, None, "owner of every file (default: the mounting user)", "UID"),
    Option("gid", _int, None, "group of every file (default: the mounting user's group)", "GID"),
    Option("umask", parse_octal, 0o222, "permission bits to clear from 0777 (files lose x as well)", "OCTAL"),
    Option("view", parse_view, "raw", "raw (chunk bytes as referenced), decoded (chunks decoded, codec-free "
           ".zarray, for netCDF-C, GDAL and other readers without the codecs) or netcdf (each group a virtual "
           "netCDF classic file, for every netCDF tool)", "raw|decoded|netcdf", inspect=True),
    Option("zarr_format", parse_zarr_format, 2, "2 (the set's Zarr v2 metadata) or 3 (also a zarr.json beside every "
           ".zgroup and .zarray, for Zarr v3 readers: zarr-python 3, tensorstore, zarrs; the v2 files stay)", "2|3",
           inspect=True),
    Option("netcdf_format", parse_netcdf_format, "auto", "format of the files of view=netcdf: auto (CDF-2, or "
           "CDF-5 when a variable needs unsigned or 64-bit integers or more than 4 GiB), cdf1, cdf2 or cdf5 "
           "(variables the format cannot hold are left out)", "auto|cdf1|cdf2|cdf5", inspect=True),
    Option("max_decoded_chunk", parse_size, 256 << 20, "largest chunk the decoded view decodes, checked before "
           "decoding (from the chunk shape) and while decompressing; larger ones read as EIO", "SIZE", inspect=True),
    # FUSE
    Option("allow_other", parse_bool, False, "let users other than the mounting one see the tree", is_flag=True),
    Option("allow_private_files", parse_bool, False, "with allow_other, also serve local files that are not "
           "world-readable (by default they read as EACCES: the daemon reads what only root may)", is_flag=True),
    Option("default_permissions", parse_bool, True, "let the kernel check permissions from the modes", is_flag=True),
    Option("nonempty", parse_bool, False, "allow mounting over a non-empty directory", is_flag=True),
    Option("attr_timeout", _float, 3600.0, "seconds the kernel may cache attributes (data is immutable)", "SECONDS"),
    Option("threads", parse_bool, True, "serve FUSE requests from many threads", is_flag=True),
    Option("xattrs", parse_bool, False, "answer user.refmount.* xattrs (where each key's bytes come from); off "
           "by default because the kernel then asks the daemon for ACLs and labels on every ls -l", is_flag=True),
    # Logging
    Option("log_level", _str, "info", "debug, info, warning or error", "LEVEL"),
    Option("log_file", _str, None, "write the log here instead of stderr", "PATH"),
    # Operations
    Option("idle_unload", _float, 600.0, "seconds after which an unused reference set of a multi-set mount is "
           "unloaded from memory (0 keeps sets loaded)", "SECONDS"),
    Option("metrics_port", _int, None, "serve Prometheus metrics on http://metrics_address:PORT/metrics (off unless given)",
           "PORT"),
    Option("metrics_address", _str, "127.0.0.1", "address of the Prometheus endpoint (keep it on localhost)", "ADDRESS"),
)

OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

#: ``-o`` options that mount(8) and fstab pass along and that mean nothing more here.
IGNORED_MOUNT_OPTIONS = frozenset(
    {"ro", "rw", "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults",
     "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "x-systemd.automount"}
)


def parse_value(name: str, raw: Any) -> Any:
    """Parse one option value, naming the option when it is wrong."""
    option = OPTIONS_BY_NAME.get(name)
    if option is None:
        raise ConfigError(f"unknown option {name!r}")
    try:
        return option.parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"option {name}: {exc}") from None


def parse_mount_options(text: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse ``-o a=1,b,s3.requester_pays=true`` into options and per-protocol storage options.

    A dotted key ``PROTOCOL.NAME`` is passed to that protocol's fsspec
    filesystem; values that look like JSON scalars are converted.
    """
    values: dict[str, Any] = {}
    storage: dict[str, dict[str, Any]] = {}
    for item in _split_options(text):
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not key or key in IGNORED_MOUNT_OPTIONS or key.startswith("x-") or key.startswith("comment="):
            continue
        if "." in key:
            protocol, name, value = parse_storage_item(key, raw if sep else None)
            storage.setdefault(protocol, {})[name] = value
            continue
        option = OPTIONS_BY_NAME.get(key)
        if option is None and key == "config":
            raise ConfigError("mount option config=FILE is for fstab (mount.refmount); on the command line give --config FILE")
        if option is None:
            raise ConfigError(f"unknown mount option {key!r} (see refmount mount --help)")
        if not sep and not option.is_flag:
            raise ConfigError(f"mount option {key} needs a value ({key}={option.metavar})")
        values[key] = parse_value(key, raw if sep else True)
    return values, storage


def parse_storage_item(key: str, raw: str | None) -> tuple[str, str, Any]:
    """``PROTOCOL.NAME`` and its text (None when given without ``=``, meaning true) -> (protocol, name, value).

    The one reading of a storage option: ``-o`` items and every command's
    ``--storage-option`` come here; dashes in names become underscores.
    """
    protocol, _, name = key.strip().replace("-", "_").partition(".")
    if not protocol or not name:
        raise ConfigError(f"storage option {key!r}: expected PROTOCOL.NAME")
    return protocol, name, True if raw is None else parse_storage_value(raw)


def _split_options(text: str) -> list[str]:
    """Split ``-o`` text on commas; list values inside it use ``|`` (``allow=s3|https``)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_storage_value(raw: str) -> Any:
    """The value of a storage option, read the same way in ``-o``, ``--storage-option`` and every command.

    ``true``/``false`` are booleans, integers and decimals numbers; a JSON
    object, list or quoted string (``{"region_name": "x"}``, ``"007"``) is
    read as JSON; anything else, or JSON that does not parse, is the text.
    """
    text = raw.strip()
    if text[:1] in ('{', '[', '"'):
        try:
            return json.loads(text)
        except ValueError:
            return raw
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?\d+\.\d*", raw):
        return float(raw)
    return raw


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs, validated; built once and never changed while mounted."""

    source: str
    mountpoint: str
    # The backend's options: defaults as BackendOptions declares them.
    endpoint_url: str | None = BackendOptions.endpoint_url
    region: str | None = BackendOptions.region
    profile: str | None = BackendOptions.profile
    anon: bool = BackendOptions.anon
    timeout: float = BackendOptions.timeout
    retries: int = BackendOptions.retries
    max_concurrency: int = BackendOptions.max_concurrency
    allow: tuple[str, ...] = ()
    cache_size: int = 1 << 30
    block_size: int = 256 << 10
    max_request: int = 8 << 20
    readahead: int = 32 << 20
    record_cache: int = 32
    ref: str | None = None
    disk_cache: str | None = None
    disk_cache_size: int = 10 << 30
    shared_cache: str | None = None
    shared_cache_wait: float = 10.0
    uid: int | None = None
    gid: int | None = None
    umask: int = 0o222
    max_decoded_chunk: int = 256 << 20
    view: str = "raw"
    zarr_format: int = 2
    netcdf_format: str = "auto"
    allow_other: bool = False
    allow_private_files: bool = False
    default_permissions: bool = True
    nonempty: bool = False
    attr_timeout: float = 3600.0
    threads: bool = True
    xattrs: bool = False
    log_level: str = "info"
    log_file: str | None = None
    idle_unload: float = 600.0
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ConfigError("option block_size: must be positive")
        if self.cache_size < self.block_size:
            raise ConfigError("option cache_size: must hold at least one block (block_size)")
        if self.max_request < self.block_size:
            raise ConfigError("option max_request: must be at least block_size")
        if self.timeout <= 0:
            raise ConfigError("option timeout: must be positive")
        if self.retries < 1:
            raise ConfigError("option retries: must be at least 1")
        if self.disk_cache is not None and self.disk_cache_size < self.block_size:
            raise ConfigError("option disk_cache_size: must hold at least one block (block_size)")
        if self.shared_cache is not None:
            split_shared_url(self.shared_cache)
        if not 0 <= self.shared_cache_wait <= MAX_SHARED_CACHE_WAIT:
            raise ConfigError(f"option shared_cache_wait: must be between 0 and {MAX_SHARED_CACHE_WAIT:.0f} seconds "
                              "(a read waits that long at most for another mount's fetch)")
        if self.max_decoded_chunk <= 0:
            raise ConfigError("option max_decoded_chunk: must be positive")
        if self.record_cache < 0:
            raise ConfigError("option record_cache: must be 0 or more record files")
        if self.zarr_format == 3 and self.view == "netcdf":  # refused here, so inspect refuses what a mount would
            raise ConfigError("option zarr_format: 3 applies to the raw and decoded views, not to view=netcdf")
        if self.max_concurrency < 1:
            raise ConfigError("option max_concurrency: must be at least 1")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"option log_level: {self.log_level!r} is not debug, info, warning or error")

    @property
    def owner(self) -> tuple[int, int]:
        uid = os.getuid() if self.uid is None else self.uid
        gid = os.getgid() if self.gid is None else self.gid
        return uid, gid

    @classmethod
    def build(cls, source: str, mountpoint: str, values: Mapping[str, Any],
              storage_options: Mapping[str, Mapping[str, Any]] | None = None) -> MountConfig:
        """Build from parsed option values, ignoring options left at ``None`` (not given)."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in values.items() if k in known and v is not None}
        if given.get("disk_cache"):  # the daemon may change its directory; the cache stays where it was named
            given["disk_cache"] = os.path.abspath(os.path.expanduser(str(given["disk_cache"])))
        return cls(source=source, mountpoint=os.path.abspath(mountpoint),
                   storage_options=dict(storage_options or {}), **given)


#: The options a mount hands to its backend unchanged: the fields the two share by name.
_SHARED_WITH_BACKEND = tuple(sorted({f.name for f in fields(BackendOptions)} & {f.name for f in fields(MountConfig)}))


def backend_options(config: MountConfig) -> BackendOptions:
    """The backend's options for ``config``: every shared field, and the URL policy of its source and ``allow``."""
    shared = {name: getattr(config, name) for name in _SHARED_WITH_BACKEND}
    return BackendOptions(**shared, policy=UrlPolicy.for_source(
        config.source, config.allow, shared=config.allow_other, private_files=config.allow_private_files))
