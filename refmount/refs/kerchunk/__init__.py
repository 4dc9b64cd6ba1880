"""kerchunk JSON reference sets (spec versions 0 and 1): parsing into key -> Reference, and writing.

The modules, one job each: :mod:`.parse` (documents, versions, ``refs``),
:mod:`.values` (one value into a Reference; URL templates), :mod:`.gen`
(``gen`` expansion and its expression compiler) and :mod:`.write` (a
streaming JSON v1 writer). Parsing is pure: no I/O, no logging. Everything a reference set can say is checked here,
before anything is mounted, so a malformed set fails loudly at load time with
an :class:`InvalidReferences` naming the key and the problem instead of
producing a tree that misbehaves later.

Behaviour follows the kerchunk spec and fsspec's ``ReferenceFileSystem``:

* Version 0 is a flat ``{key: value}`` mapping; version 1 is
  ``{"version": 1, "templates": {...}, "gen": [...], "refs": {...}}``, and
  other top-level keys of a version 1 document are ignored.
* A value is inline text (``"base64:"`` prefixed for binary), a JSON object
  (serialised as compact JSON text, as Zarr metadata is), or a list:
  ``[url]`` for a whole object and ``[url, offset, length]`` for a byte
  range. Every list is a reference, as in fsspec. A null or empty url means
  the set's default target.
* Templates are substituted in URLs only, spelled ``{{name}}`` (the spec)
  or ``{name}`` (kerchunk's compact form). Only known template names are
  replaced, so URLs that merely contain braces survive unchanged.
* ``gen`` entries are expanded over the cartesian product of their
  dimensions. fsspec renders them with jinja2; here a small evaluator of
  our own supports what generators need and nothing that could run code:
  names, integer literals, ``+ - * // %``, unary minus, parentheses, and
  ``'%04d' % i`` style formatting.

Decisions where the spec is silent: zero-length ranges are allowed (an empty
file is legitimate); offsets and ``offset + length`` must stay below 2**63
(what ``off_t`` can address); a key defined twice (by ``refs`` and ``gen``,
or by two generated entries) is refused instead of silently overwritten.
"""

from __future__ import annotations
