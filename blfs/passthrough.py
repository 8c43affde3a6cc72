"""FUSE passthrough: the kernel reads complete cache files by itself (Linux ≥ 6.9), so their
bytes never come through this process and reads go at the speed of the cache's own disk.

The kernel grants backing files only to a mount whose INIT reply asked for them (libfuse 3.17.1
and later ask when told to, `fuse_kernel._ReplyHook` adds it for 3.13 to 3.17.0) and to a
process with CAP_SYS_ADMIN. Where either is missing the first refusal turns passthrough off for
the mount, and files are spliced as before. Backing ids come from libfuse's own
`fuse_passthrough_open` where it has one (3.17 and later), else from the ioctl it would make;
they are closed with that ioctl on the session's descriptor, as `fuse_passthrough_close` does
(an id may outlive the request that opened it: an interrupted open).

The kernel keeps one way of reading an inode at a time, and one backing file per inode: it fails
with EIO a passthrough open of an inode that is open through its page cache, the reverse, and a
passthrough open naming another backing file than the inode's. So a file is passed through only
while none of its handles is open otherwise (one opened while its download was running), every
handle passed through names the backing file of the first, and handles are counted per inode
until their release.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("blfs")

FUSE_PASSTHROUGH = 1 << 37  # INIT flag (in `flags2`, shifted down by 32)
MAX_STACK_DEPTH = 1  # backing files are on a filesystem that is not itself stacked
FOPEN_PASSTHROUGH = 1 << 7
# ioctls on the session's /dev/fuse descriptor: _IOW(229, 1, struct fuse_backing_map) and
# _IOW(229, 2, uint32_t)
_BACKING_OPEN, _BACKING_CLOSE = 0x4010E501, 0x4004E502

OpenBacking = Callable[[int, int], int]  # (request, descriptor) -> backing id, or OSError
CloseBacking = Callable[[int], None]


def session_backing(session_fd: int) -> tuple[OpenBacking, CloseBacking]:
    """Opening and closing backing files by ioctl on the session's descriptor."""

    def open_backing(req: int, fd: int) -> int:
        return fcntl.ioctl(session_fd, _BACKING_OPEN, bytearray(struct.pack("iIQ", fd, 0, 0)), True)

    def close_backing(backing_id: int) -> None:
        fcntl.ioctl(session_fd, _BACKING_CLOSE, bytearray(struct.pack("I", backing_id)), True)

    return open_backing, close_backing


@dataclass
class _Inode:
    """How an inode's open handles are read, and the one backing file of those passed through
    (the kernel refuses a second one for an inode with EBUSY, that is EIO to the reader)."""

    passed: int = 0
    cached: int = 0
    backing_id: int | None = None


class Passthrough:
    """The backing files of one mount, by inode, with the mode of each open handle."""

    def __init__(self) -> None:
        self._open_backing: OpenBacking | None = None  # from `start` to the first refusal
        self._close_backing: CloseBacking | None = None
        self._granted = False
        self._lock = threading.Lock()
        self._inodes: dict[int, _Inode] = {}
        self._handles: dict[int, tuple[int, bool]] = {}  # fh -> (ino, passed through)

    def start(self, open_backing: OpenBacking, close_backing: CloseBacking) -> None:
        """Backing files may be asked for (the INIT reply asked for them)."""
        self._open_backing, self._close_backing = open_backing, close_backing

    def open(self, req: int, ino: int, fh: int, backing_fd: int | None) -> int | None:
        """The backing id the open reply (to `req`) names, or None for an open through the
        page cache. `backing_fd` is the handle's complete cache file, if it has one."""
        with self._lock:
            inode = self._inodes.setdefault(ino, _Inode())
            if inode.backing_id is None and backing_fd is not None and not inode.cached:
                inode.backing_id = self._backing(req, backing_fd)
            passed = inode.backing_id is not None
            if passed and backing_fd is None:
                # What the kernel would answer: it reads the inode by itself for other handles.
                log.warning("inode %d: cannot be opened but through its cache file", ino)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            if passed:
                inode.passed += 1
            else:
                inode.cached += 1
            self._handles[fh] = (ino, passed)
            return inode.backing_id

    def release(self, fh: int) -> None:
        with self._lock:
            ino, passed = self._handles.pop(fh, (0, False))
            inode = self._inodes.get(ino)
            if inode is None:
                return
            if passed:
                inode.passed -= 1
            else:
                inode.cached -= 1
            if inode.passed == 0 and inode.backing_id is not None and self._close_backing:
                with contextlib.suppress(OSError):  # the kernel drops it with the session
                    self._close_backing(inode.backing_id)
                inode.backing_id = None
            if not (inode.passed or inode.cached):
                del self._inodes[ino]

    def _backing(self, req: int, fd: int) -> int | None:
        """(Under the lock.) A backing id for `fd`; None once the kernel refused one."""
        if self._open_backing is None:
            return None
        try:
            backing_id = self._open_backing(req, fd)
        except OSError as exc:
            self._open_backing = None
            log.info("cached files are read through this process (no passthrough: %s)", exc)
            return None
        if not self._granted:
            self._granted = True
            log.info("cached files are read by the kernel itself (passthrough)")
        return backing_id
