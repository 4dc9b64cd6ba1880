"""Through a real mount: which URLs a reference set may reach, permissions, and secrets.

A published reference set is hostile input: mounted with ``allow_other``, one
that points at ``/etc/shadow`` would hand it to every user. These tests serve
reference sets over HTTP (a remote location) and check that local files and
URLs outside ``allow`` answer EACCES, while allowed ones read normally.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from refmount.store.policy import UrlPolicy
from tests.support.http_range_server import RangeHTTPServer
from tests.support.mounting import mounted
from tests.support.readers import read_file

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RangeHTTPServer(tmp_path_factory.mktemp("policy-http")) as srv:
        yield srv


@pytest.fixture(scope="module")
def published(server, tmp_path_factory):
    """A reference set published over HTTP that points at a local 'secret', public and private objects."""
    base = tmp_path_factory.mktemp("policy")
    secret = base / "secret.txt"
    secret.write_bytes(b"root:$6$not-for-you\n")
    public = server.put("pub/data.bin", b"public bytes " * 100)
    private = server.put("priv/data.bin", b"private bytes " * 100)
    refs = {
        "secret": [str(secret), 0, secret.stat().st_size],
        "secret_url": ["file://" + str(secret), 0, 5],
        "chained": ["simplecache::file://" + str(secret), 0, 5],
        "public": [public, 0, 1300],
        "private": [private, 0, 1400],
        "sneaky": [f"{server.url}/pub/../priv/data.bin", 0, 1400],
    }
    server.put("refs.json", json.dumps(refs).encode())
    return {"url": server.url_for("refs.json"), "base": base, "secret": secret}


def test_remote_set_cannot_read_local_files_by_default(published):
    with mounted(published["url"], published["base"] / "m1") as m:
        for key in ("secret", "secret_url", "chained"):
            assert read_file(m.path / key, timeout=60).error == "EACCES", key
        assert read_file(m.path / "public", timeout=60).data == b"public bytes " * 100
        assert "not allowed and will read as EACCES" in m.log()
        assert "root:$6$" not in m.log()


def test_allow_prefix_admits_only_what_it_names(server, published):
    allow = f"{server.url}/pub/"
    with mounted(published["url"], published["base"] / "m2", ["--allow", allow]) as m:
        assert read_file(m.path / "public", timeout=60).ok
        for key in ("private", "sneaky", "secret"):
            assert read_file(m.path / key, timeout=60).error == "EACCES", key


def test_allow_file_lets_the_operator_opt_in(published):
    with mounted(published["url"], published["base"] / "m3", ["-o", "allow=file|http"]) as m:
        assert read_file(m.path / "secret", timeout=60).data == published["secret"].read_bytes()
        assert read_file(m.path / "chained", timeout=60).error == "EACCES"  # never, whatever the list


def test_a_local_prefix_is_not_escaped_through_a_symbolic_link(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.bin").write_bytes(b"fine")
    (tmp_path / "outside.bin").write_bytes(b"outside")
    (tmp_path / "data" / "link.bin").symlink_to(tmp_path / "outside.bin")
    refs = {"ok": [str(tmp_path / "data" / "ok.bin"), 0, 4], "link": [str(tmp_path / "data" / "link.bin"), 0, 7]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    with mounted(tmp_path / "refs.json", tmp_path / "mnt", ["--allow", str(tmp_path / "data") + "/"]) as m:
        assert read_file(m.path / "ok", timeout=30).data == b"fine"
        assert read_file(m.path / "link", timeout=30).error == "EACCES"


def test_default_policy_refuses_unusual_protocols():
    policy = UrlPolicy.for_source("https://example.org/refs.json", ())
    assert policy.permits("s3://bucket/key") and policy.permits("https://host/x")
    for url in ("/etc/shadow", "file:///etc/shadow", "memory://x", "ftp://host/x", "simplecache::s3://b/k"):
        assert not policy.permits(url), url
        assert policy.reason(url)


# -- permissions -----------------------------------------------------------------


def _mount_options(path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(",")
    raise AssertionError(f"{path} not in /proc/self/mounts")


def _small_set(tmp_path):
    (tmp_path / "obj").write_bytes(b"x" * 100)
    refs = {"g/k": [str(tmp_path / "obj"), 0, 100], ".zgroup": '{"zarr_format":2}'}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    return tmp_path / "refs.json"


def test_default_mount_is_private_and_checked_by_the_kernel(tmp_path):
    with mounted(_small_set(tmp_path), tmp_path / "mnt") as m:
        options = _mount_options(m.path)
        assert "default_permissions" in options
        assert "allow_other" not in options
        assert "ro" in options
        st_file, st_dir = os.stat(m.path / "g/k"), os.stat(m.path / "g")
        assert stat.S_IMODE(st_file.st_mode) == 0o444 and stat.S_IMODE(st_dir.st_mode) == 0o555
        assert (st_file.st_uid, st_file.st_gid) == (os.getuid(), os.getgid())


def test_uid_gid_umask_are_honoured(tmp_path):
    with mounted(_small_set(tmp_path), tmp_path / "mnt", ["--uid", "1234", "--gid", "4321", "--umask", "027"]) as m:
        st_file, st_dir = os.stat(m.path / "g/k"), os.stat(m.path / "g")
        assert (st_file.st_uid, st_file.st_gid, st_dir.st_uid, st_dir.st_gid) == (1234, 4321, 1234, 4321)
        assert stat.S_IMODE(st_file.st_mode) == 0o440
        assert stat.S_IMODE(st_dir.st_mode) == 0o550


def test_non_empty_mountpoint_is_refused_unless_asked(tmp_path):
    refs = _small_set(tmp_path)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "refmount", "mount", str(refs), str(target), "-f"], capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "not empty" in done.stderr and "nonempty" in done.stderr
    assert not os.path.ismount(target)
    with mounted(refs, target, ["-o", "nonempty"]) as m:
        assert read_file(m.path / "g/k", timeout=30).data == b"x" * 100
    assert (target / "precious.txt").read_text() == "keep me"


# -- secrets -----------------------------------------------------------------------


def test_secrets_never_reach_the_log_or_errors(tmp_path):
    """Credentials in options and URLs stay out of every log line, also on failures at debug level."""
    secret_key, password = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET", "hunter2-pass-word"
    refs = {
        "a": ["s3://bucket/obj", 0, 10],
        "b": [f"https://user:{password}@127.0.0.1:9/x?X-Amz-Signature=sig{password}", 0, 10],
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    options = [
        "--endpoint-url", "http://127.0.0.1:9", "--timeout", "2", "--retries", "2",
        "-o", f"s3.key=AKIAEXAMPLEKEY,s3.secret={secret_key}",
    ]
    with mounted(tmp_path / "refs.json", tmp_path / "mnt", [*options, "--xattrs"]) as m:
        assert read_file(m.path / "a", timeout=60).error == "EIO"
        assert read_file(m.path / "b", timeout=60).error == "EIO"
        xattr = os.getxattr(m.path / "b", "user.refmount.url").decode()
        log = m.log()
    assert secret_key not in log and password not in log, log[-2000:]
    assert password not in xattr
