"""``refmount inspect``: validate a reference set and summarise what a mount would show.

Loading goes through exactly the code a mount uses, so a set that inspects
cleanly mounts cleanly. The summary lists every array with its codecs and
whether each codec is installed, which tells a user before mounting what a
reader will be able to decode, what netCDF-C still cannot read through the
decoded view, and which files the netCDF view shows and what they leave out.
Arrays are listed from their Zarr v2 ``.zarray`` or, in a set that has none
(an Icechunk repository), their Zarr v3 ``zarr.json``. A view the set cannot
be shown in is reported with the reason a mount would give, found by the
check the mount itself makes. For an Icechunk repository the summary names
the ref it read and the snapshot that ref resolved to.

The options that change this are those of the option table marked
``inspect``: where the set is and how to reach it (store, credentials,
``allow``, ``ref``, ``record_cache``) and how a mount would show it
(``view``, ``zarr_format``, ``netcdf_format``, ``max_decoded_chunk``). The
view and Zarr format decide which of the notes count as problems.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numcodecs

from refmount.config.options import MountConfig, backend_options
from refmount.errors import ConfigError
from refmount.mount.assemble import reference_storage_options, single_set_name
from refmount.refs.keys import ZARR_JSON
from refmount.refs.model import Inline, Range, Reference, Whole
from refmount.refs.open import open_reference_set
from refmount.refs.tree import ReferenceTree
from refmount.store.policy import UrlPolicy
from refmount.urls import protocol_of, redact_url
from refmount.views.decoded import DEFAULT_MAX_DECODED_CHUNK
from refmount.views.netcdf.report import FileReport, netcdf_c_problem, netcdf_files
from refmount.views.present import VIEWS, check_view_applies
from refmount.views.zarr3_meta import NotTranslatable, array_metadata
from refmount.views.zarr_meta import is_object_dtype, numpy_dtype, unavailable_codecs


@dataclass
class ArraySummary:
    name: str
    shape: list[int]
    chunks: list[int]
    dtype: Any
    codecs: list[str]
    missing_codecs: list[str]
    chunk_keys: int = 0
    decoded_view: str = ""  # what -o view=decoded presents for this array
    zarr3_view: str = ""  # the codecs of its zarr.json under -o zarr_format=3, or why it gets none
    netcdf_c: str = ""  # why netCDF-C cannot read it through the decoded view ('' if it can)
    zarr_format: int = 2  # the Zarr format of its own metadata (.zarray, or zarr.json)


@dataclass
class Summary:
    source: str
    keys: int = 0
    directories: int = 0
    inline: int = 0
    inline_bytes: int = 0
    ranges: int = 0
    range_bytes: int = 0
    whole_objects: int = 0
    objects: int = 0
    protocols: dict[str, int] = field(default_factory=dict)
    refused_urls: int = 0
    arrays: list[ArraySummary] = field(default_factory=list)
    netcdf_files: list[FileReport] = field(default_factory=list)  # what -o view=netcdf shows
    view: str = "raw"  # the view and Zarr format the problems are counted for
    zarr_format: int = 2  # the format a mount shows: the option's, or 3 for a set of zarr.json only
    own_zarr_format: int = 2  # the format of the set's own metadata: 3 when it has zarr.json and no .zarray/.zgroup
    set_format: str = ""  # json, parquet or icechunk
    ref: str = ""  # an Icechunk repository's ref read, what kind it is, and the snapshot it resolved to
    ref_kind: str = ""
    snapshot_id: str = ""
    refused_views: dict[str, str] = field(default_factory=dict)  # view -> why a mount refuses it for this set
    problems: list[str] = field(default_factory=list)  # what would not read in that view: exit 1 if any


def codec_ids(zarray: dict[str, Any]) -> list[str]:
    """Codec ids of an array's filters and compressor, in storage order."""
    ids = [f.get("id", "?") for f in (zarray.get("filters") or []) if isinstance(f, dict)]
    compressor = zarray.get("compressor")
    if isinstance(compressor, dict):
        ids.append(compressor.get("id", "?"))
    return ids


def missing_codecs(ids: list[str]) -> list[str]:
    """The codec ids of ``ids`` that numcodecs cannot find (the data would not decode)."""
    missing = []
    for codec_id in ids:
        try:
            numcodecs.registry.get_codec({"id": codec_id})
        except (ValueError, TypeError, KeyError):
            missing.append(codec_id)
        except Exception:  # noqa: BLE001 - codecs that need arguments exist if the lookup got that far
            continue
    return missing


def summarise(
    source: str, refs: Mapping[str, Reference] | Iterable[tuple[str, Reference]], namespace: ReferenceTree, policy: UrlPolicy,
    *, set_name: str = "data", netcdf_format: str = "auto", view: str = "raw", zarr_format: int = 2,
    max_decoded_chunk: int = DEFAULT_MAX_DECODED_CHUNK, refused_views: Mapping[str, str] | None = None,
) -> Summary:
    """One streaming pass over ``refs`` (a mapping, or an iterable of (key, reference) pairs).

    ``set_name`` and ``netcdf_format`` say how the netCDF view would name
    and write the set's files (inline metadata only); ``view``,
    ``zarr_format`` and ``max_decoded_chunk`` are the mount options whose
    view the problems are counted for. ``refused_views`` maps each view a
    mount refuses for this set to the reason it gives: a refused netCDF view
    lists that reason instead of files.
    """
    summary = Summary(source=redact_url(source), keys=0, directories=namespace.directory_count, view=view,
                      zarr_format=zarr_format, refused_views=dict(refused_views or {}))
    urls: set[str] = set()
    chunk_counts: Counter[str] = Counter()
    zarrays: list[tuple[str, bytes]] = []
    zarr_jsons: list[tuple[str, bytes]] = []
    docs: dict[str, Any] = {}
    stored: Counter[str] = Counter()
    for key, ref in refs.items() if isinstance(refs, Mapping) else refs:
        summary.keys += 1
        parent, _, name = key.rpartition("/")
        is_chunk = not name.startswith(".") and name != ZARR_JSON
        if is_chunk:
            chunk_counts[parent] += 1
        if isinstance(ref, Inline):
            summary.inline += 1
            summary.inline_bytes += len(ref.data)
            if name == ".zarray":
                zarrays.append((key, ref.data))
            elif name == ZARR_JSON:
                zarr_jsons.append((key, ref.data))
            if name in (".zarray", ".zattrs", ".zgroup"):
                docs[key] = _parsed(ref.data)
            elif is_chunk:
                stored[parent] += len(ref.data)
        elif isinstance(ref, Range):
            summary.ranges += 1
            summary.range_bytes += ref.length
            if is_chunk:
                stored[parent] += ref.length
            urls.add(ref.url)
        elif isinstance(ref, Whole):
            summary.whole_objects += 1
            urls.add(ref.url)
    summary.objects = len(urls)
    summary.protocols = dict(Counter(protocol_of(url) for url in urls))
    summary.refused_urls = sum(1 for url in urls if not policy.permits(url))
    for key, data in sorted(zarrays):
        name = key[: -len(".zarray")].rstrip("/") or "/"
        try:
            meta = json.loads(data)
        except ValueError:
            meta = {}
        ids = codec_ids(meta)
        missing = unavailable_codecs(meta)
        summary.arrays.append(
            ArraySummary(
                name=name, shape=meta.get("shape", []), chunks=meta.get("chunks", []), dtype=meta.get("dtype"),
                codecs=ids, missing_codecs=missing, chunk_keys=chunk_counts.get(name.strip("/"), 0),
                decoded_view=_decoded_view_note(meta, ids, missing, max_decoded_chunk),
                zarr3_view=_zarr3_view_note(meta), netcdf_c=netcdf_c_problem(meta),
            )
        )
    if zarr_jsons and not docs:  # Zarr v3 metadata only (an Icechunk repository): a mount shows it as it is
        summary.own_zarr_format = summary.zarr_format = 3
    v2_arrays = {array.name for array in summary.arrays}
    summary.arrays.extend(_v3_arrays(zarr_jsons, v2_arrays, chunk_counts))
    if "netcdf" not in summary.refused_views:
        summary.netcdf_files = netcdf_files(set_name, docs, stored, netcdf_format)
    summary.problems = problems(summary)
    return summary


def _v3_arrays(zarr_jsons: list[tuple[str, bytes]], listed: set[str], chunk_counts: Mapping[str, int]) -> list[ArraySummary]:
    """The arrays described by a ``zarr.json`` only (none of ``listed``, the arrays with a ``.zarray``).

    A v3 array's chunk keys sit in directories below it (``c/0/1``), so a
    directory's keys count for the nearest array above it; v3 arrays hold no
    nodes, so that array is the only one they can belong to.
    """
    metas: dict[str, dict[str, Any]] = {}
    for key, data in zarr_jsons:
        name = key[: -len(ZARR_JSON)].rstrip("/") or "/"
        meta = _parsed(data)
        if meta.get("node_type") == "array" and name not in listed:
            metas[name] = meta
    keys: Counter[str] = Counter()
    for directory, count in chunk_counts.items():
        at = directory
        while at and at not in metas:
            at = at.rpartition("/")[0]
        if (at or "/") in metas:
            keys[at or "/"] += count
    arrays = []
    for name, meta in sorted(metas.items()):
        ids = v3_codec_names(meta)
        grid = meta.get("chunk_grid") or {}
        configuration = grid.get("configuration") or {} if isinstance(grid, dict) else {}
        dtype = meta.get("data_type")
        arrays.append(ArraySummary(
            name=name, shape=meta.get("shape", []), chunks=configuration.get("chunk_shape", []),
            dtype=dtype.get("name") if isinstance(dtype, dict) else dtype, codecs=ids,
            missing_codecs=missing_v3_codecs(ids), chunk_keys=keys.get(name, 0),
            decoded_view="unchanged (Zarr v3 metadata: the decoded view decodes .zarray arrays only)",
            zarr3_view="+".join(ids), zarr_format=3,
        ))
    return arrays


def v3_codec_names(meta: Mapping[str, Any]) -> list[str]:
    """The codec names of a Zarr v3 array's ``codecs``, in storage order (a name alone is a codec too)."""
    names = []
    for codec in meta.get("codecs") or []:
        if isinstance(codec, str):
            names.append(codec)
        elif isinstance(codec, dict):
            names.append(str(codec.get("name", "?")))
    return names


def missing_v3_codecs(names: list[str]) -> list[str]:
    """The Zarr v3 codec names zarr-python has no codec for; none can be named without zarr installed."""
    try:
        # zarr only for a Zarr v3 set (an Icechunk repository has loaded it already); JSON sets never pay for it
        from zarr.registry import get_codec_class
    except ImportError:
        return []
    missing = []
    for name in names:
        try:
            get_codec_class(name)
        except KeyError:
            missing.append(name)
    return missing


def problems(summary: Summary) -> list[str]:
    """What would not read through a mount in the summary's view and Zarr format, one line each.

    Unreachable objects and missing codecs count in every view; chunks the
    decoded view would refuse count under ``decoded`` and ``netcdf``, arrays
    without a ``zarr.json`` under ``zarr_format=3``, and variables a netCDF
    file leaves out under ``netcdf``.
    """
    found = []
    if summary.refused_urls:
        found.append(f"{summary.refused_urls} object(s) outside the allowed URLs")
    for array in summary.arrays:
        if array.missing_codecs:
            found.append(f"{array.name}: codec {', '.join(array.missing_codecs)} unavailable")
        elif summary.view != "raw" and array.decoded_view.startswith("chunks read as EIO"):
            found.append(f"{array.name}: {array.decoded_view}")
        if summary.zarr_format == 3 and array.zarr3_view.startswith("no zarr.json"):
            found.append(f"{array.name}: {array.zarr3_view}")
    if summary.view in summary.refused_views:
        found.append(summary.refused_views[summary.view])
    if summary.view == "netcdf":
        found.extend(f"{report.name}: left out: {item}" for report in summary.netcdf_files for item in report.left_out)
    return found


def _parsed(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _decoded_view_note(meta: dict[str, Any], ids: list[str], missing: list[str], max_decoded_chunk: int) -> str:
    """How ``-o view=decoded`` presents an array: decoded, kept with its codec, or EIO."""
    if is_object_dtype(meta):
        return f"keeps codec {'+'.join(ids) or 'none'} (object dtype)"
    if missing:
        return f"chunks read as EIO (codec {', '.join(missing)} unavailable)"
    size = _decoded_chunk_bytes(meta)
    if ids and size > max_decoded_chunk:
        return f"chunks read as EIO (each decodes to {size} bytes, more than max_decoded_chunk {max_decoded_chunk})"
    return "decoded" if ids else "unchanged"


def _decoded_chunk_bytes(meta: dict[str, Any]) -> int:
    """Bytes of one decoded chunk, at most as the decoded view checks it (a dimension shorter than a chunk counts
    its length, as an array smaller than its chunk is shown trimmed); 0 if the metadata does not say."""
    try:
        dims = [min(int(c), int(n)) if int(n) > 0 else int(c) for c, n in zip(meta["chunks"], meta["shape"], strict=True)]
        return numpy_dtype(meta["dtype"]).itemsize * math.prod(dims)
    except (KeyError, TypeError, ValueError):
        return 0


def _zarr3_view_note(meta: dict[str, Any]) -> str:
    """What ``-o zarr_format=3`` gives an array: the codec names of its zarr.json, or why it has none."""
    try:
        return "+".join(codec["name"] for codec in array_metadata(meta, {})["codecs"])
    except NotTranslatable as exc:
        return f"no zarr.json ({exc})"


def render(summary: Summary) -> str:
    lines = [
        f"reference set  {summary.source}" + (f" ({summary.set_format})" if summary.set_format else ""),
    ]
    if summary.snapshot_id:
        named = "" if summary.ref_kind == "snapshot" else f"{summary.ref} ({summary.ref_kind}), "
        lines.append(f"ref            {named}snapshot {summary.snapshot_id} (see --ref)")
    zarr_note = "the set's own zarr.json, no .zarray" if summary.own_zarr_format == 3 else "see --view, --zarr-format"
    lines += [
        f"view           {summary.view}, zarr format {summary.zarr_format} ({zarr_note})",
        f"keys           {summary.keys} ({summary.directories} directories)",
        f"inline         {summary.inline} keys, {summary.inline_bytes} bytes",
        f"ranges         {summary.ranges} keys, {summary.range_bytes} bytes",
        f"whole objects  {summary.whole_objects}",
        f"objects        {summary.objects} ({', '.join(f'{p}: {n}' for p, n in sorted(summary.protocols.items())) or 'none'})",
    ]
    if summary.refused_urls:
        lines.append(f"NOT ALLOWED    {summary.refused_urls} object(s) outside the allowed URLs (reads give EACCES)")
    if summary.arrays:
        lines.append("arrays:")
        for array in summary.arrays:
            codecs = "+".join(array.codecs) or "raw"
            note = f"  MISSING CODEC: {', '.join(array.missing_codecs)}" if array.missing_codecs else ""
            if array.decoded_view.startswith("keeps codec"):
                note += f"  decoded view {array.decoded_view}"
            if array.zarr3_view.startswith("no zarr.json"):
                note += f"  zarr v3 view: {array.zarr3_view}"
            if array.netcdf_c:
                note += f"  NETCDF-C CANNOT READ (decoded view): {array.netcdf_c}"
            lines.append(
                f"  {array.name:<24} {str(array.dtype):<8} shape={array.shape} chunks={array.chunks} "
                f"codecs={codecs} chunk-keys={array.chunk_keys}{note}"
            )
    for refused, reason in sorted(summary.refused_views.items()):
        lines.append(f"{refused} view (-o view={refused}): refused: {reason}")
    if summary.netcdf_files:
        lines.append("netcdf view (-o view=netcdf):")
        for report in summary.netcdf_files:
            lines.append(f"  {report.name:<24} {report.format}, {len(report.variables)} variables")
            lines.extend(f"    left out: {item}" for item in report.left_out)
            lines.extend(f"    note: {item}" for item in report.notes)
    if summary.problems:
        lines.append(f"problems (view={summary.view}, zarr_format={summary.zarr_format}):")
        lines.extend(f"  {item}" for item in summary.problems)
    return "\n".join(lines)


def refused_views(set_format: str, shown: str) -> dict[str, str]:
    """The views a mount refuses for a set of ``set_format``, with its reason: the mount's own check, asked."""
    refused = {}
    for view in VIEWS:
        try:
            check_view_applies(view, set_format, shown)
        except ConfigError as exc:
            refused[view] = str(exc)
    return refused


def run_inspect(config: MountConfig, *, as_json: bool = False) -> int:
    """Print the summary; exit 1 when something would not read, 0 when all is well."""

    info, namespace = open_reference_set(config.source, reference_storage_options(config),
                                         record_cache=config.record_cache, ref=config.ref)
    check_view_applies(config.view, info.format, redact_url(config.source))
    summary = summarise(config.source, namespace.iter_references(), namespace, backend_options(config).policy,
                        set_name=single_set_name(config.source), netcdf_format=config.netcdf_format,
                        view=config.view, zarr_format=config.zarr_format, max_decoded_chunk=config.max_decoded_chunk,
                        refused_views=refused_views(info.format, redact_url(config.source)))
    summary.set_format = info.format
    summary.ref, summary.ref_kind, summary.snapshot_id = info.ref, info.ref_kind, info.snapshot_id
    if as_json:
        print(json.dumps(asdict(summary), indent=2, default=str))
    else:
        print(render(summary))
    if summary.problems:
        print(f"refmount inspect: {len(summary.problems)} problem(s) found", file=sys.stderr)
    return 1 if summary.problems else 0
