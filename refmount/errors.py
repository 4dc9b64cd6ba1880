"""The one error taxonomy of refmount, and its single mapping to errno.

Every layer below the FUSE adapter raises one of these classes (or lets a
foreign exception escape); the adapter turns whatever arrives into an errno
with :func:`errno_for`, so the mapping lives here and nowhere else. Messages
are written for operators: they name the key, URL or option concerned and
never contain credentials.
"""

from __future__ import annotations

import errno


class RefmountError(Exception):
    """Base of every error refmount raises on purpose."""


class ReferenceError_(RefmountError):
    """A reference set is malformed; raised while loading, before anything is mounted.

    ``key`` names the offending key when there is one, so the message can point at it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key!r}: {message}" if key is not None else message)


# Public, readable alias: ``ReferenceError`` is a builtin, so the class carries a suffix.
InvalidReferences = ReferenceError_


class ConfigError(RefmountError):
    """An option or config file value is wrong; names the option."""


class NotFound(RefmountError):
    """No such key or directory in the tree."""


class IsADirectory(RefmountError):
    """A file operation was asked of a directory."""


class NotADirectory(RefmountError):
    """A directory operation was asked of a file."""


class ReadOnly(RefmountError):
    """Any attempt to modify the tree: it is immutable by design."""


class BackendError(RefmountError):
    """The object store failed after retries, timed out, or returned a body of the wrong size."""


class StaleObject(BackendError):
    """The object changed since the references were made (size, ETag or mtime differ)."""


class ForbiddenURL(RefmountError):
    """A reference points at a protocol or URL prefix the operator did not allow."""


class UnsupportedCodec(RefmountError):
    """A chunk needs a codec that is not installed (decoded view)."""


class DecodeError(RefmountError):
    """A chunk's bytes do not decode with its codecs (corrupt, failed checksum, wrong size): EIO, never data."""


class NoAttribute(RefmountError):
    """An extended attribute that does not exist."""


#: The single errno table. Order matters: subclasses precede their bases.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, errno.ENOENT),
    (IsADirectory, errno.EISDIR),
    (NotADirectory, errno.ENOTDIR),
    (ReadOnly, errno.EROFS),
    (StaleObject, errno.ESTALE),
    (BackendError, errno.EIO),
    (ForbiddenURL, errno.EACCES),
    (UnsupportedCodec, errno.EIO),
    (DecodeError, errno.EIO),
    (NoAttribute, errno.ENODATA),
    (ReferenceError_, errno.EIO),
    (RefmountError, errno.EIO),
)


def errno_for(exc: BaseException) -> int:
    """Return the errno a FUSE reply should carry for ``exc``.

    OSErrors raised by the kernel or libraries keep their errno; anything
    unexpected is EIO, never EINVAL by accident.
    """
    for cls, code in ERRNO_TABLE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
