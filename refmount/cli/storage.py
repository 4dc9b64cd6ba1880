"""One spelling of fsspec storage options for every command that reaches a store.

``mount``, ``inspect``, ``scan`` and ``convert`` all take ``--storage-option
[PROTOCOL.]KEY=VALUE`` (repeatable), ``--endpoint-url`` and ``--anon``, with
one help text. Each item is read by the parser of ``-o PROTOCOL.KEY=VALUE``
(:func:`refmount.config.options.parse_storage_item`), so a value means the
same to every command; ``PROTOCOL.`` sends it to that protocol's filesystem,
and a KEY without it is for the one protocol of the command's remote URLs.
``--endpoint-url`` and ``--anon`` are S3 options in all four
(:func:`refmount.store.options.s3_connection_options`).

mount and inspect turn each item into its ``-o`` form first
(:func:`storage_options_as_mount_options`), so the credential handling of
``-o`` (:mod:`refmount.cli.secretargs`) covers it; ``-o`` text is split on
commas, so there a value cannot hold one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from refmount.config.options import OPTIONS_BY_NAME, parse_storage_item
from refmount.errors import ConfigError
from refmount.store.options import BackendOptions, s3_connection_options, with_storage_options
from refmount.urls import is_local, protocol_of

#: The flag, spelled the same by every command.
STORAGE_OPTION = "--storage-option"
STORAGE_OPTION_METAVAR = "[PROTOCOL.]KEY=VALUE"

#: Its help, the same for every command.
STORAGE_OPTION_HELP = (
    "fsspec storage option, repeatable. PROTOCOL. sends it to that protocol's filesystem (s3.requester_pays=true); "
    "without it, it is for the protocol of the command's remote URLs (mount, inspect: REFS; scan: SOURCE and -o; "
    "convert: SOURCE and TARGET). The same as mount's -o PROTOCOL.KEY=VALUE: VALUE true/false, a number, or a JSON "
    "object, list or \"string\" becomes that, anything else is text. Credentials are best left to the environment "
    "or an AWS profile: only a mount's daemon keeps them out of ps"
)

#: fsspec arguments by protocol, e.g. ``{"s3": {"anon": True}}``.
Table = dict[str, dict[str, Any]]


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--storage-option``, ``--endpoint-url`` and ``--anon`` for scan and convert, as mount's option table has them."""
    endpoint, anon = OPTIONS_BY_NAME["endpoint_url"], OPTIONS_BY_NAME["anon"]
    parser.add_argument(STORAGE_OPTION, dest="storage_option", action="append", default=[],
                        metavar=STORAGE_OPTION_METAVAR, help=STORAGE_OPTION_HELP)
    parser.add_argument("--endpoint-url", metavar=endpoint.metavar, help=endpoint.help)
    parser.add_argument("--anon", action="store_true", help=anon.help)


def split_storage_option(text: str, urls: Sequence[str]) -> tuple[str, str]:
    """``[PROTOCOL.]KEY=VALUE`` -> (``PROTOCOL.KEY``, the VALUE text), PROTOCOL filled in from ``urls`` if left out."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{STORAGE_OPTION} {key or text!r}: expected {STORAGE_OPTION_METAVAR}")
    if "." not in key:
        key = f"{_default_protocol(key, urls)}.{key}"
    return key, value


def _default_protocol(key: str, urls: Sequence[str]) -> str:
    """The one protocol of the remote URLs among ``urls``, which a KEY without PROTOCOL. is for."""
    remote = sorted({protocol_of(url) for url in urls if url and url != "-" and not is_local(url)})
    if len(remote) == 1:
        return remote[0]
    why = f"the command's URLs use {' and '.join(remote)}" if remote else "every URL of the command is local"
    raise ConfigError(f"{STORAGE_OPTION} {key}: {why}, so say which protocol it is for "
                      f"({STORAGE_OPTION} {remote[0] if remote else 's3'}.{key}=...)")


def parse_storage_options(items: Sequence[str], urls: Sequence[str]) -> Table:
    """``--storage-option`` items -> the options of each protocol, parsed as ``-o`` parses them."""
    table: Table = {}
    for text in items:
        key, raw = split_storage_option(text, urls)
        protocol, name, value = parse_storage_item(key, raw)
        table.setdefault(protocol, {})[name] = value
    return table


def command_storage_options(items: Sequence[str], urls: Sequence[str], endpoint_url: str | None, anon: bool) -> Table:
    """scan's and convert's fsspec arguments per protocol: ``--endpoint-url``/``--anon`` for S3, the items over them."""
    table = parse_storage_options(items, urls)
    s3 = s3_connection_options(BackendOptions(endpoint_url=endpoint_url or None, anon=anon))
    if s3:
        table["s3"] = with_storage_options(s3, table.get("s3", {}))
    return table


def storage_options_as_mount_options(argv: Sequence[str], source: str | None) -> list[str]:
    """``argv`` with each ``--storage-option [PROTOCOL.]KEY=VALUE`` turned into ``-o PROTOCOL.KEY=VALUE``.

    Read exactly as ``-o`` reads a storage option, so the credential
    handling of ``-o`` (kept out of ps) covers it. A KEY without PROTOCOL
    is for the protocol of ``source``.
    """
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "--":
            out.extend(items[index:])
            break
        if item == STORAGE_OPTION and index + 1 < len(items):
            text, index = items[index + 1], index + 2
        elif item.startswith(STORAGE_OPTION + "="):
            text, index = item[len(STORAGE_OPTION) + 1 :], index + 1
        else:
            out.append(item)
            index += 1
            continue
        key, value = split_storage_option(text, [source] if source else [])
        if "," in value:
            raise ConfigError(f"{STORAGE_OPTION} {key}: a value with a comma cannot be passed to a mount on the "
                              "command line; put it in a --config file ([storage_options.PROTOCOL] table)")
        out += ["-o", f"{key}={value}"]
    return out
