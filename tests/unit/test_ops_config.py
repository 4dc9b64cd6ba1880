"""One definition per option: flag, -o and config-file key all derive from the OPTIONS table."""

from __future__ import annotations

from dataclasses import fields

import pytest

from refmount.cli.fstab import translate
from refmount.cli.main import build_parser, mount_config
from refmount.config.file import example_config, parse_config
from refmount.config.options import OPTIONS, MountConfig, backend_options, parse_mount_options
from refmount.errors import ConfigError
from refmount.store.options import BackendOptions
from refmount.store.policy import UrlPolicy


def test_every_option_is_a_field_a_flag_an_o_option_and_a_config_key():
    field_names = {f.name for f in fields(MountConfig)}
    parser = build_parser()
    mount_help = parser._subparsers._group_actions[0].choices["mount"].format_help()
    for option in OPTIONS:
        assert option.name in field_names
        assert "--" + option.name.replace("_", "-") in mount_help
        value = "true" if option.is_flag else {"cache_size": "2G", "block_size": "1M", "max_request": "16M",
                                                 "readahead": "1M", "umask": "022", "allow": "s3|https",
                                                 "log_level": "debug", "zarr_format": "3"}.get(
            option.name, option.default if isinstance(option.default, str) else "7")
        parsed, _ = parse_mount_options(f"{option.name}={value}")
        from_file = parse_config(f'{option.name} = "{value}"\n').values
        assert parsed == from_file, option.name


def test_config_file_then_o_then_flags(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('source = "/refs/a.json"\nmountpoint = "/mnt/a"\ncache_size = "1G"\n'
                      'readahead = "2M"\ntimeout = 5\n[storage_options.s3]\nrequester_pays = true\n')
    args = build_parser().parse_args(["mount", "--config", str(config), "-o", "cache_size=2G,readahead=4M",
                                      "--readahead", "8M"])
    built = mount_config(args)
    assert (built.source, built.mountpoint) == ("/refs/a.json", "/mnt/a")
    assert built.cache_size == 2 << 30 and built.readahead == 8 << 20 and built.timeout == 5.0
    assert built.storage_options == {"s3": {"requester_pays": True}}


@pytest.mark.parametrize("text,message", [
    ('cache_sise = "1G"\n', "unknown key 'cache_sise'"),
    ('cache_size = "lots"\n', "option cache_size"),
    ("[storage_options]\ns3 = 1\n", "one table per protocol"),
    ("source = \n", "not valid TOML"),
])
def test_config_errors_name_the_file_and_key(text, message):
    with pytest.raises(ConfigError) as failure:
        parse_config(text, "/etc/refmount/x.toml")
    assert message in str(failure.value) and "/etc/refmount/x.toml" in str(failure.value)


def test_example_config_lists_every_option_and_parses():
    text = example_config()
    for option in OPTIONS:
        assert f"# {option.name} = " in text
    assert parse_config(text).source == "s3://bucket/refs/dataset.json"


def test_helper_arguments_become_a_background_mount():
    command, fake = translate(["s3://a/r.json", "/mnt/r", "-n", "-o", "ro,dev,suid,cache_size=4G", "-t", "fuse.refmount"])
    assert command == ["mount", "s3://a/r.json", "/mnt/r", "-o", "ro,dev,suid,cache_size=4G"] and not fake
    assert translate(["src", "/mnt", "-f"])[1] is True
    assert translate(["only-one"])[0] is None


def test_mount_config_defaults_are_the_option_table_defaults():
    """MountConfig repeats each default for type checkers; the table stays the one source of truth."""
    defaults = {f.name: f.default for f in fields(MountConfig)}
    for option in OPTIONS:
        assert defaults[option.name] == option.default, option.name


def test_the_backend_receives_every_store_option_of_a_config_and_shares_its_defaults():
    given = {"endpoint_url": "http://127.0.0.1:8333", "region": "eu-north-1", "profile": "archive", "anon": True,
             "timeout": 7.5, "retries": 2, "max_concurrency": 3, "allow": ("s3",)}
    config = MountConfig.build("s3://b/refs.json", "/mnt/a", given, {"s3": {"requester_pays": True}})
    assert backend_options(config) == BackendOptions(
        endpoint_url="http://127.0.0.1:8333", region="eu-north-1", profile="archive", anon=True, timeout=7.5,
        retries=2, max_concurrency=3, storage_options={"s3": {"requester_pays": True}},
        policy=UrlPolicy(allow=("s3",), local_allowed=False, guard_addresses=True),
    )
    untouched = MountConfig("/refs/a.json", "/mnt/a")
    assert backend_options(untouched) == BackendOptions(policy=UrlPolicy(local_allowed=True))


@pytest.mark.parametrize("value", [-1, 301])
def test_a_shared_cache_wait_out_of_bounds_is_refused_naming_the_option_and_its_limits(value):
    with pytest.raises(ConfigError) as failure:
        MountConfig(source="/refs/a.json", mountpoint="/mnt/a", shared_cache="s3://fleet/cache",
                    shared_cache_wait=value)
    assert "option shared_cache_wait" in str(failure.value) and "between 0 and 300 seconds" in str(failure.value)
