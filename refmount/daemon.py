"""Mount lifecycle: assemble the layers, serve FUSE, signal readiness, unmount.

Foreground is the primitive: ``serve`` loads the reference set, checks the
mountpoint and blocks in the FUSE loop until unmounted. Background mode
(``refmount mount`` without ``-f``) starts the same command with
``--foreground`` as a new session via exec, before any thread exists, and
returns once the mount answers, or prints the daemon's error and fails;
nothing ever forks a process that already runs threads.

Signals: SIGINT, SIGTERM and SIGHUP are left to libfuse, which exits its
loop and unmounts cleanly (Python's own SIGINT handler would never run
while the main thread sits in the C loop, so it is reset first). SIGUSR1
dumps every thread's stack to the log through faulthandler, which works at
C level.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .backend import BackendOptions, FsspecBackend, filesystem_options, redact_url
from .cache import BlockCache
from .config import MountConfig
from .errors import ConfigError, RefmountError
from .filesystem import RefFilesystem, TreeOwner
from .logs import setup_logging
from .metrics import Metrics
from .policy import UrlPolicy, protocol_of
from .reader import Reader

log = logging.getLogger("refmount.daemon")


@dataclass
class MountedTree:
    """The layers of one mount, kept together so they can be closed together."""

    filesystem: RefFilesystem
    backend: FsspecBackend
    reader: Reader
    metrics: Metrics

    def close(self) -> None:
        self.reader.close()
        self.backend.close()


def backend_options(config: MountConfig) -> BackendOptions:
    return BackendOptions(
        endpoint_url=config.endpoint_url,
        region=config.region,
        profile=config.profile,
        anon=config.anon,
        timeout=config.timeout,
        retries=config.retries,
        max_concurrency=config.max_concurrency,
        storage_options=config.storage_options,
        policy=UrlPolicy.for_source(config.source, config.allow),
    )


def reference_storage_options(config: MountConfig) -> dict:
    """fsspec options for reading the reference file itself."""
    options = filesystem_options(protocol_of(config.source), backend_options(config))
    options.pop("skip_instance_cache", None)
    return options


def build_tree(config: MountConfig) -> MountedTree:
    """Load and validate the reference set and assemble every layer; nothing is mounted yet."""
    from .refs.open import open_reference_set

    started = time.monotonic()
    reference_file, namespace = open_reference_set(config.source, reference_storage_options(config))
    metrics = Metrics()
    options = backend_options(config)
    refused = sorted({url for url in namespace.urls if not options.policy.permits(url)})
    if refused:
        log.warning(
            "%d referenced URL(s) are not allowed and will read as EACCES, e.g. %s: %s",
            len(refused), redact_url(refused[0]), options.policy.reason(refused[0]),
        )
    backend = FsspecBackend(options, metrics)
    cache = BlockCache(
        backend, capacity=config.cache_size, block_size=config.block_size,
        max_request=config.max_request, metrics=metrics,
    )
    reader = Reader(namespace, cache, backend, readahead=config.readahead, metrics=metrics)
    uid, gid = config.owner
    filesystem = RefFilesystem(namespace, reader, TreeOwner(uid, gid, config.umask), reference_file.mtime)
    log.info(
        "loaded %s (%s): %d keys, %d directories, %d objects in %.2f s",
        redact_url(config.source), reference_file.format, len(namespace), namespace.directory_count,
        len(list(namespace.urls)), time.monotonic() - started,
    )
    return MountedTree(filesystem, backend, reader, metrics)


def check_mountpoint(path: str, *, nonempty: bool, force: bool) -> None:
    """Refuse a mountpoint that is missing, in use, stale or (unless asked) not empty."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            if force:
                log.warning("%s is a stale mount of a daemon that died; unmounting it", path)
                unmount(path, lazy=True)
                return check_mountpoint(path, nonempty=nonempty, force=False)
            raise ConfigError(
                f"{path} is a stale mount (its daemon died): run 'refmount umount {path}' or mount with --force"
            ) from None
        if exc.errno == errno.ENOENT:
            raise ConfigError(f"mountpoint {path} does not exist") from None
        raise ConfigError(f"mountpoint {path}: {exc.strerror}") from None
    import stat as stat_module

    if not stat_module.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mountpoint (unmount it first)")
    if not nonempty and os.listdir(path):
        raise ConfigError(f"mountpoint {path} is not empty (use -o nonempty to mount over it)")


def fuse_options(config: MountConfig) -> dict:
    """libfuse options: read-only, immutable data cached by the kernel, our inode numbers."""
    options: dict = {
        "ro": True,
        "fsname": "refmount:" + redact_url(config.source).replace(",", "%2C"),
        "subtype": "refmount",
        "kernel_cache": True,
        "use_ino": True,
        "attr_timeout": config.attr_timeout,
        "entry_timeout": config.attr_timeout,
        "negative_timeout": config.attr_timeout,
        "max_readahead": 1 << 20,
        "threads": config.threads,
    }
    if config.allow_other:
        options["allow_other"] = True
    if config.default_permissions:
        options["default_permissions"] = True
    if config.nonempty:
        options["nonempty"] = True
    return options


def notify_systemd(message: str) -> None:
    """Send ``message`` (READY=1, STOPPING=1, STATUS=...) to systemd when it asked for it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def _announce_when_answering(mountpoint: str, timeout: float = 60.0) -> Callable[[], None]:
    """A FUSE init hook that signals readiness once the mountpoint really answers."""

    def wait_and_notify() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.path.ismount(mountpoint):
                    os.stat(mountpoint)
                    log.info("mounted at %s", mountpoint)
                    notify_systemd("READY=1\nSTATUS=serving " + mountpoint)
                    return
            except OSError:
                pass
            time.sleep(0.02)
        log.error("mount at %s did not answer within %.0f s", mountpoint, timeout)

    def on_init() -> None:
        threading.Thread(target=wait_and_notify, name="refmount-ready", daemon=True).start()

    return on_init


def serve(config: MountConfig, *, force: bool = False) -> int:
    """Mount in the foreground and block until unmounted; the exit code of ``refmount mount -f``."""
    handler = setup_logging(config.log_level, config.log_file)
    stream = getattr(handler, "stream", sys.stderr)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    try:
        check_mountpoint(config.mountpoint, nonempty=config.nonempty, force=force)
        tree = build_tree(config)
    except RefmountError as exc:
        log.error("cannot mount %s: %s", redact_url(config.source), exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - a failed mount must say why, in one line
        log.error("cannot mount %s: %s: %s", redact_url(config.source), type(exc).__name__, exc)
        return 2

    from .fuse_ops import FuseAdapter, run_fuse

    adapter = FuseAdapter(tree.filesystem, tree.metrics, on_init=_announce_when_answering(config.mountpoint))
    # Let libfuse own INT/TERM/HUP: it installs handlers only where the disposition is the default.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    try:
        run_fuse(adapter, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        log.error("cannot mount at %s: libfuse refused (%s); see the lines above", config.mountpoint, exc)
        return 1
    finally:
        notify_systemd("STOPPING=1")
        tree.close()
    log.info("unmounted %s", config.mountpoint)
    return 0


# -- background mode ------------------------------------------------------------


def default_log_path(mountpoint: str) -> str:
    """Where a background daemon logs when no --log-file was given."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = os.path.join(base, f"refmount-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(directory, name + ".log")


def start_background(argv: list[str], mountpoint: str, log_file: str | None, timeout: float = 60.0) -> int:
    """Run ``refmount mount ... --foreground`` detached; return once it answers or has failed."""
    log_path = log_file or default_log_path(mountpoint)
    command = [sys.executable, "-m", "refmount", *argv, "--foreground"]
    if not log_file:
        command += ["--log-file", log_path]
    with open(log_path, "ab") as sink:
        start_offset = sink.tell()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            sys.stderr.write(_log_since(log_path, start_offset) or f"refmount daemon exited with status {code}\n")
            return code or 1
        if _answers(mountpoint):
            return 0
        time.sleep(0.05)
    child.terminate()
    sys.stderr.write(_log_since(log_path, start_offset))
    sys.stderr.write(f"refmount: mount at {mountpoint} did not answer within {timeout:.0f} s; log: {log_path}\n")
    return 1


def _answers(mountpoint: str) -> bool:
    try:
        if not os.path.ismount(mountpoint):
            return False
        os.stat(mountpoint)
        return True
    except OSError:
        return False


def _log_since(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# -- unmounting -----------------------------------------------------------------


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a refmount tree, also one whose daemon died (a stale mount)."""
    mountpoint = os.path.abspath(mountpoint)
    attempts: list[list[str]] = []
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            attempts.append([tool, "-u", *(["-z"] if lazy else []), mountpoint])
    if shutil.which("umount"):
        attempts.append(["umount", *(["-l"] if lazy else []), mountpoint])
    errors: list[str] = []
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            return
        errors.append(f"{command[0]}: {result.stderr.strip() or result.returncode}")
    raise ConfigError(f"could not unmount {mountpoint}: " + "; ".join(errors or ["no unmount tool found"]))


def wait_unmounted(mountpoint: str, timeout: float = 10.0) -> bool:
    """Wait until ``mountpoint`` is no longer a mountpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not os.path.ismount(mountpoint):
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
