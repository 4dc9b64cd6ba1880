"""The ``refmount`` command: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from refmount import __version__
from refmount.cli.convert import add_arguments as add_convert_arguments
from refmount.cli.convert import run as run_convert
from refmount.cli.fstab import HELP, USAGE, install_helpers, translate
from refmount.cli.inspect import run_inspect
from refmount.cli.scan import add_arguments as add_scan_arguments
from refmount.cli.scan import run as run_scan
from refmount.cli.secretargs import (
    clean_argv,
    handover_environment,
    is_secret_source,
    reexec_without_secrets,
    split_argv,
    take_from_environment,
    take_handover,
    write_handover,
)
from refmount.cli.storage import (
    STORAGE_OPTION,
    STORAGE_OPTION_HELP,
    STORAGE_OPTION_METAVAR,
    storage_options_as_mount_options,
)
from refmount.config.file import load_config
from refmount.config.options import (
    OPTIONS,
    MountConfig,
    Option,
    parse_mount_options,
    parse_size,
    parse_value,
)
from refmount.devtools.demo import run_demo
from refmount.errors import ConfigError, RefmountError
from refmount.mount import background, control, mountpoint, serve


def _add_mount_options(parser: argparse.ArgumentParser, *, only_inspect: bool = False) -> None:
    """One flag per entry of the option table (with ``only_inspect``, per entry inspect takes), -o and --storage-option."""
    if only_inspect:
        group = parser.add_argument_group(
            "options that change how the set is loaded or summarised (also accepted as -o name=value)")
    else:
        group = parser.add_argument_group("mount options (also accepted as -o name=value)")
    for option in OPTIONS:
        if only_inspect and not option.inspect:
            continue
        flag = "--" + option.name.replace("_", "-")
        default = "" if option.default in (None, ()) else f" (default: {_show_default(option)})"
        if option.is_flag:
            group.add_argument(flag, dest=option.name, action="store_true", default=None, help=option.help + default)
            if option.default is True:
                group.add_argument(
                    "--no-" + option.name.replace("_", "-"), dest=option.name, action="store_false",
                    help=f"turn {option.name} off",
                )
        else:
            group.add_argument(flag, dest=option.name, metavar=option.metavar, default=None, help=option.help + default)
    o_help = ("comma-separated options as mount(8) takes them, e.g. -o cache_size=4G,endpoint_url=http://rgw:8080; "
              "PROTOCOL.NAME=VALUE passes NAME to that protocol's fsspec filesystem (e.g. s3.requester_pays=true)")
    if only_inspect:
        o_help = ("comma-separated mount options, e.g. the options of an fstab line pasted as they are: every mount "
                  "option is accepted and checked, and those not listed above (uid, cache_size, allow_other, ...) "
                  "change nothing here (config=FILE: give --config FILE); PROTOCOL.NAME=VALUE passes NAME to that "
                  "protocol's fsspec filesystem")
    parser.add_argument("-o", dest="mount_options", action="append", default=[], metavar="OPTS", help=o_help)
    parser.add_argument(STORAGE_OPTION, dest="storage_option", action="append", default=[],
                        metavar=STORAGE_OPTION_METAVAR, help=STORAGE_OPTION_HELP)


def _show_default(option: Option) -> str:
    value = option.default
    if option.parse is parse_size and isinstance(value, int):
        for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if option.name == "umask":
        return f"{value:03o}"
    return str(value)


#: What REFS may be, for the help of every command that takes one.
REFS_FORMS = (
    "REFS is a kerchunk JSON file (v0 or v1; plain or compressed: .gz, .bz2, .xz, .zst), a Parquet reference "
    "directory (fsspec's layout) or an Icechunk repository (branch main, or -o ref=), as a local path or an fsspec "
    "URL (s3://, gs://, https://, ...); or a directory or URL prefix holding many such sets, each mounted as a "
    "subdirectory."
)
REFS_HELP = ("reference set: JSON file or Parquet directory (path or URL, plain or compressed), Icechunk repository; "
             "or a directory/prefix of sets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refmount",
        description="Mount kerchunk/fsspec reference sets (virtual Zarr datasets on object storage) "
        "as a read-only POSIX directory tree.",
    )
    parser.add_argument("--version", action="version", version=f"refmount {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount", help="mount a reference set",
        description="Mount the reference set REFS at MOUNTPOINT. Returns once the mount answers, unless "
        "--foreground. " + REFS_FORMS,
    )
    mount.add_argument("source", metavar="REFS", nargs="?", help=REFS_HELP)
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an existing empty directory")
    mount.add_argument(
        "--config", metavar="FILE",
        help="TOML file with source, mountpoint and any option below (flags and -o override it)",
    )
    mount.add_argument("-f", "--foreground", action="store_true", help="stay attached (for systemd and debugging)")
    mount.add_argument("--force", action="store_true", help="clean a stale mount left by a daemon that died")
    _add_mount_options(mount)

    umount = commands.add_parser(
        "umount", help="unmount a refmount tree (also a stale one)",
        description="Unmount the refmount tree at MOUNTPOINT, also one whose daemon died (a stale mount).",
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tree is mounted")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")

    stats = commands.add_parser(
        "stats", help="print live figures of a running mount",
        description="Reads, bytes, GETs, cache, errors, latency and open handles of the mount at MOUNTPOINT.",
    )
    stats.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tree is mounted")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")

    reload = commands.add_parser(
        "reload", help="re-read the reference set(s) of a running mount (what SIGHUP does)",
        description="New sets appear, removed sets disappear, changed sets are swapped; open files keep their data.",
    )
    reload.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the tree is mounted (by refmount mount)")
    reload.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reload to finish")

    inspect = commands.add_parser(
        "inspect", help="load and check a reference set without mounting it",
        description="Validate a reference set and summarise it: keys, arrays, codecs, objects and bytes referenced, "
        "and what each view shows. It loads the set as a mount with the same options would; it takes the options "
        "that change that or the summary as flags, and any mount option in -o. Exit 1 when something would not "
        "read in the view and Zarr format given. " + REFS_FORMS,
    )
    inspect.add_argument("source", metavar="REFS", nargs="?", help=REFS_HELP)
    inspect.add_argument("--config", metavar="FILE",
                         help="a mount's TOML file: its source (unless REFS is given) and options (flags and -o override it)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_mount_options(inspect, only_inspect=True)

    scan = commands.add_parser(
        "scan", help="make reference sets from HDF5/NetCDF4 files",
        description="Scan HDF5 and NetCDF4 files (paths, globs or fsspec URLs) into kerchunk JSON reference sets.",
    )
    add_scan_arguments(scan)

    convert = commands.add_parser(
        "convert", help="convert reference sets between kerchunk JSON and fsspec's Parquet layout",
        description="Read a reference set (JSON file or Parquet directory, path or URL) and write it in the "
        "other format. Parquet output is read by fsspec's ReferenceFileSystem and by refmount mount.",
    )
    add_convert_arguments(convert)

    demo = commands.add_parser(
        "demo", help="run the whole path on a local object store: scan, mount, list and read",
        description="Start a throwaway local S3 server (SeaweedFS), write a small NetCDF4 file to it, "
        "scan it, mount the references and read them with POSIX tools and xarray.",
    )
    demo.add_argument("--workdir", help="keep files here instead of a temporary directory")
    return parser


def mount_config(args: argparse.Namespace) -> MountConfig:
    """Merge the config file, -o options and flags (each overriding the one before) into a MountConfig."""
    values: dict[str, Any] = {}
    storage: dict[str, dict[str, Any]] = {}
    source, mountpoint = args.source, getattr(args, "mountpoint", None)
    if getattr(args, "config", None):
        file_config = load_config(args.config)
        values.update(file_config.values)
        storage = {protocol: dict(options) for protocol, options in file_config.storage_options.items()}
        source = source or file_config.source
        mountpoint = mountpoint or file_config.mountpoint
    if not source:
        raise ConfigError("no reference set given (REFS argument or 'source' in --config)")

    for text in [*args.mount_options, take_from_environment()]:
        parsed, per_protocol = parse_mount_options(text)
        values.update(parsed)
        for protocol, options in per_protocol.items():
            storage.setdefault(protocol, {}).update(options)
    for option in OPTIONS:
        raw = getattr(args, option.name, None)
        if raw is not None:
            values[option.name] = parse_value(option.name, raw)
    if args.command == "mount" and not mountpoint:
        raise ConfigError("no mountpoint given (MOUNTPOINT argument or 'mountpoint' in --config)")
    return MountConfig.build(source, mountpoint or ".", values, storage)


def _run_mount(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Mount in the foreground (the daemon) or start a detached daemon, credentials never in ps (see secretargs)."""
    received = take_handover()  # from a launcher or an earlier image of this process; removed from os.environ
    _, argv_secrets = split_argv(argv)
    source = args.source if is_secret_source(args.source) else None
    secrets = received.merged(argv_secrets, source)
    reexec_without_secrets(secrets)  # returns at once when this process shows no secret
    if received.source:
        args.source = received.source  # the command line holds only its redacted form
    if received.options:
        args.mount_options.append(received.options)
    if args.foreground:
        return serve.serve(mount_config(args), force=args.force)
    forwarded, _ = clean_argv([arg for arg in argv if arg not in ("-f", "--foreground")], args.source)
    config = mount_config(args)
    if not secrets:
        return background.start_background(forwarded, config.mountpoint, config.log_file)
    fd = write_handover(secrets)
    try:
        return background.start_background(forwarded, config.mountpoint, config.log_file,
                                           env=handover_environment(fd))
    finally:
        os.close(fd)


def _run_umount(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.mountpoint)
    if mountpoint.mount_entry(path) is None:
        raise ConfigError(f"{path} is not mounted" if os.path.isdir(path) else f"{path}: no such directory")
    mountpoint.unmount(path, lazy=args.lazy)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in _subcommands(parser):
        # `refmount SOURCE MOUNTPOINT -o OPTS`: how mount.fuse runs the helper of type fuse.refmount.
        return mount_helper_main(argv, prog="refmount")
    args = parser.parse_args(argv)
    try:
        if args.command in ("mount", "inspect") and args.storage_option:
            # mount and inspect read it as -o PROTOCOL.KEY=VALUE (credentials then leave a mount's command line);
            # scan and convert parse the same items themselves (refmount.cli.storage)
            argv = storage_options_as_mount_options(argv, args.source)
            args = parser.parse_args(argv)
        if args.command == "mount":
            return _run_mount(args, argv)
        if args.command == "umount":
            return _run_umount(args)
        if args.command in ("stats", "reload"):
            if args.command == "stats":
                return control.run_stats(args.mountpoint, as_json=args.json)
            return control.run_reload(args.mountpoint, timeout=args.timeout)
        if args.command == "inspect":
            return run_inspect(mount_config(args), as_json=args.json)
        if args.command == "scan":
            return run_scan(args)
        if args.command == "convert":
            return run_convert(args)
        if args.command == "demo":
            return run_demo(args.workdir)
    except RefmountError as exc:
        print(f"refmount {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `refmount stats | head`: the reader left; say nothing more (stdout is gone).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 2


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def mount_helper_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``mount.refmount SOURCE MOUNTPOINT [-o OPTIONS]``: what mount(8) and fstab run (see refmount.cli.fstab)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or "mount.refmount"
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    if argv[:1] == ["--install"]:
        directory = argv[1] if len(argv) > 1 else "/sbin"
        for line in install_helpers(directory):
            print(line)
        return 0
    try:
        command, fake = translate(argv)
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable config file: one line for mount(8)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if command is None:
        print(f"{prog}: need SOURCE and MOUNTPOINT\n{USAGE}", file=sys.stderr)
        return 1  # mount(8): incorrect invocation
    if fake:
        return 0

    code = main(command)
    return 0 if code == 0 else 32  # mount(8): mount failure


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``, skipping the interpreter's teardown once ``icechunk`` is loaded.

    icechunk's native runtime keeps threads of its own, and tearing the
    interpreter down under them aborts the process now and then after its
    work is done (SIGABRT in about one ``refmount inspect`` of a repository
    in ten here): the exit status would say a refusal or a clean unmount
    crashed. Output and log handlers are flushed first; nothing else that
    refmount needs runs at interpreter exit.
    """
    if "icechunk" not in sys.modules:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def console_main() -> NoReturn:
    """The ``refmount`` command (and ``python -m refmount``)."""
    exit_process(main())


def console_mount_helper() -> NoReturn:
    """The ``mount.refmount`` command."""
    exit_process(mount_helper_main())
