"""The FUSE adapter: translates kernel calls into Namespace calls and our errors into errno.

It knows nothing of brainlife; every decision about what a path means lives in the namespace.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import mfusepy

from blfs.errors import BlfsError
from blfs.namespace import Namespace
from blfs.nodes import Attr, FileSpan

log = logging.getLogger("blfs")

# Large blocks make tools read in big chunks: each FUSE call costs Python overhead (DESIGN §9).
BLOCK_SIZE = 256 * 1024
_REPEAT_LOG_SECONDS = 60.0

F = TypeVar("F", bound=Callable[..., Any])


class _OncePerMessage:
    """Logs each distinct error line at most once a minute, so a failing `ls -lR` logs one line."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(message, -_REPEAT_LOG_SECONDS) < _REPEAT_LOG_SECONDS:
                return
            self._last[message] = now
        log.log(level, "%s", message)


def _errno_mapped(method: F) -> F:
    """Maps our exceptions to their errno (stock fusepy would answer EINVAL) and logs them once."""

    @functools.wraps(method)
    def wrapper(self: BlfsOperations, *args: Any) -> Any:
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except BlfsError as exc:
            if exc.errno != errno.ENOENT:
                self._log_once(logging.WARNING, str(exc))
            raise mfusepy.FuseOSError(exc.errno) from exc
        except Exception:
            log.exception("unexpected error in %s%r", method.__name__, args[:1])
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _mode(attr: Attr, shared: bool) -> int:
    """Everything is read-only: directories r-x, files r--, for the owner only unless the mount
    is shared (the kernel enforces these bits: the mount uses `default_permissions`)."""
    bits = 0o555 if attr.is_dir else 0o444
    if not shared:
        bits &= 0o700
    return (stat.S_IFDIR if attr.is_dir else stat.S_IFREG) | bits


class BlfsOperations(mfusepy.Operations):
    """Read-only operations over a Namespace; open handles are kept by number."""

    use_ns = True

    def __init__(self, namespace: Namespace, *, shared: bool = False) -> None:
        self._namespace = namespace
        self._shared = shared
        self._handles: dict[int, Any] = {}
        self._handle_numbers = itertools.count(1)
        self._log_once = _OncePerMessage()
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._started = time.time()

    def _stat(self, attr: Attr) -> dict[str, int]:
        # A time the server does not give (the top directories, a record without a date) is
        # the mount's start: 0 would show as 1970.
        mtime_ns = int((attr.mtime or self._started) * 1e9)
        return {
            "st_mode": _mode(attr, self._shared),
            "st_nlink": 2 if attr.is_dir else 1,
            "st_size": attr.size,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": mtime_ns,
            "st_ctime": mtime_ns,
            "st_atime": mtime_ns,
            "st_blksize": BLOCK_SIZE,
            "st_blocks": (attr.size + 511) // 512,
        }

    @_errno_mapped
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        return self._stat(self._namespace.getattr(path))

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        return self.listing(path)[0]

    @_errno_mapped
    def listing(
        self, path: str
    ) -> tuple[list[tuple[str, dict[str, int], int]], bool, frozenset[Hashable]]:
        """Entries with their full attributes where exact, else with their type only; whether
        the listing may be kept; and what it shows (the keys `on_metadata_change` names)."""
        entries, stable, sources = self._namespace.listing(path)
        here = {"st_mode": stat.S_IFDIR}
        described = [(".", here, 0), ("..", here, 0)]
        for name, attr in entries:
            exact = self._stat(attr) if attr.exact else {"st_mode": _mode(attr, self._shared)}
            described.append((name, exact, 0))
        return described, stable, sources

    def on_metadata_change(self, callback: Callable[[frozenset[Hashable]], None]) -> None:
        """Calls `callback` with what changed whenever metadata behind some listing changed:
        the listings kept elsewhere (the kernel's) that show it are stale then."""
        self._namespace.on_change(callback)

    @_errno_mapped
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EROFS)
        handle = self._namespace.open(path)
        number = next(self._handle_numbers)
        self._handles[number] = handle
        fi.fh = number
        # Complete files never change, so the kernel may keep their pages across opens.
        fi.keep_cache = 1 if handle.complete else 0
        return 0

    @_errno_mapped
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return self._handles[fi.fh].read(offset, size)

    @_errno_mapped
    def read_piece(self, path: str, size: int, offset: int, fi: Any) -> bytes | FileSpan:
        """What `read` returns, or where on disk it is (for a reply that splices it)."""
        return self._handles[fi.fh].read_piece(offset, size)

    def backing_fd(self, fi: Any) -> int | None:
        """The descriptor of an open complete file, for a kernel that reads it by itself."""
        return self._handles[fi.fh].backing_fd()

    @_errno_mapped
    def release(self, path: str, fi: Any) -> int:
        handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            handle.release()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": BLOCK_SIZE, "f_frsize": BLOCK_SIZE, "f_namemax": 255}

    def destroy(self, path: str) -> None:
        for handle in list(self._handles.values()):
            handle.release()
        self._handles.clear()
