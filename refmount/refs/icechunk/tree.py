"""The tree of an Icechunk snapshot: its zarr.json files up front, each array's chunks on first use.

Mounting reads the snapshot's node list and every node's ``zarr.json``
(through the ``icechunk`` package, :mod:`.repository`); no manifest is read
then. The first lookup or listing inside an array reads that array's
manifests (:mod:`.manifest`) once, however many threads ask at the same
time (:class:`refmount.once.OnceCache`), and turns each chunk into an
ordinary reference under the chunk key the array's ``chunk_key_encoding``
names (``c/0/1`` by default):

* an inline chunk is :class:`~refmount.refs.model.Inline`;
* a native chunk is a :class:`~refmount.refs.model.Range` of the
  repository's own ``chunks/<id>`` object, read like any other object;
* a virtual chunk is a :class:`~refmount.refs.model.Range` of its location,
  which must lie in one of the repository's virtual chunk containers.

So every chunk byte goes through the mount's block cache, URL policy and
store checks, as the chunks of a kerchunk set do. The tree is Zarr v3, as
the repository is: there are no ``.zarray`` files for v2 readers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from cachetools import LRUCache

from refmount.errors import InvalidReferences, NotADirectory, NotFound
from refmount.once import OnceCache
from refmount.refs import source
from refmount.refs.icechunk.manifest import ChunkEntry, decode_manifest, manifest_payload
from refmount.refs.icechunk.repository import Node, Snapshot
from refmount.refs.keys import ZARR_JSON, validate_key
from refmount.refs.model import Inline, Range, Reference
from refmount.refs.tree import Dir, File, Namespace, implied_directories
from refmount.refs.tree import Node as TreeNode

log = logging.getLogger("refmount.refs.icechunk")

__all__ = ["IcechunkNamespace", "chunk_key"]



def chunk_key(metadata: dict[str, Any], index: tuple[int, ...]) -> str:
    """The key of chunk ``index`` relative to its array, as the array's ``chunk_key_encoding`` spells it."""
    encoding = metadata.get("chunk_key_encoding") or {"name": "default"}
    name = encoding.get("name", "default")
    configuration = encoding.get("configuration") or {}
    if name == "default":
        separator = str(configuration.get("separator", "/"))
        return separator.join(("c", *map(str, index)))
    if name == "v2":
        separator = str(configuration.get("separator", "."))
        return separator.join(map(str, index)) if index else "0"
    raise InvalidReferences(f"chunk key encoding {name!r} is not known")


class IcechunkNamespace:
    """The tree of one snapshot; ``fs`` and ``root`` locate the repository for its manifests and chunk objects.

    ``chunk_url`` is the URL prefix of the repository's ``chunks/`` objects as
    the mount's backend reads them (an absolute path for a local repository).
    """

    def __init__(self, snapshot: Snapshot, fs: Any, root: str, chunk_url: str, *, shown: str) -> None:
        self.snapshot = snapshot
        self.fs = fs
        self.root = root.rstrip("/")
        self.chunk_url = chunk_url.rstrip("/")
        self.shown = shown
        self._meta: dict[str, bytes] = {}
        self._arrays: dict[str, Node] = {}
        self._array_meta: dict[str, dict[str, Any]] = {}
        for node in snapshot.nodes:
            key = f"{node.path}/{ZARR_JSON}" if node.path else ZARR_JSON
            validate_key(key)
            data = snapshot.metadata[node.path]
            self._meta[key] = data
            if node.is_array:
                self._arrays[node.path] = node
                try:
                    self._array_meta[node.path] = json.loads(data)
                except ValueError as exc:
                    raise InvalidReferences(f"{shown}: zarr.json is not JSON: {exc}", key=key) from None
        files_in: dict[str, list[str]] = {}
        for key in self._meta:
            parent, _, name = key.rpartition("/")
            files_in.setdefault(parent, []).append(name)
        subdirs = implied_directories(files_in, self._meta.__contains__, lambda directory: files_in[directory][0])
        self._children = {d: tuple(sorted((*names, *files_in.get(d, ())))) for d, names in subdirs.items()}
        self._subdirs = {d: len(names) for d, names in subdirs.items()}
        # Every array once loaded stays loaded, as a JSON set's references do: memory follows the set.
        self._loaded: OnceCache[str, Namespace] = OnceCache(max(1, len(self._arrays)))
        self._lock = threading.Lock()  # guards the manifest payloads, the URLs and the extents
        self._payloads: LRUCache[str, bytes] = LRUCache(maxsize=4)
        self._urls: set[str] = set()
        self._extents: dict[str, int] = {}

    # -- arrays, on first use ---------------------------------------------------

    def _array_of(self, key: str) -> str | None:
        """The array holding ``key`` (a chunk key or a directory of chunk keys), if any."""
        parent = key
        while parent:
            parent = parent.rpartition("/")[0]
            if parent in self._arrays:
                return parent
        return None

    def _chunks(self, path: str) -> Namespace:
        return self._loaded.get(path, lambda: self._load(path))

    def _load(self, path: str) -> Namespace:
        node = self._arrays[path]
        metadata = self._array_meta[path]
        refs: dict[str, Reference] = {}
        for manifest_id in node.manifests:
            payload = self._payload(manifest_id)
            for entry in decode_manifest(payload, manifest_id, node.node_id):
                key = chunk_key(metadata, entry.index)
                validate_key(key)
                refs[key] = self._reference(entry, path)
        chunks = Namespace(refs)
        if ZARR_JSON in refs:
            raise InvalidReferences("a chunk key is also the array's zarr.json", key=f"{path}/{ZARR_JSON}")
        with self._lock:
            for url in chunks.urls:
                self._urls.add(url)
                self._extents[url] = max(self._extents.get(url, 0), chunks.extent(url))
        log.debug("%s: loaded %d chunk references of /%s", self.shown, len(refs), path)
        return chunks

    def _payload(self, manifest_id: str) -> bytes:
        with self._lock:
            cached = self._payloads.get(manifest_id)
        if cached is not None:
            return cached
        where = f"{self.root}/manifests/{manifest_id}"
        shown = f"{self.shown}/manifests/{manifest_id}"
        data = source._call(lambda: self.fs.cat_file(where), "read", shown, {})
        payload = manifest_payload(bytes(data), shown)
        with self._lock:
            self._payloads[manifest_id] = payload
        return payload

    def _reference(self, entry: ChunkEntry, path: str) -> Reference:
        if entry.inline is not None:
            return Inline(entry.inline)
        if entry.chunk_id is not None:
            return Range(f"{self.chunk_url}/{entry.chunk_id}", entry.offset, entry.length)
        location = entry.location or ""
        if not any(location.startswith(prefix) for prefix in self.snapshot.containers):
            raise InvalidReferences(
                f"{self.shown}: virtual chunk {location} lies in no virtual chunk container of the repository "
                f"({', '.join(self.snapshot.containers) or 'none declared'})", key=path)
        return Range(location, entry.offset, entry.length)

    # -- the tree interface -------------------------------------------------------

    def lookup(self, path: str) -> TreeNode:
        key = path.strip("/")
        data = self._meta.get(key)
        if data is not None:
            return File(key, Inline(data))
        children = self._children.get(key)
        if children is not None:
            if key in self._arrays:
                return Dir(key, tuple(sorted({*children, *self._chunks(key).listdir("")})))
            return Dir(key, children)
        array = self._array_of(key)
        if array is None:
            raise NotFound(path)
        node = self._chunks(array).lookup(key[len(array) + 1:] if array else key)
        if isinstance(node, File):
            return File(key, node.ref)
        return Dir(key, node.children)

    def listdir(self, path: str) -> tuple[str, ...]:
        node = self.lookup(path)
        if isinstance(node, File):
            raise NotADirectory(path)
        return node.children

    def subdirectory_count(self, path: str) -> int:
        key = path.strip("/")
        if key in self._arrays:
            return self._subdirs.get(key, 0) + self._chunks(key).subdirectory_count("")
        if key in self._children:
            return self._subdirs.get(key, 0)
        array = self._array_of(key)
        if array is None:
            return 0
        return self._chunks(array).subdirectory_count(key[len(array) + 1:] if array else key)

    def extent(self, url: str) -> int:
        """The furthest referenced byte of ``url`` among the arrays loaded so far (only grows, as Parquet's)."""
        return self._extents.get(url, 0)

    @property
    def urls(self) -> Iterable[str]:
        """URLs of the arrays loaded so far (all of them would mean reading every manifest at mount)."""
        with self._lock:
            return list(self._urls)

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference): the zarr.json files, then each array's chunks (loading its manifests)."""
        for key, data in self._meta.items():
            yield key, Inline(data)
        for path in self._arrays:
            for key, ref in self._chunks(path).iter_references():
                yield (f"{path}/{key}" if path else key), ref

    def __len__(self) -> int:
        """zarr.json files plus the chunk references the snapshot's manifests hold."""
        return len(self._meta) + self.snapshot.chunk_refs

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.iter_references())

    @property
    def directory_count(self) -> int:
        """Directories known without reading manifests: groups, arrays and their parents."""
        return len(self._children)
