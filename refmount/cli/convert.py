"""``refmount convert``: kerchunk JSON <-> fsspec's Parquet reference layout.

The command only: it opens the source with the one reader entry point and
hands its references to the writers of :mod:`refmount.refs.parquet.write`
and :mod:`refmount.refs.kerchunk.write`, which say what fits each format.
Writing JSON streams one key at a time, so a Parquet set of any size
converts in constant memory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from refmount.cli.storage import add_storage_arguments, command_storage_options
from refmount.errors import ConfigError, RefmountError
from refmount.refs.kerchunk.write import write_json
from refmount.refs.open import open_reference_set
from refmount.refs.parquet.layout import DEFAULT_RECORD_SIZE
from refmount.refs.parquet.write import write_parquet
from refmount.store.options import protocol_options

log = logging.getLogger("refmount.convert")

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="reference set: JSON file or Parquet directory (path or URL)")
    parser.add_argument("target", metavar="TARGET", help="output: a directory for Parquet, a file for JSON ('-' = stdout)")
    parser.add_argument(
        "--to", choices=("parquet", "json"), default=None,
        help="output format (default: the other one: JSON becomes Parquet, Parquet becomes JSON)",
    )
    parser.add_argument(
        "--record-size", type=int, default=DEFAULT_RECORD_SIZE, metavar="N",
        help=f"references per Parquet record file (default {DEFAULT_RECORD_SIZE}, as fsspec)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace TARGET if it exists")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Convert; exit 0 on success, 2 on bad input."""

    started = time.monotonic()
    try:
        options = command_storage_options(args.storage_option, [args.source, args.target], args.endpoint_url, args.anon)
        info, namespace = open_reference_set(args.source, protocol_options(args.source, options))
        target_format = args.to or ("json" if info.format == "parquet" else "parquet")
        if target_format == "parquet":
            if args.target == "-":
                raise ConfigError("a Parquet set is a directory: give a directory TARGET, not '-'")
            counts = write_parquet(
                namespace.iter_references, args.target, record_size=args.record_size,
                storage_options=protocol_options(args.target, options), overwrite=args.overwrite,
            )
            summary = f"{counts['keys']} keys, {counts['record_files']} record files"
        else:
            keys = write_json(namespace.iter_references(), args.target,
                              storage_options=protocol_options(args.target, options), overwrite=args.overwrite)
            summary = f"{keys} keys"
    except RefmountError as exc:
        print(f"refmount convert: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"refmount convert: {exc}", file=sys.stderr)
        return 2
    print(f"refmount convert: {args.source} ({info.format}) -> {args.target} ({target_format}): {summary} "
          f"in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0
