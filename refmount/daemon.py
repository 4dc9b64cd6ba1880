"""Mount lifecycle: assemble the layers, serve FUSE, signal readiness, unmount.

Foreground is the primitive: ``serve`` loads the reference set, checks the
mountpoint and blocks in the FUSE loop until unmounted. Background mode
(``refmount mount`` without ``-f``) starts the same command with
``--foreground`` as a new session via exec, before any thread exists, and
returns once the mount answers, or prints the daemon's error and fails;
nothing ever forks a process that already runs threads.

Signals. Python runs its signal handlers only in the main thread between
bytecodes, and the main thread sits in libfuse's C loop for the whole
mount, so handlers would never run. Instead, every signal we handle gets a
no-op Python handler (which also keeps libfuse from installing its own: it
only does where the disposition is SIG_DFL), and ``signal.set_wakeup_fd``
makes the C-level handler write the signal number to a pipe that a watcher
thread reads. SIGTERM/SIGINT: tell systemd STOPPING=1 and unmount with
fusermount, which ends the FUSE loop; ``serve`` then closes everything and
returns 0. SIGHUP: reload the reference set(s). SIGUSR1 dumps every thread's
stack to the log through faulthandler, which works at C level even when
the interpreter is stuck. (fusepy resets SIGINT to the default just before
entering libfuse, so for SIGINT libfuse's own handler ends the loop and
unmounts: the same outcome, exit 0.)
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
from typing import Callable

from .backend import BackendOptions, filesystem_options, redact_url
from .config import MountConfig
from .errors import ConfigError, RefmountError
from .logs import setup_logging
from .policy import UrlPolicy, protocol_of

log = logging.getLogger("refmount.daemon")


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
    from .redirects import origin_of

    options = filesystem_options(protocol_of(config.source), backend_options(config),
                                 redirect_origin=origin_of(config.source))
    options.pop("skip_instance_cache", None)
    return options


#: What the kernel answers for a FUSE mount whose daemon died.
STALE_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def is_stale_mount(path: str) -> bool:
    """Whether ``path`` is a mount whose daemon died (statfs asks the daemon; stat may be cached)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in STALE_MOUNT_ERRNOS
    return False


def check_mountpoint(path: str, *, nonempty: bool, force: bool) -> None:
    """Refuse a mountpoint that is missing, in use, stale or (unless asked) not empty."""
    try:
        st = os.stat(path)
        if os.path.ismount(path):
            # The kernel answers stat from cached attributes even for a dead daemon; statfs always asks it.
            os.statvfs(path)
    except OSError as exc:
        if exc.errno in STALE_MOUNT_ERRNOS:
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


#: Kernel name/attribute cache bound for mounts whose tree changes on reload (collections).
RELOADABLE_TIMEOUT = 1.0


def fuse_options(config: MountConfig, *, reloadable: bool = False) -> dict:
    """libfuse options: read-only, immutable data cached by the kernel, our inode numbers.

    A collection of sets changes on reload, so there the kernel keeps names and
    attributes only briefly and keeps file data only while size and mtime are
    unchanged (auto_cache); data of an unchanged set stays in the page cache.
    """
    timeout = min(config.attr_timeout, RELOADABLE_TIMEOUT) if reloadable else config.attr_timeout
    options: dict = {
        "ro": True,
        "fsname": "refmount:" + redact_url(config.source).replace(",", "%2C"),
        "subtype": "refmount",
        ("auto_cache" if reloadable else "kernel_cache"): True,
        "use_ino": True,
        "attr_timeout": timeout,
        "entry_timeout": timeout,
        "negative_timeout": timeout,
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
    from .control import ControlServer
    from .multiset import open_tree

    handler = setup_logging(config.log_level, config.log_file)
    stream = getattr(handler, "stream", sys.stderr)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    log.debug("options: %s", describe_config(config))
    started = time.time()
    try:
        check_mountpoint(config.mountpoint, nonempty=config.nonempty, force=force)
        tree = open_tree(config)
    except RefmountError as exc:
        log.error("cannot mount %s: %s", redact_url(config.source), exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - a failed mount must say why, in one line
        log.error("cannot mount %s: %s: %s", redact_url(config.source), type(exc).__name__, exc)
        return 2

    from .fuse_ops import FuseAdapter, run_fuse

    def report() -> dict:
        figures: dict = dict(tree.metrics.snapshot())
        figures.update(tree.router.status())
        figures.update(pid=os.getpid(), mountpoint=config.mountpoint, source=redact_url(config.source),
                       uptime_seconds=time.time() - started)
        return figures

    adapter = FuseAdapter(tree.router, tree.metrics, on_init=_announce_when_answering(config.mountpoint),  # type: ignore[arg-type]
                          stateless_open=not tree.router.collection, xattrs=config.xattrs)
    metrics_server = None
    if config.metrics_port is not None:
        from .prometheus import MetricsServer

        try:
            metrics_server = MetricsServer(report, {"mountpoint": config.mountpoint}, config.metrics_address,
                                           config.metrics_port).start()
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", config.metrics_address, config.metrics_port, exc.strerror)
            tree.close()
            return 2
    control = ControlServer(config.mountpoint, report, allow_other=config.allow_other).start()
    watcher = SignalWatcher(config.mountpoint, reload=lambda: _reload(tree))
    try:
        run_fuse(adapter, config.mountpoint, fuse_options(config, reloadable=tree.router.collection))
    except RuntimeError as exc:
        log.error("cannot mount at %s: libfuse refused (%s); see the lines above", config.mountpoint, exc)
        return 1
    finally:
        watcher.close()
        control.close()
        notify_systemd("STOPPING=1")
        if metrics_server is not None:
            metrics_server.close()
        tree.close()
    log.info("unmounted %s", config.mountpoint)
    return 0


def _reload(tree) -> None:  # type: ignore[no-untyped-def]
    notify_systemd("RELOADING=1\nSTATUS=reloading")
    try:
        result = tree.router.reload()
    finally:
        notify_systemd("READY=1\nSTATUS=serving")
    del result


def describe_config(config: MountConfig) -> str:
    """The effective options for a debug line: storage option values are never shown."""
    from dataclasses import fields as dataclass_fields

    parts = []
    for item in dataclass_fields(config):
        value = getattr(config, item.name)
        if item.name == "storage_options":
            value = {protocol: sorted(options) for protocol, options in value.items()}
        elif item.name == "source":
            value = redact_url(value)
        parts.append(f"{item.name}={value}")
    return " ".join(parts)


class SignalWatcher:
    """Act on SIGTERM/SIGINT (unmount) and SIGHUP (reload) while the main thread is inside libfuse."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, mountpoint: str, *, reload: Callable[[], None]) -> None:
        self.mountpoint = mountpoint
        self._reload = reload
        self._stopping = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for signum in self.SIGNALS:
            signal.signal(signum, lambda signum, frame: None)  # run at C level; the watcher acts
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="refmount-signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return  # close()
                try:
                    self._handle(signal.Signals(signum))
                except Exception as exc:  # noqa: BLE001 - the watcher must survive any one action
                    log.error("handling signal %d failed: %s", signum, exc)

    def _handle(self, signum: signal.Signals) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading")
            self._reload()
            return
        if self._stopping:
            if not os.path.ismount(self.mountpoint):
                return
            log.warning("%s again: detaching %s lazily", signum.name, self.mountpoint)
            unmount(self.mountpoint, lazy=True)
            return
        self._stopping = True
        log.info("%s: unmounting %s", signum.name, self.mountpoint)
        notify_systemd("STOPPING=1\nSTATUS=unmounting")
        try:
            unmount(self.mountpoint)
        except ConfigError as exc:
            log.warning("%s; files are still open, detaching lazily: the daemon exits when they are closed", exc)
            unmount(self.mountpoint, lazy=True)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        try:
            os.write(self._write_fd, b"\0")
        except OSError:
            pass
        self._thread.join(timeout=5)
        os.close(self._write_fd)
        os.close(self._read_fd)


# -- background mode ------------------------------------------------------------


def default_log_path(mountpoint: str) -> str:
    """Where a background daemon logs when no --log-file was given."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = os.path.join(base, f"refmount-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(directory, name + ".log")


def start_background(argv: list[str], mountpoint: str, log_file: str | None, timeout: float = 60.0,
                     env: dict[str, str] | None = None) -> int:
    """Run ``refmount mount ... --foreground`` detached; return once it answers or has failed.

    ``env``: the daemon's environment (credentials travel here, never in ``argv``: see secretargs).
    """
    log_path = log_file or default_log_path(mountpoint)
    command = [sys.executable, "-m", "refmount", *argv, "--foreground"]
    if not log_file:
        command += ["--log-file", log_path]
    with open(log_path, "ab") as sink:
        start_offset = sink.tell()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, close_fds=True,
            env=env,
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
