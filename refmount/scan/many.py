"""Scanning many files, each once and in parallel, for one concatenated reference set.

Each worker scans one file and, while it is at it, decodes what the
combiner needs (:func:`refmount.scan.concat.plan_reads`): the coordinate of
the concatenation dimension with its bounds, and digests of the arrays
without the dimension. Arrays whose chunks turn out not to share one grid
are read afterwards (:func:`read_unaligned`). Workers are processes, because
h5py serialises every call behind one lock; their number is bounded by
``jobs``. Failures come back as values naming the file, never as exceptions
across the process boundary.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import fsspec

from refmount.errors import RefmountError
from refmount.scan.chunkdata import RangeReader, UndecodableArray, read_array, values_digest
from refmount.scan.concat import FileScan, arrays_to_inline, plan_reads
from refmount.scan.hdf5 import DEFAULT_DECODED_INLINE_LIMIT, DEFAULT_INLINE_THRESHOLD, ScanReport, StrictScanError, scan_hdf5
from refmount.scan.output import apply_url_map
from refmount.scan.sources import SourceError, canonical_url, is_local, local_path
from refmount.store.options import protocol_options


@dataclass
class ConcatScanOptions:
    """What every worker needs to scan one file for concatenation (picklable)."""

    dim: str
    #: fsspec arguments per protocol (``{"s3": {...}}``): each source is read with its own protocol's.
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    inline_threshold: int = DEFAULT_INLINE_THRESHOLD
    decoded_inline_limit: int = DEFAULT_DECODED_INLINE_LIMIT
    strict: bool = False
    url_map: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FileOutcome:
    """One file's scan: the scan for the combiner, or the error that stopped it."""

    source: str
    scan: FileScan | None
    report: ScanReport | None
    error: str | None = None
    strict: bool = False  # the error is a --strict refusal


def scan_for_concat(source: str, options: ConcatScanOptions) -> FileOutcome:
    """Scan ``source`` and decode what the combiner needs; errors are returned, not raised."""
    url = apply_url_map(canonical_url(source), options.url_map)
    storage_options = protocol_options(source, options.storage_options)
    try:
        result = scan_hdf5(
            source, storage_options=storage_options, inline_threshold=options.inline_threshold,
            url=url, strict=options.strict, decoded_inline_limit=options.decoded_inline_limit,
        )
    except StrictScanError as exc:
        return FileOutcome(source, None, exc.result.report, f"--strict: {exc}", strict=True)
    except (SourceError, OSError, RefmountError) as exc:
        return FileOutcome(source, None, None, str(exc))
    refs = result.refs["refs"]
    plan = plan_reads(refs, options.dim)
    scan = FileScan(source, result.refs)
    with _range_reader(source, storage_options) as read:
        for path in plan.coordinates:
            try:
                scan.values[path] = read_array(refs, path, read)
            except (UndecodableArray, OSError, ValueError) as exc:
                return FileOutcome(source, None, result.report, f"{source}: cannot read coordinate {path}: {exc}")
        for path in plan.independent:  # without a digest, the array counts as differing
            with contextlib.suppress(UndecodableArray, OSError, ValueError):
                scan.digests[path] = values_digest(read_array(refs, path, read))
    return FileOutcome(source, scan, result.report)


@contextlib.contextmanager
def _range_reader(source: str, storage_options: dict[str, Any]) -> Iterator[RangeReader]:
    """Ranged reads of the file being scanned (where it is read now, whatever URL the references carry)."""
    if is_local(source):
        with open(local_path(source), "rb") as f:
            def read_local(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)
            yield read_local
        return
    fs, path = fsspec.core.url_to_fs(source, **storage_options)

    def read_remote(offset: int, length: int) -> bytes:
        return bytes(fs.cat_file(path, start=offset, end=offset + length))
    yield read_remote


def scan_many(
    sources: Sequence[str], options: ConcatScanOptions, jobs: int,
    on_done: Callable[[FileOutcome], None] = lambda outcome: None,
) -> list[FileOutcome]:
    """Scan every source with at most ``jobs`` worker processes; outcomes in the order of ``sources``.

    ``on_done`` is called in this process as each file finishes (for progress). With several
    jobs, workers are started as :mod:`multiprocessing`'s forkserver does, so a calling script
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    outcomes: list[FileOutcome | None] = [None] * len(sources)
    if jobs <= 1 or len(sources) <= 1:
        done = []
        for source in sources:
            done.append(scan_for_concat(source, options))
            on_done(done[-1])
        return done
    # forkserver: workers fork from a fresh server process that imported this module (h5py, numcodecs)
    # and s3fs once, so they start fast and inherit neither this process's threads nor its connections.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "s3fs"])
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(sources)), mp_context=context)
    try:
        futures: dict[Future[FileOutcome], int] = {pool.submit(scan_for_concat, s, options): i for i, s in enumerate(sources)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker is reported against its file
                outcome = FileOutcome(sources[i], None, None, f"{sources[i]}: scan failed: {exc!r}")
            outcomes[i] = outcome
            on_done(outcome)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [o for o in outcomes if o is not None]


def read_unaligned(scans: Sequence[FileScan], options: ConcatScanOptions, jobs: int) -> None:
    """Decode the arrays whose chunks cannot share one grid (small enough to inline) into ``scans``.

    A second, targeted pass: only those arrays' chunks are read, never the
    files' metadata again; files are read ``jobs`` at a time in threads (the
    work is ranged reads and decompression, no h5py). An array that cannot
    be read stays without values and is refused by the combiner.
    """
    wanted: dict[int, list[str]] = {}
    for path, indices in arrays_to_inline(list(scans), options.dim, options.decoded_inline_limit).items():
        for i in indices:
            wanted.setdefault(i, []).append(path)

    def read_file(i: int) -> None:
        scan = scans[i]
        with _range_reader(scan.source, protocol_options(scan.source, options.storage_options)) as read:
            for path in wanted[i]:
                with contextlib.suppress(UndecodableArray, OSError, ValueError):
                    scan.values[path] = read_array(scan.doc["refs"], path, read)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(read_file, i) for i in wanted]:
            with contextlib.suppress(OSError):
                future.result()
