"""Keep credentials out of the daemon's command line.

Anyone on the machine can read ``/proc/PID/cmdline`` (``ps``), while
``/proc/PID/environ`` is readable only by the process's owner and root. An
operator may still write ``-o s3.secret=...`` (fstab lines leave no other
spelling), so before the daemon runs for long, the storage options whose
names look like credentials are taken out of its arguments and handed over
in the environment variable :data:`SECRET_ENV`, in the ``-o`` syntax:

* foreground (``refmount mount -f``, systemd): the process re-executes
  itself with the cleaned arguments (``execve`` keeps the PID, so systemd's
  ``Type=notify`` and ``MAINPID`` still hold);
* background (``refmount mount``, ``mount.refmount``): the detached daemon
  is started with the cleaned arguments and the variable in its environment.

The daemon reads the variable once and removes it from its environment, so
the programs it runs (``fusermount``) do not inherit it. Operators can also
set the variable themselves (systemd ``EnvironmentFile=``).

Which names count as credentials: a storage option (``PROTOCOL.NAME``)
whose NAME contains one of :data:`SECRET_WORDS` (``s3.key``, ``s3.secret``,
``s3.token``, ``gcs.token``, ``az.account_key``, ``az.sas_token``, ...).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence

#: The environment variable carrying secret-bearing ``-o`` items (comma-separated, as in ``-o``).
SECRET_ENV = "REFMOUNT_SECRET_OPTIONS"

#: Words that make a storage option a credential; ``key`` also covers ``account_key`` and ``key_file``.
SECRET_WORDS = ("secret", "password", "passwd", "token", "key", "credential", "sas", "signature", "auth")

_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)


def is_secret_item(item: str) -> bool:
    """Whether one ``-o`` item (``s3.secret=X``) carries a credential: a storage option with a telling name."""
    key = item.partition("=")[0].strip().replace("-", "_")
    if "." not in key:
        return False
    return bool(_SECRET_NAME.search(key.partition(".")[2]))


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


def child_environment(secrets: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a daemon that must receive ``secrets`` (merged with any already passed on)."""
    env = dict(os.environ if base is None else base)
    if secrets:
        env[SECRET_ENV] = ",".join(part for part in (env.get(SECRET_ENV, ""), secrets) if part)
    return env


def take_from_environment(environ: MutableMapping[str, str] | None = None) -> str:
    """The secret ``-o`` items handed over in the environment, removed from it so children do not inherit them."""
    environ = os.environ if environ is None else environ
    return environ.pop(SECRET_ENV, "")


def reexec_without_secrets(argv: Sequence[str]) -> None:
    """Replace this process by ``python -m refmount ARGV`` with the secrets moved to the environment.

    Returns only when ``argv`` holds no secret (nothing to do).
    """
    cleaned, secrets = split_argv(argv)
    if not secrets:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "refmount", *cleaned], child_environment(secrets))
