"""``mount.refmount``: the mount(8) helper, so fstab and ``mount -t ...`` work without glue.

How mount(8) reaches refmount, for the two spellings of the type:

* ``-t refmount``: mount(8) runs ``/sbin/mount.refmount SOURCE MOUNTPOINT
  [-sfnv] [-o OPTIONS] [-t TYPE]``.
* ``-t fuse.refmount`` (the usual spelling for FUSE filesystems):
  mount(8) first looks for ``/sbin/mount.fuse.refmount``; without it, it
  runs ``mount.fuse`` (fuse3's ``mount.fuse3``), which drops the options
  meant for mount(8) (``_netdev``, ``nofail``, ``x-systemd.*``...), adds
  ``dev,suid`` and runs ``refmount SOURCE MOUNTPOINT -o OPTIONS`` through
  ``/bin/sh`` with the *default* PATH (mount(8) clears PATH and HOME), so
  ``refmount`` must be in /usr/local/bin, /usr/bin or alike. ``refmount``
  recognises that call form and hands it to :func:`refmount.cli.main.mount_helper_main`.

A Python installation in a virtualenv or pyenv is not on that PATH, so
:func:`install_helpers` (``mount.refmount --install``) writes
``/sbin/mount.refmount`` as a two-line script running this interpreter, and
links ``/sbin/mount.fuse.refmount`` to it. It is idempotent: run it again
after reinstalling, nothing changes when nothing has to.

Either way the helper translates its arguments into ``refmount mount
SOURCE MOUNTPOINT -o OPTIONS`` (background mode): it returns once the mount
answers, or fails with the daemon's error, which is what mount(8) expects.
``config=/etc/refmount/NAME.toml`` in the options reads a config file, so an
fstab line can be ``none /mnt/era5 fuse.refmount config=/etc/refmount/era5.toml 0 0``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from refmount.config.file import load_config

HELPER_NAMES = ("mount.refmount", "mount.fuse.refmount")
USAGE = "usage: mount.refmount SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]"
HELP = f"""{USAGE}
       mount.refmount --install [DIRECTORY]

The mount(8) helper: fstab lines and `mount -t fuse.refmount SOURCE MOUNTPOINT -o OPTIONS` run it.
SOURCE is a reference set as `refmount mount` takes it (JSON or Parquet, path or URL, plain or
compressed, or a directory/prefix of sets); `none` with -o config=FILE takes it from a TOML file.
OPTIONS are the mount options of `refmount mount --help` as name=value (cache_size=4G,view=decoded),
PROTOCOL.NAME=VALUE for a protocol's fsspec filesystem (s3.requester_pays=true), and config=FILE.
--install writes DIRECTORY/mount.refmount (default /sbin) and links mount.fuse.refmount to it."""


def translate(argv: Sequence[str]) -> tuple[list[str] | None, bool]:
    """mount(8) helper arguments -> ``refmount`` arguments, and whether this is a fake mount (-f)."""
    positional: list[str] = []
    options: list[str] = []
    fake = False
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "-o" and index + 1 < len(items):
            options.append(items[index + 1])
            index += 2
            continue
        if item.startswith("-o") and len(item) > 2:
            options.append(item[2:])
        elif item in ("-t", "-N") and index + 1 < len(items):
            index += 2  # the type (we know it) and a namespace (mount(8) has entered it already)
            continue
        elif item.startswith("-") and len(item) > 1 and all(flag in "sfnvwr" for flag in item[1:]):
            fake = fake or "f" in item[1:]  # -w/-r (and the rw mount(8) adds) change nothing: always read-only
        else:
            positional.append(item)
        index += 1
    if len(positional) != 2:
        return None, fake
    source, mountpoint = positional
    command = ["mount"]
    kept: list[str] = []
    config_path = None
    for text in options:
        for option in text.split(","):
            key = option.partition("=")[0].strip()
            if key == "config":
                config_path = option.partition("=")[2]
            elif option.strip():
                kept.append(option.strip())
    if source in ("none", "refmount", "") and config_path is not None:
        source = load_config(config_path).source or source  # the fstab source field is a placeholder
    command += [source, mountpoint]
    if config_path is not None:
        command += ["--config", config_path]
    if kept:
        command += ["-o", ",".join(kept)]
    return command, fake


def helper_script(python: str | None = None) -> str:
    """The text of /sbin/mount.refmount for this installation's interpreter."""
    python = python or os.path.realpath(sys.executable)
    return (
        "#!/bin/sh\n"
        "# mount(8) helper for -t refmount and -t fuse.refmount, written by `mount.refmount --install`.\n"
        f'exec {python} -m refmount.cli.mount_helper "$@"\n'
    )


def install_helpers(directory: str = "/sbin", python: str | None = None) -> list[str]:
    """Write ``DIRECTORY/mount.refmount`` and link ``mount.fuse.refmount`` to it; idempotent."""
    report: list[str] = []
    script_path = os.path.join(directory, HELPER_NAMES[0])
    text = helper_script(python)
    try:
        with open(script_path, encoding="utf-8") as handle:
            current = handle.read()
    except OSError:
        current = None
    if current != text:
        temporary = f"{script_path}.tmp{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o755)
        os.replace(temporary, script_path)  # atomic: a concurrent mount sees the old or the new file
        report.append(f"wrote {script_path}")
    else:
        report.append(f"{script_path} is up to date")
    link_path = os.path.join(directory, HELPER_NAMES[1])
    if os.path.islink(link_path) and os.readlink(link_path) == HELPER_NAMES[0]:
        report.append(f"{link_path} is up to date")
    else:
        temporary = f"{link_path}.tmp{os.getpid()}"
        os.symlink(HELPER_NAMES[0], temporary)
        os.replace(temporary, link_path)
        report.append(f"linked {link_path} -> {HELPER_NAMES[0]}")
    return report

