"""The Zarr v3 view (``-o zarr_format=3``): every group and array of a v2 set also gets a ``zarr.json``.

Why it exists. kerchunk, VirtualiZarr and ``refmount scan`` write Zarr v2
sets; a Zarr v3 reader (zarr-python 3 with ``zarr_format=3``, tensorstore's
``zarr3`` driver, zarrs) finds no ``zarr.json`` in them and sees nothing.
This view adds, beside each ``.zgroup`` and ``.zarray``, the v3 document
that describes the same chunk files (see :mod:`refmount.views.zarr3_meta`:
a ``v2`` chunk key encoding with the array's separator, codecs translated).
No chunk is renamed or rewritten, so the view costs nothing per read.

The v2 files stay. ``.zarray``, ``.zgroup``, ``.zattrs`` and
``.zmetadata`` remain beside ``zarr.json``, so v2 and v3 readers share one
mount; a reader that accepts both (zarr-python 3 without ``zarr_format``)
prefers ``zarr.json`` and may warn that both exist. A set that carries its
own ``zarr.json`` keeps it: the view adds one only where there is none.

Composes with ``view=decoded``: it wraps the decoded tree, reads the
decoded ``.zarray`` (no codecs) and so lists only ``bytes`` (plus
``transpose`` for an ``order: "F"`` array), which any v3 reader decodes.

Lazy, like the decoded view: nothing is enumerated. A ``zarr.json`` is
built when it (or its directory's listing) is first asked for, from the
directory's ``.zarray``/``.zgroup`` and ``.zattrs``, and remembered for the
:data:`NODES_KEPT` most recently used directories. The root is always a
group unless it is an array, so a set without a root ``.zgroup`` still
opens. An array v3 cannot describe (structured dtype, an object codec
without a v3 counterpart) gets no ``zarr.json`` and one warning naming it.

Counts (``len``) and ``Dir.children`` are those of the wrapped tree: the
added files are not counted, as counting them would mean enumerating.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from refmount.errors import NotADirectory, NotFound
from refmount.once import OnceCache
from refmount.refs.keys import ZARR_JSON
from refmount.refs.model import Inline, Reference
from refmount.refs.tree import File, Node, ReferenceTree
from refmount.views.zarr3_meta import NotTranslatable, array_metadata, group_metadata

log = logging.getLogger("refmount.zarr3")


#: How many directories' v3 documents (or their absence) the view keeps.
NODES_KEPT = 4096


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class Zarr3Tree:
    """Any reference tree, with a ``zarr.json`` beside each ``.zgroup`` and ``.zarray``; built as looked up.

    ``read_meta(key, ref)`` returns the bytes of a metadata document that is
    not inline (``.zarray``, ``.zgroup``, ``.zattrs`` of the wrapped tree).
    """

    def __init__(
        self,
        inner: ReferenceTree,
        read_meta: Callable[[str, Reference], bytes],
        *,
        nodes_kept: int = NODES_KEPT,
    ) -> None:
        self.inner = inner
        self._read_meta = read_meta
        # one-element tuples: the cache takes None for "not cached", and "no document" must be remembered too
        self._nodes: OnceCache[str, tuple[Inline | None]] = OnceCache(nodes_kept)

    # -- the tree interface --------------------------------------------------

    def lookup(self, path: str) -> Node:
        key = path.strip("/")
        directory, _, name = key.rpartition("/")
        if name != ZARR_JSON:
            return self.inner.lookup(path)
        document = self.document(directory)
        if document is None:
            return self.inner.lookup(path)  # the set's own zarr.json, or NotFound
        return File(key, document)

    def listdir(self, path: str) -> Iterable[str]:
        names = self.inner.listdir(path)
        if self.document(path.strip("/")) is None:
            return names
        return self._with_document(names)

    @staticmethod
    def _with_document(names: Iterable[str]) -> Iterator[str]:
        yield from names
        yield ZARR_JSON

    def subdirectory_count(self, path: str) -> int:
        return self.inner.subdirectory_count(path)

    def extent(self, url: str) -> int:
        return self.inner.extent(url)

    def iter_references(self) -> Iterator[tuple[str, Reference]]:
        """Every (key, reference) of the wrapped tree, each ``zarr.json`` after its directory's v2 document."""
        root_is_node = False
        for key, ref in self.inner.iter_references():
            yield key, ref
            directory, _, name = key.rpartition("/")
            if name in (".zarray", ".zgroup"):
                root_is_node = root_is_node or not directory
                document = self.document(directory)
                if document is not None:
                    yield _join(directory, ZARR_JSON), document
        if not root_is_node:
            document = self.document("")
            if document is not None:
                yield ZARR_JSON, document

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.iter_references())

    @property
    def urls(self) -> Iterable[str]:
        return self.inner.urls

    @property
    def directory_count(self) -> int:
        return self.inner.directory_count

    def __len__(self) -> int:
        return len(self.inner)

    # -- the documents -------------------------------------------------------

    def document(self, directory: str) -> Inline | None:
        """The ``zarr.json`` the view adds in ``directory``, or None (not a node, has its own, or untranslatable)."""
        return self._nodes.get(directory, lambda: (self._build(directory),))[0]

    def _build(self, directory: str) -> Inline | None:
        if self._file(_join(directory, ZARR_JSON)) is not None:
            return None  # the set's own v3 metadata is shown as it is
        zarray = self._file(_join(directory, ".zarray"))
        if zarray is None and self._file(_join(directory, ".zgroup")) is None and directory:
            return None
        name = directory or "/"
        try:
            attributes = self._json(_join(directory, ".zattrs"), self._file(_join(directory, ".zattrs")))
            if not isinstance(attributes, dict):
                attributes = {}
            if zarray is None:
                document = group_metadata(attributes)
            else:
                meta = self._json(_join(directory, ".zarray"), zarray)
                if not isinstance(meta, dict):
                    raise NotTranslatable(".zarray is not a JSON object")
                document = array_metadata(meta, attributes)
            text = json.dumps(document, indent=2, allow_nan=False)  # v3 readers take strict JSON only
        except NotTranslatable as exc:
            log.warning("zarr v3 view: %s has no zarr.json (v3 readers do not see it): %s", name, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a node the view cannot read is left to the v2 readers, said loudly
            log.warning("zarr v3 view: %s has no zarr.json: its metadata cannot be read: %s", name, exc)
            return None
        log.debug("zarr v3 view: %s: %s", name, document.get("codecs", "group"))
        return Inline(text.encode())

    def _file(self, key: str) -> Reference | None:
        try:
            node = self.inner.lookup(key)
        except (NotFound, NotADirectory):
            return None
        return node.ref if isinstance(node, File) else None

    def _json(self, key: str, ref: Reference | None) -> Any:
        if ref is None:
            return {}
        return json.loads(ref.data if isinstance(ref, Inline) else self._read_meta(key, ref))
