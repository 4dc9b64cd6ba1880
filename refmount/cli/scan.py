"""The ``refmount scan`` subcommand: argument definitions and the runner.

Exit codes: 0 all files scanned; 1 ``--strict`` and something could not be
represented; 2 bad input (missing file, not HDF5, bad option). Messages go
to stderr and name the file or option; no tracebacks for expected errors.
Storage options are spelled as for every command (:mod:`refmount.cli.storage`):
each source and the output get those of their own protocol. Credentials
are best left to the environment or AWS profiles (fsspec/s3fs read them):
arguments show in ps while the scan runs.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
from typing import Any, TextIO

import fsspec

from refmount.cli.storage import Table, add_storage_arguments, command_storage_options
from refmount.errors import ConfigError, RefmountError
from refmount.scan.concat import MISMATCH_POLICIES, ConcatError, ConcatResult, FileScan, concat_scans
from refmount.scan.hdf5 import (
    DEFAULT_DECODED_INLINE_LIMIT,
    DEFAULT_INLINE_THRESHOLD,
    ScanReport,
    StrictScanError,
    scan_hdf5,
)
from refmount.scan.many import ConcatScanOptions, FileOutcome, read_unaligned, scan_many
from refmount.scan.output import (
    BadURLMap,
    apply_url_map,
    parse_url_map,
    write_json,
    write_parquet_set,
)
from refmount.scan.progress import Progress
from refmount.scan.sources import SourceError, canonical_url, expand_sources
from refmount.store.options import protocol_options

EXIT_OK = 0
EXIT_STRICT = 1
EXIT_BAD_INPUT = 2
#: Default number of files scanned at once with --concat-dim: bounded, as each worker holds a file open.
DEFAULT_JOBS = min(8, os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the scan subcommand's arguments to ``parser``."""
    parser.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="HDF5/NetCDF4 files: local paths, globs, or fsspec URLs (s3://..., https://...); "
        "globs are expanded locally or through the remote filesystem",
    )
    parser.add_argument(
        "-o", "--output", default="-",
        help="output file, or directory (existing, ending in '/', or when there are several "
        "sources) receiving one <name>.json per source; '-' (default) writes to stdout",
    )
    parser.add_argument(
        "--inline-threshold", type=int, default=DEFAULT_INLINE_THRESHOLD, metavar="N",
        help=f"chunks stored in fewer than N bytes are copied into the reference set "
        f"(default {DEFAULT_INLINE_THRESHOLD}, as kerchunk); 0 disables inlining",
    )
    parser.add_argument(
        "--decoded-inline-limit", type=int, default=DEFAULT_DECODED_INLINE_LIMIT, metavar="N",
        help="datasets that cannot be referenced in place (unsupported filter, VDS, ...) are "
        f"inlined decoded up to N bytes, otherwise skipped (default {DEFAULT_DECODED_INLINE_LIMIT})",
    )
    parser.add_argument(
        "--url-map", action="append", default=[], metavar="PREFIX=REPLACEMENT",
        help="write REPLACEMENT+rest instead of a source URL starting with PREFIX, e.g. "
        "/local/copy/=s3://bucket/data/ when scanning a local copy; repeatable, longest prefix wins",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="treat anything that cannot be represented as an error: no output for that file, exit 1",
    )
    add_storage_arguments(parser)
    parser.add_argument(
        "--format", choices=("json", "parquet"), default="json",
        help="json: one kerchunk JSON v1 file per source (default); parquet: fsspec's Parquet reference "
        "layout, one directory per source (<name>.parq in an output directory)",
    )
    parser.add_argument("--record-size", type=int, default=10_000, metavar="N",
                        help="references per Parquet record file (with --format parquet)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr (errors still shown)")
    parser.add_argument(
        "--concat-dim", metavar="DIM",
        help="write ONE reference set (-o FILE) of all sources concatenated along dimension DIM, ordered by "
        "its coordinate values; see 'Many files, one dataset' in the README",
    )
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
        help=f"with --concat-dim: files scanned at once, each in its own process (default {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--mismatch", choices=MISMATCH_POLICIES, default="refuse",
        help="with --concat-dim, a variable without DIM that differs between files: refuse (default), "
        "keep the first file's, or drop it (drop also leaves out variables some files lack)",
    )


def output_targets(sources: list[str], output: str, suffix: str = ".json",
                   storage_options: dict[str, Any] | None = None) -> list[str]:
    """Where each source's reference set goes.

    A directory output gets ``<basename>.json`` per source; two sources with
    the same basename are an error rather than a silent overwrite.
    """
    if output == "-":
        if len(sources) > 1:
            raise ConfigError("-o -: several sources need an output directory, not stdout")
        return ["-"]
    if len(sources) == 1 and not _is_directory(output, storage_options or {}):
        return [output]
    targets = [posixpath.join(output.rstrip("/") or "/", posixpath.basename(s.rstrip("/")) + suffix) for s in sources]
    dupes = {t for t in targets if targets.count(t) > 1}
    if dupes:
        raise ConfigError(f"-o {output}: several sources would write {sorted(dupes)[0]}; scan them into separate directories")
    return targets


def _is_directory(output: str, storage_options: dict[str, Any]) -> bool:
    """An output names a directory if it ends in '/' or exists as one."""
    if output.endswith("/"):
        return True
    fs, path = fsspec.core.url_to_fs(output, **storage_options)
    return bool(fs.isdir(path))


def _prepare_directory(output: str, targets: list[str], storage_options: dict[str, Any]) -> None:
    """Create the output directory when writing several files into it."""
    if targets == ["-"] or targets == [output]:
        return
    fs, path = fsspec.core.url_to_fs(output, **storage_options)
    fs.makedirs(path, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    """Run the scan subcommand; returns the process exit code."""
    err: TextIO = sys.stderr
    try:
        options = command_storage_options(args.storage_option, [*args.sources, args.output], args.endpoint_url,
                                          args.anon)
        url_map = parse_url_map(args.url_map)
        if args.inline_threshold < 0:
            raise ConfigError("--inline-threshold must be >= 0")
        sources = expand_sources(args.sources, options)
        parquet = getattr(args, "format", "json") == "parquet"
        if getattr(args, "concat_dim", None):
            return run_concat(args, sources, options, url_map, err)
        if parquet and args.output == "-":
            raise ConfigError("--format parquet writes a directory: give -o DIRECTORY")
        output_options = protocol_options(args.output, options)
        targets = output_targets(sources, args.output, ".parq" if parquet else ".json", output_options)
        if parquet and len(targets) == 1 and targets[0] == args.output and args.output.endswith("/"):
            targets = [args.output.rstrip("/") + "/" + posixpath.basename(sources[0].rstrip("/")) + ".parq"]
        _prepare_directory(args.output, targets, output_options)
    except (RefmountError, BadURLMap, OSError, ValueError) as exc:
        print(f"refmount scan: {exc}", file=err)
        return EXIT_BAD_INPUT
    code = EXIT_OK
    reports: list[ScanReport] = []
    for n, (source, target) in enumerate(zip(sources, targets, strict=False), 1):
        file_code, report = _scan_one(args, source, target, options, url_map, n, len(sources), err)
        code = max(code, file_code)
        if report is not None:
            reports.append(report)
    if not args.quiet and reports:
        print(format_summary(reports), file=err)
    return code


def _scan_one(
    args: argparse.Namespace, source: str, target: str, options: Table,
    url_map: list[tuple[str, str]], n: int, total: int, err: TextIO,
) -> tuple[int, ScanReport | None]:
    """Scan one source and write its reference set; returns (exit code, report)."""
    started = time.monotonic()
    url = apply_url_map(canonical_url(source), url_map)
    try:
        result = scan_hdf5(
            source, storage_options=protocol_options(source, options), inline_threshold=args.inline_threshold,
            url=url, strict=args.strict, decoded_inline_limit=args.decoded_inline_limit,
        )
        if getattr(args, "format", "json") == "parquet":
            write_parquet_set(result.refs, target, args.record_size, protocol_options(target, options))
        else:
            write_json(result.refs, target, protocol_options(target, options))
    except StrictScanError as exc:
        print(f"refmount scan: --strict: {exc}", file=err)
        return EXIT_STRICT, exc.result.report
    except (SourceError, OSError, RefmountError) as exc:
        print(f"refmount scan: {exc}", file=err)
        return EXIT_BAD_INPUT, None
    report = result.report
    if not args.quiet:
        where = "stdout" if target == "-" else target
        print(f"[{n}/{total}] {source} -> {where}: {report.summary()} ({time.monotonic() - started:.2f}s)", file=err)
        for problem in report.problems:
            print(f"    {problem}", file=err)
    return EXIT_OK, report


def run_concat(
    args: argparse.Namespace, sources: list[str], options: Table, url_map: list[tuple[str, str]], err: TextIO,
) -> int:
    """Scan every source (in parallel) and write one set concatenated along ``--concat-dim``."""
    parquet = args.format == "parquet"
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    if parquet and args.output == "-":
        raise ConfigError("--format parquet writes a directory: give -o DIRECTORY")
    if args.output != "-" and args.output.endswith("/"):
        raise ConfigError(f"-o {args.output}: --concat-dim writes one reference set: give a file name, not a directory")
    scan_options = ConcatScanOptions(
        args.concat_dim, options, args.inline_threshold, args.decoded_inline_limit, args.strict, url_map,
    )
    progress = Progress(len(sources), err, quiet=args.quiet)

    def report(outcome: FileOutcome) -> None:
        progress.advance(outcome.source, outcome.report.summary() if outcome.report else "failed")
        if outcome.error:
            progress.message(f"refmount scan: {outcome.error}")

    outcomes = scan_many(sources, scan_options, args.jobs, report)
    progress.close()
    failed = [o for o in outcomes if o.error]
    if failed:
        print(f"refmount scan: {len(failed)} of {len(outcomes)} file(s) failed; no reference set written", file=err)
        return EXIT_STRICT if all(o.strict for o in failed) else EXIT_BAD_INPUT
    scans: list[FileScan] = [o.scan for o in outcomes if o.scan is not None]
    try:
        read_unaligned(scans, scan_options, args.jobs)
        result = concat_scans(scans, args.concat_dim, args.mismatch)
        if parquet:
            write_parquet_set(result.doc, args.output, args.record_size, protocol_options(args.output, options))
        else:
            write_json(result.doc, args.output, protocol_options(args.output, options))
    except ConcatError as exc:
        print(f"refmount scan: {exc}", file=err)
        return EXIT_BAD_INPUT
    except (OSError, RefmountError) as exc:
        print(f"refmount scan: {exc}", file=err)
        return EXIT_BAD_INPUT
    if not args.quiet:
        for note in result.notes:
            print(f"refmount scan: note: {note}", file=err)
        print(concat_summary(result, args.concat_dim, args.output), file=err)
    return EXIT_OK


def concat_summary(result: ConcatResult, dim: str, target: str) -> str:
    """One line about the combined set: files, length along the dimension, references."""
    refs = result.doc["refs"]
    arrays = [k for k in refs if k.endswith(".zarray")]
    coordinate = f"{dim}/.zarray"
    length = json.loads(refs[coordinate])["shape"][0] if coordinate in refs else "?"
    ranged = sum(1 for v in refs.values() if isinstance(v, list))
    where = "stdout" if target == "-" else target
    return (f"concatenated {len(result.order)} file(s) along {dim!r} (length {length}): {len(arrays)} arrays, "
            f"{ranged} chunk references -> {where}")


def format_summary(reports: list[ScanReport]) -> str:
    """Totals over all scanned files, with skip reasons grouped."""
    skipped: dict[str, int] = {}
    for r in reports:
        for reason, count in r.skipped_reasons().items():
            skipped[reason] = skipped.get(reason, 0) + count
    lines = [
        f"scanned {len(reports)} file(s): {sum(r.datasets for r in reports)} datasets, "
        f"{sum(r.chunks for r in reports)} chunks, {sum(r.bytes_referenced for r in reports)} bytes referenced, "
        f"{sum(r.inlined_chunks for r in reports)} chunks inlined ({sum(r.bytes_inlined for r in reports)} bytes), "
        f"{sum(skipped.values())} skipped"
    ]
    lines += [f"  skipped {count}x: {reason}" for reason, count in sorted(skipped.items())]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser for ``python -m refmount.scan``."""
    parser = argparse.ArgumentParser(
        prog="refmount scan",
        description="Scan HDF5/NetCDF4 files into kerchunk JSON v1 reference sets.",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m refmount.scan``."""
    return run(build_parser().parse_args(argv))
