"""Opening an Icechunk repository with the ``icechunk`` package: storage, version, snapshot, metadata.

What the package answers is used as it answers it: which snapshot a branch,
tag or snapshot id names, the snapshot's nodes (groups and arrays, with their
manifests), each node's ``zarr.json`` as the repository's own store returns
it, and the virtual chunk containers the repository declares. Anything that
cannot be mounted is refused here with a message naming it: a repository
refmount cannot open, a ref that names nothing, a virtual chunk container on
a protocol with no filesystem here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import fsspec
from zarr.core.buffer import default_buffer_prototype

from refmount.errors import ConfigError
from refmount.refs.keys import ZARR_JSON
from refmount.urls import protocol_of

DEFAULT_REF = "main"
_SNAPSHOT_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{20}$")

__all__ = ["DEFAULT_REF", "Node", "Snapshot", "open_snapshot"]


#: icechunk's own log: its warning that local storage is unsafe for concurrent commits means nothing to a
#: read-only mount, so only errors are shown unless ICECHUNK_LOG asks for more.
_LOG_FILTER = "warn,icechunk::storage::object_store=error"


def _icechunk() -> Any:
    try:
        import icechunk
    except ImportError:
        raise ConfigError("mounting an Icechunk repository needs the 'icechunk' package "
                          "(pip install 'refmount[icechunk]')") from None
    if "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter(_LOG_FILTER)
    return icechunk


@dataclass(frozen=True, slots=True)
class Node:
    """A group or array of the snapshot: its key path ('' for the root), its id and its manifests."""

    path: str
    node_id: str
    is_array: bool
    manifests: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """One committed snapshot of a repository, as the tree needs it, and the ref that named it."""

    snapshot_id: str
    nodes: tuple[Node, ...]
    metadata: Mapping[str, bytes]  # node path -> its zarr.json
    chunk_refs: int  # how many chunk references its manifests hold
    containers: tuple[str, ...]  # url prefixes of the virtual chunk containers
    flushed_at: float  # when the snapshot was written (POSIX seconds; 0.0 if unknown)
    ref: str = DEFAULT_REF  # the branch, tag or snapshot id asked for
    ref_kind: str = "branch"  # which of the three it is: branch, tag or snapshot


def storage_for(url: str, options: Mapping[str, Any], shown: str) -> Any:
    """The icechunk Storage of a repository at a local path or ``s3://bucket/prefix``, with the mount's S3 options."""
    icechunk = _icechunk()
    protocol = protocol_of(url)
    if protocol in ("file", "local"):
        return icechunk.local_filesystem_storage(url.split("://", 1)[1] if "://" in url else url)
    if protocol != "s3":
        raise ConfigError(f"Icechunk repository {shown}: repositories on {protocol}:// cannot be mounted "
                          "(local paths and s3:// can)")
    parts = urlsplit(url)
    client = dict(options.get("client_kwargs") or {})
    endpoint = client.get("endpoint_url") or options.get("endpoint_url")
    credentials: dict[str, Any] = {}
    if options.get("anon"):
        credentials["anonymous"] = True
    elif options.get("key") and options.get("secret"):
        credentials.update(access_key_id=options["key"], secret_access_key=options["secret"],
                           session_token=options.get("token"))
    else:
        credentials["from_env"] = True
    return icechunk.s3_storage(
        bucket=parts.netloc, prefix=parts.path.strip("/") or None, region=client.get("region_name"),
        endpoint_url=endpoint, allow_http=bool(endpoint and str(endpoint).startswith("http://")),
        force_path_style=bool(endpoint), **credentials,
    )


def open_snapshot(url: str, options: Mapping[str, Any], ref: str | None, shown: str) -> Snapshot:
    """Open the repository at ``url`` and describe the snapshot ``ref`` (a branch, tag or snapshot id) names."""
    icechunk = _icechunk()
    storage = storage_for(url, options, shown)
    try:
        repo = icechunk.Repository.open(storage)
    except icechunk.IcechunkError as exc:
        raise ConfigError(f"Icechunk repository {shown} cannot be opened: {_first_line(exc)}") from None
    ref = ref or DEFAULT_REF
    session, ref_kind = _session(repo, ref, shown, icechunk)
    _check_containers(repo, shown)
    described = json.loads(repo.inspect_snapshot(session.snapshot_id, pretty=False))
    nodes = tuple(
        Node(
            path=str(item["path"]).strip("/"),
            node_id=str(item["id"]),
            is_array=item.get("node_type") == "array",
            manifests=tuple(str(m["id"]) for m in item.get("manifest_refs") or ()),
        )
        for item in described.get("nodes") or ()
    )
    if not nodes:
        raise ConfigError(f"Icechunk repository {shown} at {ref} holds no group or array")
    chunk_refs = sum(int(m.get("num_chunk_refs", 0)) for m in described.get("manifests") or ())
    metadata = asyncio.run(_metadata(session.store, nodes))
    containers = tuple(sorted((repo.config.virtual_chunk_containers or {}).keys()))
    return Snapshot(session.snapshot_id, nodes, metadata, chunk_refs, containers,
                    _timestamp(described.get("flushed_at")), ref, ref_kind)


def _timestamp(text: object) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


def _session(repo: Any, ref: str, shown: str, icechunk: Any) -> tuple[Any, str]:
    """The read-only session of ``ref`` and what ``ref`` is: a branch, else a tag, else a snapshot id."""
    branches, tags = repo.list_branches(), repo.list_tags()
    try:
        if ref in branches:
            return repo.readonly_session(branch=ref), "branch"
        if ref in tags:
            return repo.readonly_session(tag=ref), "tag"
        if _SNAPSHOT_ID.match(ref):
            return repo.readonly_session(snapshot_id=ref), "snapshot"
    except icechunk.IcechunkError as exc:
        raise ConfigError(f"Icechunk repository {shown}: {ref} cannot be opened: {_first_line(exc)}") from None
    raise ConfigError(f"Icechunk repository {shown} has no branch, tag or snapshot {ref!r} "
                      f"(branches: {', '.join(sorted(branches)) or 'none'}; tags: {', '.join(sorted(tags)) or 'none'})")


def _check_containers(repo: Any, shown: str) -> None:
    """Refuse a repository whose virtual chunks live where refmount has no filesystem to read them."""
    for prefix in sorted((repo.config.virtual_chunk_containers or {}).keys()):
        protocol = protocol_of(prefix)
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"Icechunk repository {shown}: its virtual chunk container {prefix} is on "
                              f"{protocol}://, which refmount cannot read here ({exc})") from None


async def _metadata(store: Any, nodes: tuple[Node, ...]) -> dict[str, bytes]:
    prototype = default_buffer_prototype()

    async def one(node: Node) -> tuple[str, bytes]:
        key = f"{node.path}/{ZARR_JSON}" if node.path else ZARR_JSON
        buffer = await store.get(key, prototype)
        if buffer is None:
            raise ConfigError(f"Icechunk node /{node.path} has no zarr.json")
        return node.path, buffer.to_bytes()

    return dict(await asyncio.gather(*(one(node) for node in nodes)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
