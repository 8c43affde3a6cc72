"""Advisory file locks shared between the processes using one cache (`fcntl.flock`).

On NFS, Linux maps flock to POSIX byte-range locks (so every lock file is opened read-write);
that needs a working lock manager.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from blfs.errors import LocksRefused, RemoteTimeout
from blfs.mountinfo import mount_of
from blfs.private import FILE_MODE

_POLL_MIN, _POLL_MAX = 0.01, 0.2
# What flock gives on a filesystem without working locks (NFS without its lock manager, some
# FUSE and SMB filesystems).
_REFUSED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def host_only(directory: Path, table: str = "/proc/self/mountinfo") -> str | None:
    """How `directory`'s filesystem is mounted so that its locks are seen by this host only,
    though other hosts may share it (NFS with `nolock` or local flocks, Lustre with
    `localflock`); None when its locks are what they seem."""
    try:
        fstype, options = mount_of(directory, table)
    except (OSError, ValueError, IndexError):
        return None
    if fstype in ("nfs", "nfs4"):
        local = sorted(options & {"nolock", "local_lock=flock", "local_lock=all"})
        return f"{fstype} mounted with {local[0]}" if local else None
    if fstype == "lustre" and "localflock" in options:
        return "lustre mounted with localflock"
    return None


class FileLock:
    """An flock on a lock file that is verified to still be the file at its path once locked
    (an exclusive holder may unlink it, as eviction and finished downloads do)."""

    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path = path
        self._operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, self._operation | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            if exc.errno in _REFUSED:
                raise LocksRefused(f"{self.path}: {exc.strerror}") from None
            raise
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self.try_acquire()
        self._fd = fd
        return True

    def acquire(
        self, deadline: float, what: str, ready: Callable[[], bool] = lambda: False
    ) -> bool:
        """Polls until locked (True) or `ready()` (False); RemoteTimeout at the deadline."""
        pause = _POLL_MIN
        while not self.try_acquire():
            if ready():
                return False
            if time.monotonic() >= deadline:
                raise RemoteTimeout(f"timed out waiting for {what}")
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int:
        assert self._fd is not None, "lock not held"
        return self._fd

    def write_note(self, text: str) -> None:
        """(Held.) Leaves a line for whoever finds the lock taken: what the holder is doing."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode() + b"\n", 0)

    def read_note(self) -> str:
        """The holder's note, '' if none (yet)."""
        try:
            text = self.path.read_bytes()
        except OSError:
            return ""
        return text.decode(errors="replace").strip() if text.endswith(b"\n") else ""

    def release(self, unlink: bool = False) -> None:
        if self._fd is None:
            return
        if unlink:
            with suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def locked_by_anyone(path: Path) -> bool:
    """Whether some process holds an flock on the existing file at `path` (False if none)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
