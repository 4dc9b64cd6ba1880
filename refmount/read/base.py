"""What the filesystem and the views need of a reader: the seam above the read path.

:class:`~refmount.read.reader.Reader` reads the raw bytes of one reference
set's files; a view (:mod:`refmount.views.decoded`) wraps it in a reader of
its own that answers some files differently and forwards the rest. The
filesystem takes either through :class:`FileReader`, so it cannot come to
depend on how bytes are fetched, cached or decoded.
"""

from __future__ import annotations

from typing import Protocol

from refmount.metrics import Metrics
from refmount.read.ranges import Part
from refmount.refs.model import Reference
from refmount.refs.tree import File


class FileReader(Protocol):
    """Sizes and bytes of the files of one reference set."""

    @property
    def block_size(self) -> int:
        """The unit reads are fetched and cached in; the filesystem shows it as ``st_blksize``."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The figures of the mount this reader counts its reads in."""
        ...

    def size(self, ref: Reference) -> int:
        """The exact size of the file ``ref`` describes (may ask the store once)."""
        ...

    def listed_size(self, ref: Reference) -> int | None:
        """:meth:`size` when it is known without asking the store or planning a file; else None.

        A directory listing that hands the kernel every entry's attributes
        (readdirplus) must cost no I/O per entry: an entry whose size is not
        known this cheaply goes without attributes, and the kernel asks for them.
        """
        ...

    def read(self, file: File, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``file`` at ``offset``; empty at or past the end, an error rather than other bytes."""
        ...

    def read_parts(self, file: File, offset: int, size: int) -> list[Part]:
        """:meth:`read`'s bytes as parts in order (whole blocks or views into them), for a caller that copies
        them straight to where they go (the FUSE reply buffer) instead of into a joined ``bytes`` first."""
        ...

    def describe(self, file: File) -> dict[str, str]:
        """Where ``file``'s bytes come from, as short text fields (for ``user.refmount.*`` xattrs); no URL secrets."""
        ...

    def close(self) -> None:
        """Stop background work (readahead); reads after this may fail."""
        ...
