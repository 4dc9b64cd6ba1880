"""The daemon's end of the control channel: ``stats`` and ``reload`` answered by a small fixed pool.

Any local user can connect to an abstract socket, so the server spends as
little as possible on a peer before knowing who it is: the accept thread
reads the peer's credentials (SO_PEERCRED) right after accept and closes a
refused peer at once, with a one-line refusal if the socket takes it
without waiting. Admitted connections wait in a bounded queue for one of
:data:`WORKERS` threads; connections from root and the mount's owner go
first, and when too many others are waiting the newest are dropped. A peer
has :data:`REQUEST_DEADLINE` seconds to send its request, so idle
connections cannot hold the pool for long. Reload is a request too, allowed
to root and the owner only; it runs in the worker and answers with the
outcome, so no client ever signals a pid it learned from the channel.

If the channel's usual name is taken (another user squatting it, or an
older daemon of the same mountpoint still serving open files), the server
logs who holds it and listens on a random name instead, which it publishes
in its record (:mod:`refmount.mount.runfile`) for the clients.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from refmount.mount.control import (
    RELOAD_REQUEST,
    STATS_REQUEST,
    control_address,
    peer_credentials,
)
from refmount.mount.runfile import DaemonRecord, mount_digest, remove_record, write_record

log = logging.getLogger("refmount.control")

#: Threads answering requests; the channel never runs more than these plus the accept thread.
WORKERS = 4
#: Connections from users other than root and the owner that may wait for a worker; more are dropped.
WAITING_LIMIT = 16
#: Connections from root and the owner that may wait; more are dropped.
PRIVILEGED_WAITING_LIMIT = 64
#: Seconds a peer has to send its request.
REQUEST_DEADLINE = 2.0
#: The longest request line.
REQUEST_LIMIT = 64

_Job = tuple[int, int, socket.socket, bool]


class ControlServer:
    """Serve the control channel of one mount from an accept thread and :data:`WORKERS` worker threads."""

    def __init__(self, mountpoint: str, report: Callable[[], dict[str, Any]], *,
                 reload: Callable[[], tuple[bool, str]], allow_other: bool) -> None:
        self.mountpoint = mountpoint
        self._report = report
        self._reload = reload
        self._allow_other = allow_other
        self._listener: socket.socket | None = None
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._waiting = {True: 0, False: 0}
        self._waiting_lock = threading.Lock()
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._record_path: str | None = None
        self._refused_uids: set[int] = set()
        self.address: str | None = None

    def start(self) -> ControlServer:
        """Bind (under a random name if the usual one is taken), publish the record and serve."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = control_address(self.mountpoint)
        try:
            listener.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                log.warning("no control channel for %s: %s", self.mountpoint, exc.strerror)
                listener.close()
                return self
            holder = _describe_holder(address)
            address = f"\0refmount/{mount_digest(self.mountpoint)}-{secrets.token_hex(16)}"
            log.warning("the control channel name of %s is already taken (%s); listening on a random name "
                        "instead, published for clients in the daemon's record", self.mountpoint, holder)
            listener.bind(address)
        listener.listen(64)
        self._listener, self.address = listener, address
        self._record_path = write_record(self.mountpoint, DaemonRecord(os.getpid(), address[1:]))
        self._threads = [threading.Thread(target=self._accept, name="refmount-control", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"refmount-control-{n}", daemon=True)
                          for n in range(WORKERS)]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        remove_record(self._record_path, os.getpid())
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        except OSError:
            pass
        listener.close()
        for _ in range(WORKERS):
            self._jobs.put((-1, next(self._sequence), socket.socket(socket.AF_UNIX), False))
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and self._listener is listener:
            try:
                connection, _ = listener.accept()
            except OSError:
                if self._listener is not listener:
                    return
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            try:
                self._admit(connection)
            except OSError as exc:
                log.debug("control connection dropped: %s", exc)
                connection.close()

    def _admit(self, connection: socket.socket) -> None:
        """Check the peer before anything else; refused peers are closed at once, the rest queued or dropped."""
        _, uid, _ = peer_credentials(connection)
        privileged = uid in (0, os.geteuid())
        if not (privileged or self._allow_other):
            self._note_refusal(uid)
            _refuse(connection, "not allowed: the mount is private to its owner")
            return
        with self._waiting_lock:
            limit = PRIVILEGED_WAITING_LIMIT if privileged else WAITING_LIMIT
            if self._waiting[privileged] >= limit:
                connection.close()
                return
            self._waiting[privileged] += 1
        self._jobs.put((0 if privileged else 1, next(self._sequence), connection, privileged))

    def _note_refusal(self, uid: int) -> None:
        if uid not in self._refused_uids:  # one line per user, not one per connection
            self._refused_uids.add(uid)
            log.info("control channel refused to uid %d: the mount is not allow_other", uid)

    def _work(self) -> None:
        while True:
            priority, _, connection, privileged = self._jobs.get()
            if priority < 0:
                connection.close()
                return
            with self._waiting_lock:
                self._waiting[privileged] -= 1
            with connection:
                try:
                    self._answer(connection, privileged)
                except OSError as exc:
                    log.debug("control request dropped: %s", exc)
                except Exception as exc:  # noqa: BLE001 - one bad request must not end a worker
                    log.error("control request failed: %s: %s", type(exc).__name__, exc)

    def _answer(self, connection: socket.socket, privileged: bool) -> None:
        request = _read_request(connection, time.monotonic() + REQUEST_DEADLINE)
        answer: dict[str, Any]
        if request == STATS_REQUEST:
            answer = self._report()
        elif request == RELOAD_REQUEST:
            if privileged:
                ok, message = self._reload()
                answer = {"ok": ok, "message": message}
            else:
                answer = {"error": "not allowed: only root and the user that mounted it may reload a mount"}
        else:
            answer = {"error": "unknown request"}
        connection.settimeout(REQUEST_DEADLINE)
        connection.sendall(json.dumps(answer, sort_keys=True).encode())


def _read_request(connection: socket.socket, deadline: float) -> bytes:
    """One request line, read within ``deadline`` (a monotonic time); whatever arrived by then otherwise."""
    data = b""
    while not data.endswith(b"\n") and len(data) < REQUEST_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection.settimeout(remaining)
        try:
            chunk = connection.recv(REQUEST_LIMIT - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _refuse(connection: socket.socket, reason: str) -> None:
    """Say why without waiting for the peer, then close (unread data first, so the refusal is not reset)."""
    connection.setblocking(False)
    try:
        connection.recv(REQUEST_LIMIT)
    except OSError:
        pass
    try:
        connection.send(json.dumps({"error": reason}).encode())
    except OSError:
        pass
    connection.close()


def _describe_holder(address: str) -> str:
    """Who listens on ``address``, as the kernel says (pid and uid), for the log line about a taken name."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            probe.connect(address)
            pid, uid, _ = peer_credentials(probe)
    except OSError as exc:
        return f"holder unknown: {exc.strerror or exc}"
    return f"by pid {pid}, uid {uid}"
