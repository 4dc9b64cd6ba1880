"""Help texts and messages of the command line: what a new user reads first."""

from __future__ import annotations

import logging
import re

import pytest

from refmount.cli.main import build_parser, main, mount_config, mount_helper_main
from refmount.cli.secretargs import split_argv
from refmount.cli.storage import storage_options_as_mount_options
from refmount.config.options import OPTIONS
from refmount.errors import ConfigError, InvalidReferences
from refmount.fs.router import SetSlot
from refmount.mount.mountpoint import unmount
from refmount.refs.collection import SetSource


def help_of(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def _flag_in(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-])--{name.replace('_', '-')}(?![\w-])", text) is not None


def test_mount_help_lists_every_mount_option(capsys):
    text = help_of(capsys, "mount")
    for option in OPTIONS:
        assert _flag_in(option.name, text), option.name
    assert "-o OPTS" in text and "--storage-option [PROTOCOL.]KEY=VALUE" in text


def test_inspect_help_lists_only_the_options_that_change_loading_or_the_summary(capsys):
    text = help_of(capsys, "inspect")
    shown = {option.name for option in OPTIONS if _flag_in(option.name, text)}
    assert shown == {option.name for option in OPTIONS if option.inspect}
    assert {"endpoint_url", "anon", "allow", "ref", "record_cache", "view", "zarr_format", "netcdf_format",
            "max_decoded_chunk"} <= shown
    assert not shown & {"uid", "gid", "umask", "allow_other", "attr_timeout", "threads", "log_file", "metrics_port",
                        "cache_size", "disk_cache"}
    assert "-o OPTS" in text and "every mount option is accepted" in text
    assert "--storage-option [PROTOCOL.]KEY=VALUE" in text


def test_inspect_takes_any_mount_option_in_o_but_only_its_own_flags(capsys):
    fstab = "ro,_netdev,uid=1000,allow_other,cache_size=4G,threads=false,log_file=/var/log/r.log,view=decoded"
    config = mount_config(build_parser().parse_args(["inspect", "/refs.json", "-o", fstab, "--zarr-format", "3"]))
    assert (config.view, config.zarr_format, config.uid) == ("decoded", 3, 1000)
    with pytest.raises(ConfigError, match="cache_size: not a size"):
        mount_config(build_parser().parse_args(["inspect", "/refs.json", "-o", "cache_size=lots"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inspect", "/refs.json", "--uid", "1000"])
    assert "unrecognized arguments: --uid" in capsys.readouterr().err


def test_inspect_reads_a_mounts_config_file(tmp_path):
    config = tmp_path / "era5.toml"
    config.write_text('source = "s3://b/era5.json"\nmountpoint = "/mnt/era5"\nview = "decoded"\nuid = 1000\n'
                      '[storage_options.s3]\nrequester_pays = true\n')
    built = mount_config(build_parser().parse_args(["inspect", "--config", str(config), "-o", "zarr_format=3"]))
    assert (built.source, built.view, built.zarr_format) == ("s3://b/era5.json", "decoded", 3)
    assert built.storage_options == {"s3": {"requester_pays": True}}
    with pytest.raises(ConfigError, match="config=FILE is for fstab .*give --config FILE"):
        mount_config(build_parser().parse_args(["inspect", "/refs.json", "-o", f"ro,config={config}"]))


def test_view_and_zarr_format_a_mount_refuses_are_refused_by_inspect_too():
    for command in (["inspect", "/refs.json"], ["mount", "/refs.json", "/mnt"]):
        with pytest.raises(ConfigError, match="zarr_format: 3 applies to the raw and decoded views"):
            mount_config(build_parser().parse_args([*command, "-o", "view=netcdf,zarr_format=3"]))


@pytest.mark.parametrize("command", ["mount", "inspect"])
def test_refs_help_names_every_form_a_set_may_take(capsys, command):
    text = help_of(capsys, command)
    for word in ("JSON", "Parquet", "Icechunk", "path", "URL", ".gz", ".zst", "compressed", "directory", "prefix"):
        assert word in text, word


@pytest.mark.parametrize("command", ["umount", "reload", "stats"])
def test_mountpoint_has_help(capsys, command):
    text = help_of(capsys, command)
    assert re.search(r"MOUNTPOINT where the tree is mounted", text), text


def test_zarr_format_option_is_documented(capsys):
    text = help_of(capsys, "mount")
    assert "--zarr-format 2|3" in text and "zarr.json" in text


def test_the_mount_helper_has_help(capsys):
    assert mount_helper_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mount.refmount SOURCE MOUNTPOINT") and "PROTOCOL.NAME=VALUE" in out


# -- one spelling of storage options for scan and mount --------------------------------


def _config(argv: list[str]):
    argv = storage_options_as_mount_options(argv, argv[1])
    return mount_config(build_parser().parse_args(argv))


def test_mount_takes_scans_storage_option_spelling():
    config = _config(["mount", "s3://bucket/refs.json", "/mnt", "--storage-option", "requester_pays=true",
                      "--storage-option=https.headers_timeout=5", "-o", "s3.anon=true"])
    assert config.storage_options == {"s3": {"requester_pays": True, "anon": True}, "https": {"headers_timeout": 5}}


def test_storage_option_and_o_spellings_give_the_same_config():
    via_flag = _config(["inspect", "/refs.json", "--storage-option", "s3.requester_pays=true"])
    via_o = _config(["inspect", "/refs.json", "-o", "s3.requester_pays=true"])
    assert via_flag.storage_options == via_o.storage_options == {"s3": {"requester_pays": True}}


@pytest.mark.parametrize(
    "item, message",
    [
        ("requester_pays=true", "every URL of the command is local, so say which protocol"),
        ("s3.novalue", "expected \\[PROTOCOL.\\]KEY=VALUE"),
        ("s3.list=a,b", "a value with a comma"),
    ],
)
def test_storage_options_that_cannot_be_placed_are_refused(item, message):
    with pytest.raises(ConfigError, match=message):
        storage_options_as_mount_options(["mount", "/local/refs.json", "/mnt", "--storage-option", item], "/local/refs.json")


def test_credentials_given_as_storage_options_leave_the_command_line():
    cleaned, _ = split_argv(["mount", "s3://b/r.json", "/mnt", "--storage-option", "secret=abc",
                             "--storage-option=s3.key=xyz", "--storage-option", "s3.requester_pays=true"])
    assert cleaned == ["mount", "s3://b/r.json", "/mnt", "--storage-option", "s3.requester_pays=true"]
    rewritten = storage_options_as_mount_options(["mount", "s3://b/r.json", "/mnt", "--storage-option", "secret=abc"],
                                                  "s3://b/r.json")
    cleaned, secrets = split_argv(rewritten)
    assert cleaned == ["mount", "s3://b/r.json", "/mnt"] and secrets == "s3.secret=abc"


# -- messages ---------------------------------------------------------------------


def test_a_single_set_that_fails_to_load_is_named_by_its_url(caplog):
    def broken(source):
        raise InvalidReferences("'a//b': key has an empty path segment")

    slot = SetSlot(SetSource("", "/data/refs/x.json", "json"), broken)
    with caplog.at_level(logging.ERROR), pytest.raises(InvalidReferences) as error:
        slot.get()
    assert str(error.value).startswith("reference set /data/refs/x.json is unavailable: ")
    assert "reference set /data/refs/x.json failed to load" in caplog.text
    assert "set  " not in caplog.text and "set  " not in str(error.value)
    named = SetSlot(SetSource("era5", "s3://b/era5.json", "json"), broken)
    with pytest.raises(InvalidReferences, match=r"^reference set era5 \(s3://b/era5.json\) is unavailable"):
        named.get()


def test_umount_of_a_directory_not_mounted_says_so_once(tmp_path, capsys):
    assert main(["umount", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"refmount umount: {tmp_path} is not mounted"


def test_unmount_tool_failures_do_not_repeat_the_tools_name(tmp_path):
    with pytest.raises(ConfigError) as error:
        unmount(tmp_path)
    message = str(error.value)
    assert not re.search(r"\b(fusermount3?|umount): \1:", message), message
