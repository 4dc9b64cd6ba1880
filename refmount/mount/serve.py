"""Foreground serving: ``refmount mount -f``, the primitive every other way of mounting runs.

:func:`serve` checks the mountpoint, builds the layers (:mod:`refmount.mount.assemble`),
starts the side channels (stats socket, optional Prometheus endpoint, signal
watcher) and blocks in the libfuse loop until the tree is unmounted; then it
closes everything and returns the exit code. Background mode, mount(8) and
systemd all end up here, so there is one code path to get right. A mount that
cannot start says why in one log line and returns 2 (1 when libfuse itself
refuses), which ``refmount mount`` and mount(8) pass on.

Signals: the main thread spends the whole mount inside libfuse's C loop,
where Python signal handlers never run, so SIGTERM/SIGINT/SIGHUP are acted on
by a watcher thread instead (see :mod:`refmount.mount.signals` for why and
how); SIGUSR1 dumps every thread's stack through faulthandler, registered
here because it must work even when the interpreter is stuck.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import signal
import sys
import time
from dataclasses import fields
from typing import Any

from refmount.config.options import MountConfig
from refmount.errors import RefmountError
from refmount.fs.fuse_adapter import MAX_READ, FuseAdapter, run_fuse
from refmount.mount.assemble import ServedTree, open_tree
from refmount.mount.controlserver import ControlServer
from refmount.mount.logs import setup_logging
from refmount.mount.mountpoint import check_mountpoint
from refmount.mount.prometheus import MetricsServer
from refmount.mount.signals import SignalWatcher
from refmount.mount.systemd import announce_when_answering, notify_systemd
from refmount.urls import redact_url

log = logging.getLogger("refmount.daemon")

#: Kernel name/attribute cache bound for mounts whose tree changes on reload (collections).
RELOADABLE_TIMEOUT = 1.0

#: libfuse3's worker threads: enough for many readers waiting on GETs at once; 10 kept idle (libfuse2's habit).
MAX_THREADS = 16
MAX_IDLE_THREADS = 10


def fuse_options(config: MountConfig, *, reloadable: bool = False) -> dict[str, Any]:
    """libfuse3 options: read-only, immutable data cached by the kernel, our inode numbers.

    A collection of sets changes on reload, so there the kernel keeps names and
    attributes only briefly and keeps file data only while size and mtime are
    unchanged (auto_cache); data of an unchanged set stays in the page cache.
    libfuse3 refuses ``max_readahead`` (the readahead is raised at INIT instead,
    see :func:`raise_read_ahead`) and ``nonempty`` (mounting over a non-empty
    directory is its default; refmount's own check in
    :func:`~refmount.mount.mountpoint.check_mountpoint` still asks for the option).
    """
    timeout = min(config.attr_timeout, RELOADABLE_TIMEOUT) if reloadable else config.attr_timeout
    options: dict[str, Any] = {
        "ro": True,
        "fsname": "refmount:" + redact_url(config.source).replace(",", "%2C"),
        "subtype": "refmount",
        ("auto_cache" if reloadable else "kernel_cache"): True,
        "use_ino": True,
        "attr_timeout": timeout,
        "entry_timeout": timeout,
        "negative_timeout": timeout,
        "threads": config.threads,
    }
    if config.threads:
        options.update(max_threads=MAX_THREADS, max_idle_threads=MAX_IDLE_THREADS)
    if config.allow_other:
        options["allow_other"] = True
    if config.default_permissions:
        options["default_permissions"] = True
    return options


def raise_read_ahead(mountpoint: str, read_ahead: int = MAX_READ) -> None:
    """Raise the readahead of the mount at ``mountpoint`` to ``read_ahead`` bytes, so the kernel sends 1 MiB reads.

    Under libfuse3 the kernel splits reads at the mount's readahead (128 KiB by
    default) no matter what the filesystem offers; its knob is the mount's
    backing device in sysfs, named by the mount's device number. Called from
    INIT, when the mount exists but answers nothing yet (a ``stat`` of it
    would wait for this very INIT), so the number comes from the mount table;
    every file opened afterwards reads with the larger window. Without the
    right to write sysfs (a mount by an unprivileged user) reads stay at
    128 KiB: slower, never wrong.
    """
    try:
        device = _mount_device(_resolved_without_entering(mountpoint))
    except OSError as exc:
        device = None
        log.debug("cannot read /proc/self/mountinfo: %s", exc)
    if device is None:
        log.info("cannot find the mount at %s in /proc/self/mountinfo; reads stay at 128 KiB", mountpoint)
        return
    knob = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        with open(knob, "w") as out:
            out.write(str(read_ahead // 1024))
    except OSError as exc:
        log.info("cannot raise the readahead of %s (%s: %s); reads stay at 128 KiB", mountpoint, knob, exc.strerror)
    else:
        log.debug("readahead of %s raised to %d KiB (%s)", mountpoint, read_ahead // 1024, knob)


def _resolved_without_entering(mountpoint: str) -> str:
    """The canonical path of ``mountpoint``, resolving its parents only: a lookup of the mount itself would wait for INIT."""
    absolute = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def _mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the newest mount at ``mountpoint`` (a mount over an older one is listed after it)."""
    found = None
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields_ = line.split(" ", 5)
            if len(fields_) > 4 and _unescape_mount_path(fields_[4]) == mountpoint:
                found = fields_[2]
    return found


def _unescape_mount_path(field: str) -> str:
    r"""Undo the kernel's octal escapes in mountinfo paths (``\040`` for a space, and tab, newline, backslash)."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def serve(config: MountConfig, *, force: bool = False) -> int:
    """Mount in the foreground and block until unmounted; the exit code of ``refmount mount -f``."""
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

    def report() -> dict[str, Any]:
        """The figures ``refmount stats`` and the Prometheus endpoint show."""
        figures: dict[str, Any] = dict(tree.metrics.snapshot())
        figures.update(tree.router.status())
        figures.update(pid=os.getpid(), mountpoint=config.mountpoint, source=redact_url(config.source),
                       uptime_seconds=time.time() - started)
        return figures

    announce = announce_when_answering(config.mountpoint)

    def on_init() -> None:
        raise_read_ahead(config.mountpoint)
        announce()

    adapter = FuseAdapter(tree.router, tree.metrics, on_init=on_init,
                          stateless_open=not tree.router.collection, xattrs=config.xattrs)
    metrics_server = None
    if config.metrics_port is not None:
        try:
            metrics_server = MetricsServer(report, {"mountpoint": config.mountpoint}, config.metrics_address,
                                           config.metrics_port).start()
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", config.metrics_address, config.metrics_port, exc.strerror)
            tree.close()
            return 2
    control = ControlServer(config.mountpoint, report, reload=lambda: _reload(tree),
                            allow_other=config.allow_other).start()
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


def _reload(tree: ServedTree) -> tuple[bool, str]:
    """Reload the set(s), telling systemd while it runs; whether it worked and what happened, for ``refmount reload``."""
    notify_systemd("RELOADING=1\nSTATUS=reloading")
    try:
        result = tree.router.reload()
        return result.ok, result.describe()
    finally:
        notify_systemd("READY=1\nSTATUS=serving")


def describe_config(config: MountConfig) -> str:
    """The effective options for a debug line: storage option values are never shown."""
    parts = []
    for item in fields(config):
        value = getattr(config, item.name)
        if item.name == "storage_options":
            value = {protocol: sorted(options) for protocol, options in value.items()}
        elif item.name == "source":
            value = redact_url(value)
        parts.append(f"{item.name}={value}")
    return " ".join(parts)
