"""Keep credentials out of every refmount process's command line and environment block.

Anyone on the machine can read ``/proc/PID/cmdline`` (``ps``). The owner and
root can also read ``/proc/PID/environ``, which shows the environment the
process was *started* with: removing a variable later (``os.environ.pop``)
does not change it. Yet an operator may write ``-o s3.secret=...`` (fstab
lines leave no other spelling), a source URL may carry ``user:password@``
or a presigned query string, and systemd's ``EnvironmentFile=`` may set
:data:`SECRET_ENV`. So, before a ``refmount mount`` does anything slow, the
secret parts are collected into a :class:`Handover` and travel on through
an inherited pipe whose descriptor number (not a secret) is in
:data:`HANDOVER_FD_ENV`; the receiver reads the pipe and closes it:

* a process that was started with secrets in its command line or
  environment block re-executes itself without them (``execve`` keeps the
  PID, so systemd's ``Type=notify`` and ``MAINPID`` still hold, and a
  background launcher waiting for its mount no longer shows them);
* a background launcher starts the detached daemon with the cleaned
  arguments and the pipe, so the daemon's command line and environment
  never hold a secret at all.

What stays visible, because another program owns it: the first moments of
the process the user started (until it re-executes, before any slow work),
the user's shell or ``mount(8)``/``mount.fuse`` command lines (which wait
for the mount), and ``/etc/fstab`` itself; ``config=FILE`` with a 0600 file
avoids all of them.

Which ``-o`` items count as credentials: a storage option (``PROTOCOL.NAME``)
whose NAME contains one of :data:`SECRET_WORDS` (``s3.key``, ``s3.secret``,
``s3.token``, ``gcs.token``, ``az.account_key``, ``az.sas_token``, ...). A
source counts when :func:`refmount.urls.redact_url` would change it
(userinfo or a query string): ps then shows the redacted form.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from refmount.errors import ConfigError
from refmount.urls import redact_url

#: The environment variable an operator may use for secret-bearing ``-o`` items (comma-separated, as in ``-o``).
SECRET_ENV = "REFMOUNT_SECRET_OPTIONS"

#: The environment variable naming the inherited pipe descriptor a :class:`Handover` arrives on.
HANDOVER_FD_ENV = "REFMOUNT_SECRET_FD"

#: Words that make a storage option a credential; ``key`` also covers ``account_key`` and ``key_file``.
SECRET_WORDS = ("secret", "password", "passwd", "token", "key", "credential", "sas", "signature", "auth")

#: Programs that are refmount itself (console scripts and mount helpers); see :func:`_is_refmount_process`.
_PROGRAM_NAMES = ("refmount", "mount.refmount", "mount.fuse.refmount")

#: A pipe holds this much without a reader on every Linux; the hand-over is written before its reader exists.
_PIPE_CAPACITY = 65536

_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Handover:
    """The secret parts of one mount command: ``-o`` items (comma-separated) and a credential-bearing source."""

    options: str = ""
    source: str | None = None

    def __bool__(self) -> bool:
        return bool(self.options or self.source)

    def merged(self, options: str = "", source: str | None = None) -> Handover:
        """This hand-over plus more items; a source already handed over wins (the command line shows a placeholder)."""
        joined = ",".join(part for part in (self.options, options) if part)
        return Handover(joined, self.source or source)


def is_secret_item(item: str) -> bool:
    """Whether one ``-o`` item (``s3.secret=X``) carries a credential: a storage option with a telling name."""
    key = item.partition("=")[0].strip().replace("-", "_")
    if "." not in key:
        return False
    return bool(_SECRET_NAME.search(key.partition(".")[2]))


def is_secret_source(source: str | None) -> bool:
    """Whether a source URL carries credentials (userinfo or a query string) that ps must not show."""
    return bool(source) and redact_url(str(source)) != source


def _split_items(text: str) -> tuple[list[str], list[str]]:
    kept: list[str] = []
    secret: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            (secret if is_secret_item(item) else kept).append(item)
    return kept, secret


def split_argv(argv: Sequence[str]) -> tuple[list[str], str]:
    """``refmount`` arguments -> (the same without secret ``-o`` items, those items joined by commas).

    Handles ``-o TEXT`` and ``-oTEXT``; an ``-o`` left empty is dropped.
    """
    cleaned: list[str] = []
    secrets: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "-o" and index + 1 < len(items):
            text, index = items[index + 1], index + 2
        elif item.startswith("-o") and len(item) > 2:
            text, index = item[2:], index + 1
        elif _is_secret_storage_flag(items, index):
            # ``--storage-option NAME=X`` (scan's spelling): the command turns it into its ``-o`` form before it
            # hands anything over, so an image of the original command line only has to leave it out.
            index += 1 if item.startswith("--storage-option=") else 2
            continue
        else:
            if item == "--":
                cleaned.extend(items[index:])
                break
            cleaned.append(item)
            index += 1
            continue
        kept, secret = _split_items(text)
        secrets.extend(secret)
        if kept:
            cleaned += ["-o", ",".join(kept)]
    return cleaned, ",".join(secrets)


def _is_secret_storage_flag(items: Sequence[str], index: int) -> bool:
    """Whether ``items[index]`` starts a ``--storage-option [PROTOCOL.]NAME=VALUE`` whose NAME is a credential."""
    item = items[index]
    if item.startswith("--storage-option="):
        text = item.partition("=")[2]
    elif item == "--storage-option" and index + 1 < len(items):
        text = items[index + 1]
    else:
        return False
    return bool(_SECRET_NAME.search(text.partition("=")[0].rpartition(".")[2]))


def clean_argv(argv: Sequence[str], source: str | None) -> tuple[list[str], str]:
    """:func:`split_argv`, and a credential-bearing ``source`` replaced by its redacted form wherever it appears."""
    cleaned, secrets = split_argv(argv)
    if is_secret_source(source):
        assert source is not None
        cleaned = [redact_url(source) if item == source else item for item in cleaned]
    return cleaned, secrets


def take_from_environment(environ: MutableMapping[str, str] | None = None) -> str:
    """The secret ``-o`` items an operator put in :data:`SECRET_ENV`, removed so children do not inherit them."""
    environ = os.environ if environ is None else environ
    return environ.pop(SECRET_ENV, "")


def take_handover(environ: MutableMapping[str, str] | None = None) -> Handover:
    """What this process was handed: the pipe named by :data:`HANDOVER_FD_ENV` (read, then closed) and :data:`SECRET_ENV`.

    Both variables are removed from ``environ``. A missing or unreadable pipe is a configuration error:
    mounting without the credentials would fail later with a less telling message.
    """
    environ = os.environ if environ is None else environ
    received = Handover()
    fd_text = environ.pop(HANDOVER_FD_ENV, "")
    if fd_text:
        received = _read_pipe(fd_text)
    return received.merged(take_from_environment(environ))


def _read_pipe(fd_text: str) -> Handover:
    try:
        fd = int(fd_text)
        with os.fdopen(fd, "rb") as pipe:
            payload = json.loads(pipe.read().decode("utf-8"))
        return Handover(str(payload.get("options") or ""), payload.get("source") or None)
    except (ValueError, OSError, AttributeError) as exc:
        raise ConfigError(f"cannot read the credentials handed over on descriptor {fd_text}: {exc}") from None


def write_handover(handover: Handover) -> int:
    """A pipe holding ``handover``, its write end closed: returns the read end, inheritable by a child or ``execve``."""
    payload = json.dumps({"options": handover.options, "source": handover.source}).encode("utf-8")
    if len(payload) > _PIPE_CAPACITY:
        raise ConfigError(f"credentials too long to hand over ({len(payload)} bytes, at most {_PIPE_CAPACITY})")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, payload)  # fits in the pipe's buffer: no reader needed yet
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def handover_environment(fd: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process receiving the hand-over on ``fd``: no :data:`SECRET_ENV`, the descriptor number."""
    env = {name: value for name, value in (os.environ if base is None else base).items() if name != SECRET_ENV}
    env[HANDOVER_FD_ENV] = str(fd)
    return env


def _is_refmount_process() -> bool:
    """Whether this process was started as refmount (not, say, a test runner calling ``main()``)."""
    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return os.path.basename(program) in _PROGRAM_NAMES or program.startswith(_PACKAGE_DIR + os.sep)


def _started_with_secret_environment() -> bool:
    """Whether the environment block this process was started with (``/proc/self/environ``) holds :data:`SECRET_ENV`."""
    try:
        with open("/proc/self/environ", "rb") as block:
            return any(entry.startswith(SECRET_ENV.encode() + b"=") for entry in block.read().split(b"\0"))
    except OSError:
        return False


def reexec_without_secrets(handover: Handover) -> None:
    """Replace this process by itself without ``handover`` in its command line or environment block.

    Re-runs the same interpreter command (``sys.orig_argv``: ``-m refmount``, the ``refmount`` script, the
    mount helper) with secret ``-o`` items dropped and the source redacted, the hand-over on a pipe.
    Returns when there is nothing to hide, or when this is not a refmount process.
    """
    if not handover or not _is_refmount_process():
        return
    own = list(sys.orig_argv[1:])
    cleaned, _ = clean_argv(own, handover.source)
    if cleaned == own and not _started_with_secret_environment():
        return
    fd = write_handover(handover)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *cleaned], handover_environment(fd))
