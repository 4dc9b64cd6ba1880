"""Live figures of a running mount (`refmount stats`, Prometheus) and logs that carry no secret."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from refmount.mount.control import read_stats
from tests.support.mounting import mounted
from tests.support.opsfixtures import (
    biggest_range_key,
    code_env,
    expected_bytes,
    make_dataset,
    write_set,
)

pytestmark = pytest.mark.fuse


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_stats_move_with_reads_and_prometheus_shows_the_same(tmp_path):
    _, refs = make_dataset(tmp_path / "data")
    source = write_set(tmp_path / "era5.json", refs)
    key = biggest_range_key(refs)
    port = _free_port()
    with mounted(source, tmp_path / "mnt", ["--metrics-port", str(port), "--readahead", "0"]) as mount:
        before = read_stats(str(mount.path))
        data = (mount.path / key).read_bytes()
        assert data == expected_bytes(refs, key)
        after = read_stats(str(mount.path))
        assert after["reads"] > before["reads"]
        assert after["bytes_delivered"] - before["bytes_delivered"] == len(data)
        assert after["gets"] > before["gets"] and after["bytes_fetched"] >= len(data)
        assert after["cache_misses"] > before["cache_misses"] and after["cache_bytes"] > 0
        assert after["read_latency_p50_ms"] > 0
        printed = subprocess.run([sys.executable, "-m", "refmount", "stats", str(mount.path)], capture_output=True,
                                 text=True, env=code_env(), check=True).stdout
        assert "bytes delivered" in printed and "cache hits" in printed and "open handles" in printed
        as_json = json.loads(subprocess.run([sys.executable, "-m", "refmount", "stats", "--json", str(mount.path)],
                                            capture_output=True, text=True, env=code_env(), check=True).stdout)
        assert as_json["bytes_delivered"] == after["bytes_delivered"]
        with open(mount.path / key, "rb") as handle:
            handle.read(1)
            # One reference set never changes, so files open without a round trip to the daemon.
            assert read_stats(str(mount.path))["open_handles"] == 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "# TYPE refmount_reads_total counter" in body
        lines = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                 if line and not line.startswith("#") and "quantile" not in line}
        final = read_stats(str(mount.path))
        assert lines["refmount_bytes_delivered_total"] == final["bytes_delivered"]
        assert lines["refmount_gets_total"] == final["gets"]
        assert lines["refmount_cache_bytes"] == final["cache_bytes"]


def test_stats_of_something_else_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "refmount", "stats", str(tmp_path)], capture_output=True,
                            text=True, env=code_env())
    assert result.returncode == 2 and "not a running refmount mount" in result.stderr


def test_no_secret_reaches_the_log_through_any_channel(tmp_path):
    secrets = {
        "env": "EnvSecretValue0123456789abcdef",
        "config": "ConfigSecretValue0123456789abcd",
        "option": "OptionSecretValue0123456789abc",
    }
    _, refs = make_dataset(tmp_path / "data")
    key = biggest_range_key(refs)
    sets = tmp_path / "sets"
    sets.mkdir()
    write_set(sets / "good.json", refs)
    bad = json.loads(json.dumps(refs))
    bad["refs"][key] = [str(tmp_path / "gone.h5"), 0, 100]
    write_set(sets / "bad.json", bad)
    config = tmp_path / "mount.toml"
    config.write_text(f'log_level = "debug"\n[storage_options.s3]\nsecret = "{secrets["config"]}"\n'
                      f'key = "AKIAEXAMPLE"\n')
    config.chmod(0o600)
    env = {"AWS_SECRET_ACCESS_KEY": secrets["env"], "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}
    options = ["--config", str(config), "-o", f"s3.token={secrets['option']},s3.session_token={secrets['option']}"]
    with mounted(sets, tmp_path / "mnt", options, env=env) as mount:
        assert (mount.path / "good" / key).read_bytes() == expected_bytes(refs, key)
        with pytest.raises(OSError):
            (mount.path / "bad" / key).read_bytes()
        subprocess.run([sys.executable, "-m", "refmount", "reload", str(mount.path)], env=code_env(), check=True,
                       capture_output=True)
        log = mount.log()
    assert "options: " in log and "gone.h5" in log  # the log did record options and the failed read
    for channel, secret in secrets.items():
        assert secret not in log, f"the {channel} secret leaked into the log"


def _stats_as_user(uid: int, mountpoint: str) -> str:
    """What `read_stats` says to another user: 'pid N' or the refusal (child process, setuid)."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(reader)
        try:
            os.setgid(uid)
            os.setuid(uid)
            answer = f"pid {read_stats(mountpoint)['pid']}"
        except BaseException as exc:  # noqa: BLE001 - report whatever happened to the parent
            answer = str(exc)
        os.write(writer, answer.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(child, 0)
    return answer


def test_stats_are_for_whoever_may_see_the_mount(tmp_path):
    _, refs = make_dataset(tmp_path / "data")
    source = write_set(tmp_path / "era5.json", refs)
    tmp_path.chmod(0o755)
    with mounted(source, tmp_path / "private") as mount:
        assert read_stats(str(mount.path))["pid"] == mount.process.pid
        assert "not allowed" in _stats_as_user(65534, str(mount.path))
    with mounted(source, tmp_path / "shared", ["-o", "allow_other"]) as mount:
        assert _stats_as_user(65534, str(mount.path)) == f"pid {mount.process.pid}"
