"""Mount configuration files (TOML), derived from the option table.

A config file is the third spelling of the same options (after flags and
``-o``): every key of :data:`refmount.config.OPTIONS` is accepted under its
own name (``cache_size = "4G"``; dashes also accepted), values go through the
option's own parser, and unknown keys are refused with the file and key
named, so a typo never silently falls back to a default. Two keys name the
mount itself and one table carries fsspec options per protocol::

    source = "s3://archive/refs/era5.json"
    mountpoint = "/mnt/era5"
    endpoint_url = "http://rgw:8080"
    cache_size = "4G"

    [storage_options.s3]
    requester_pays = true

Credentials belong in the environment (systemd ``EnvironmentFile=``) or in
a file only its owner can read: an fstab line ``config=FILE`` then needs no
secret (like cifs' ``credentials=``). When a file does carry storage options
and can be read by others, the loader warns, never printing the values.
"""

from __future__ import annotations

import logging
import os
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any

from refmount.config.options import OPTIONS_BY_NAME, parse_value
from refmount.errors import ConfigError

log = logging.getLogger("refmount.config")

#: Keys a config file may hold besides the options.
MOUNT_KEYS = ("source", "mountpoint")
STORAGE_TABLE = "storage_options"


@dataclass(frozen=True)
class FileConfig:
    """What one config file says: the mount's source and mountpoint, option values, storage options."""

    path: str
    source: str | None = None
    mountpoint: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_config(text: str, path: str = "<config>") -> FileConfig:
    """Parse TOML text into a :class:`FileConfig`; every error names ``path`` and the key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    source = mountpoint = None
    values: dict[str, Any] = {}
    storage: dict[str, dict[str, Any]] = {}
    for raw_key, raw in document.items():
        key = raw_key.replace("-", "_")
        if key in MOUNT_KEYS:
            if not isinstance(raw, str) or not raw:
                raise ConfigError(f"config file {path}: {raw_key} must be a non-empty string")
            if key == "source":
                source = raw
            else:
                mountpoint = raw
            continue
        if key == STORAGE_TABLE:
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ConfigError(
                    f"config file {path}: [{STORAGE_TABLE}] must hold one table per protocol, e.g. [{STORAGE_TABLE}.s3]"
                )
            storage = {protocol: dict(options) for protocol, options in raw.items()}
            continue
        if key not in OPTIONS_BY_NAME:
            raise ConfigError(f"config file {path}: unknown key {raw_key!r} (see refmount mount --help)")
        if isinstance(raw, dict):
            raise ConfigError(f"config file {path}: {raw_key} must be a value, not a table")
        try:
            values[key] = parse_value(key, raw)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return FileConfig(path, source, mountpoint, values, storage)


def load_config(path: str) -> FileConfig:
    """Read and parse the config file at ``path``."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
            mode = os.fstat(handle.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    config = parse_config(text, path)
    if config.storage_options and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "config file %s holds storage options and is readable by other users; "
            "keep credentials in an EnvironmentFile with mode 0600", path,
        )
    return config


def example_config() -> str:
    """A commented config file listing every option at its default (``refmount config-example``)."""
    lines = [
        "# refmount mount configuration (TOML). Every option of `refmount mount --help` is a key here.",
        'source = "s3://bucket/refs/dataset.json"   # a reference set, or a directory/prefix of many',
        'mountpoint = "/mnt/dataset"',
        "",
    ]
    for option in OPTIONS_BY_NAME.values():
        lines.append(f"# {option.help}")
        lines.append(f"# {option.name} = {_toml_value(option.default)}")
    lines += ["", "# fsspec options per protocol (no credentials here: use the environment)",
              f"# [{STORAGE_TABLE}.s3]", "# requester_pays = true", ""]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if value is None:
        return '""  # not set'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return f'"{value}"'
