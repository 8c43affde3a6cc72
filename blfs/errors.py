"""Our exception types: each carries the errno the FUSE adapter hands to the caller (DESIGN §4)."""

import errno


class BlfsError(Exception):
    """Base of every error blfs raises on purpose; unknown exceptions become EIO too."""

    errno = errno.EIO


class NotFound(BlfsError):
    errno = errno.ENOENT


class AccessDenied(BlfsError):
    """No token, an expired token, or no access to the thing asked for."""

    errno = errno.EACCES


class RemoteError(BlfsError):
    """The server failed or could not be reached after retries."""

    errno = errno.EIO


class BadRequest(RemoteError):
    """The server refused the request itself (HTTP 400): asking again cannot help."""


class Unreachable(RemoteError):
    """No connection to the server could be made (refused, no route, or no answer to
    connecting): the network of this host, not the thing asked for."""


class RemoteTimeout(RemoteError):
    """The server took too long to answer: EIO, as for every failure of the server or the
    network (README)."""


class BadArchive(BlfsError):
    """A download was truncated, malformed or hostile; nothing of it is kept."""

    errno = errno.EIO


class SizeMismatch(BlfsError):
    """An archive member whose size differs from the one its object's file listing gave."""

    errno = errno.EIO


class CacheFull(BlfsError):
    errno = errno.ENOSPC


class LocksRefused(BlfsError):
    """The cache directory's filesystem refuses the file locks its sharing relies on."""
