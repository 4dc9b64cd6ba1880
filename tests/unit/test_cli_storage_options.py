"""One spelling of storage options for mount, inspect, scan and convert: the parser, the routing, the help."""

from __future__ import annotations

import argparse

import pytest

from refmount.cli.main import build_parser, mount_config
from refmount.cli.storage import (
    STORAGE_OPTION_HELP,
    command_storage_options,
    parse_storage_options,
    storage_options_as_mount_options,
)
from refmount.config.options import OPTIONS_BY_NAME, parse_mount_options
from refmount.errors import ConfigError
from refmount.store.options import protocol_options

COMMANDS = ("mount", "inspect", "scan", "convert")


def test_values_are_read_into_types_and_routed_by_protocol():
    table = parse_storage_options(
        ["s3.requester_pays=true", "anon=false", "s3.max_attempts=3", "s3.ratio=1.5", 's3.version="007"',
         "s3.acl=bucket-owner-full-control", 'https.headers={"X-Trace": "a, b"}', "https.list=[1, 2]",
         "s3.note={not json"],
        ["s3://bucket/a.nc"],
    )
    assert table == {
        "s3": {"requester_pays": True, "anon": False, "max_attempts": 3, "ratio": 1.5, "version": "007",
               "acl": "bucket-owner-full-control", "note": "{not json"},
        "https": {"headers": {"X-Trace": "a, b"}, "list": [1, 2]},
    }


def test_the_o_spelling_reads_each_value_the_same():
    items = ["s3.requester_pays=true", "s3.max_attempts=3", "s3.ratio=1.5", 's3.version="007"', "gs.project=x",
             "s3.requester-pays=false"]
    _, via_o = parse_mount_options(",".join(items))
    assert parse_storage_options(items, []) == via_o == {
        "s3": {"requester_pays": False, "max_attempts": 3, "ratio": 1.5, "version": "007"}, "gs": {"project": "x"},
    }


def test_a_key_without_protocol_is_for_the_one_remote_protocol_of_the_command():
    assert parse_storage_options(["requester_pays=true"], ["/local/out.json", "s3a://b/x.nc", "-"]) == {
        "s3": {"requester_pays": True}}
    with pytest.raises(ConfigError, match=r"requester_pays: every URL of the command is local, so say which protocol"):
        parse_storage_options(["requester_pays=true"], ["/data/x.nc", "-"])
    with pytest.raises(ConfigError, match=r"the command's URLs use https and s3, so say .* https\.key=\.\.\."):
        parse_storage_options(["key=abc"], ["s3://b/x.nc", "https://h/y.nc"])


@pytest.mark.parametrize("item", ["novalue", "=x", "s3.", ".key=x"])
def test_malformed_items_are_refused(item):
    with pytest.raises(ConfigError, match=r"expected (\[PROTOCOL.\]KEY=VALUE|PROTOCOL\.NAME)"):
        parse_storage_options([item], ["s3://b/x.nc"])


def test_endpoint_url_and_anon_are_s3_options_under_the_items():
    table = command_storage_options(["s3.client_kwargs={\"region_name\": \"eu-1\"}", "https.block_size=0"],
                                    ["s3://b/x.nc"], "http://rgw:8080", True)
    assert table == {
        "s3": {"client_kwargs": {"endpoint_url": "http://rgw:8080", "region_name": "eu-1"}, "anon": True},
        "https": {"block_size": 0},
    }
    assert command_storage_options([], ["https://h/x.nc"], None, False) == {}
    assert protocol_options("s3a://b/x.nc", table) == table["s3"]
    assert protocol_options("https://h/x.nc", table) == {"block_size": 0}
    assert protocol_options("/data/x.nc", table) == protocol_options("file:///data/x.nc", table) == {}


def test_mount_and_scan_read_one_command_line_the_same():
    items = ["requester_pays=true", "https.headers_timeout=5"]
    argv = ["mount", "s3://b/refs.json", "/mnt"] + [arg for item in items for arg in ("--storage-option", item)]
    config = mount_config(build_parser().parse_args(storage_options_as_mount_options(argv, argv[1])))
    assert config.storage_options == parse_storage_options(items, ["s3://b/x.nc"])


def _action(command: str, flag: str) -> argparse.Action:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_the_same_storage_flags_and_help(command):
    assert _action(command, "--storage-option").help == STORAGE_OPTION_HELP
    assert _action(command, "--storage-option").metavar == "[PROTOCOL.]KEY=VALUE"
    for name in ("endpoint_url", "anon"):
        help_text = _action(command, "--" + name.replace("_", "-")).help
        assert help_text is not None and help_text.startswith(OPTIONS_BY_NAME[name].help), (command, name)
