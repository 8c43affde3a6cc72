"""One cache entry in the making (as rclone's vfscache `Item`): its staging, its growing files, its
space-managed writes, and the readers waiting on it.

A downloader (or a follower of another process's download) only writes into an item; readers
only wait on it. Readers wait as long as bytes keep coming: an item that makes no progress for
`stall_timeout` fails, with one error for every waiter. A failed item serves nothing more, not
even bytes it already has, so every read of a refused archive fails alike.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from blfs.cache import LOCK_WAIT, Cache, Pin, Staging
from blfs.errors import BadArchive, BlfsError, CacheFull, RemoteTimeout
from blfs.nodes import FileSpan
from blfs.private import DIR_MODE, FILE_MODE

log = logging.getLogger("blfs.fetch")

# The most written (and readers woken) at once: a download hands its bytes on as they arrive
# (api.Download.read), in pieces as big as a fast link fills and as small as a slow one brings.
CHUNK = 1 << 20
_WAKE = 1.0  # waiters look at the download's byte count at least this often
T = TypeVar("T")


class Cancelled(BlfsError):
    """The item was failed or abandoned while its download was still running."""


class Source:
    """What an item reports progress from: a download's counters (api.Download has them)."""

    url: str | None = None
    length: int | None = None
    bytes_read: int = 0


class GrowingFile:
    """A file an item writes and readers read; `size` None = known only at the end."""

    def __init__(self, path: Path, size: int | None, written: int = 0) -> None:
        self.path = path
        self.size = size
        self.written = written


class Item:
    """The state of one entry that readers wait on: progress, the end, or an error."""

    def __init__(
        self,
        cache: Cache,
        key: str,
        label: str,
        stall_timeout: float,
        on_fail: Callable[[Item, BlfsError], None] = lambda item, error: None,
    ) -> None:
        self.cache = cache
        self.key = key
        self.label = label
        self.cond = threading.Condition()
        self.error: BlfsError | None = None
        self.done = False  # every byte is there and verified: nobody waits any more
        self.owner = False  # this process downloads it (rather than following another's)
        self.staging: Staging | None = None
        self.source: Source = Source()
        self.started = time.monotonic()
        self._stall_timeout = stall_timeout
        self._on_fail = on_fail
        self._written = 0
        self._failing = False
        self._progress_at = self.started
        self._seen = 0

    @classmethod
    def complete(cls, cache: Cache, key: str, label: str) -> Item:
        item = cls(cache, key, label, 0.0)
        item.done = True
        return item

    def describe(self) -> str:
        return f"{self.label} ({self.source.url})" if self.source.url else self.label

    # -- readers -------------------------------------------------------------------------------
    def wait(self, ready: Callable[[], bool], what: str) -> None:
        """Returns once `ready()` or every byte is there; raises the item's error, which is a
        RemoteTimeout for all once it has made no progress for `stall_timeout`."""
        with self.cond:
            while not ready():
                self.check()
                if self.done:
                    return
                idle = self._idle()
                if idle >= self._stall_timeout:
                    break
                self.cond.wait(min(self._stall_timeout - idle, _WAKE))
            else:
                return
        self._stalled(what)

    def watch(self, what: str) -> None:
        """For a thread that waits on something else for the item (a lock, another process):
        raises the item's error, failing it first if it has stalled."""
        self.check()
        with self.cond:
            stalled = self._idle() >= self._stall_timeout
        if stalled:
            self._stalled(what)

    def _stalled(self, what: str) -> None:
        self.fail(
            RemoteTimeout(
                f"no data for {self._stall_timeout:g}s while waiting for {what}"
                f" of {self.describe()}"
            )
        )
        self.check()

    def _idle(self) -> float:
        """(Under the condition.) Seconds since the last byte arrived."""
        now = time.monotonic()
        if self.source.bytes_read != self._seen:
            self._seen, self._progress_at = self.source.bytes_read, now
        return now - self._progress_at

    def check(self) -> None:
        """Raises the item's error (a fresh copy per caller) if it failed."""
        error = self.error
        if error is not None:
            raise _fresh(error)

    def open(self, file: GrowingFile) -> int:
        """An fd for reading; FileNotFoundError if the file is gone (evicted, failed)."""
        self.check()
        with self.cond:  # commits rename under the condition: the path is current
            return os.open(file.path, os.O_RDONLY | os.O_CLOEXEC)

    def pin(self) -> Pin:
        return self.cache.pin(self.key, time.monotonic() + LOCK_WAIT)

    def progress(self) -> dict[str, Any]:
        done = self.source.bytes_read
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "id": self.label,
            "bytes_done": done,
            "total": self.source.length,
            "rate": done / elapsed,
            "error": str(self.error) if self.error is not None else None,
        }

    # -- the writer ------------------------------------------------------------------------------
    def stage(self, reserve: int, directory: bool) -> Path:
        self.staging = self.cache.stage(self.key, reserve, directory)
        return self.staging.path

    def adopt(self, staging: Staging, written: int) -> None:
        """Takes over the staging of another process's download, which holds `written` bytes."""
        self.staging = staging
        self.owner = True
        self._written = written

    def spaced(self, needed: int, write: Callable[[], T]) -> T:
        """Runs a write into the cache; on a full disk evicts and retries once, then CacheFull."""
        try:
            return write()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        freed = self.cache.free_disk(needed)
        log.warning("cache filesystem full while writing %s: evicted %d bytes", self.label, freed)
        try:
            return write()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CacheFull(f"no space left in the cache for {self.describe()}") from None

    def new_file(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return self.spaced(0, lambda: os.open(path, flags, FILE_MODE))

    def make_dir(self, path: Path) -> None:
        self.spaced(0, lambda: path.mkdir(mode=DIR_MODE, exist_ok=True))

    def fill(self, file: GrowingFile, fd: int, read: Callable[[int], bytes | memoryview]) -> None:
        """Copies a source into a growing file chunk by chunk, waking readers after each."""
        while file.size is None or file.written < file.size:
            want = CHUNK if file.size is None else min(CHUNK, file.size - file.written)
            data = read(want)
            if not data:
                return
            self._append(file, fd, data)

    def _append(self, file: GrowingFile, fd: int, data: bytes | memoryview) -> None:
        self.check_running()
        offset = file.written
        self.spaced(len(data), lambda: _pwrite_all(fd, data, offset))
        self._written += len(data)
        if self.staging is not None:
            self.cache.reserve(self.staging, self._written)
        self.grown(file, file.written + len(data))

    def grown(self, file: GrowingFile, written: int) -> None:
        """Records that a file has `written` bytes now, and wakes its readers."""
        with self.cond:
            file.written = written
            self._progress_at = time.monotonic()
            self.cond.notify_all()

    def going_on(self) -> None:
        """Progress without new bytes (another process checks what is there): not a stall."""
        with self.cond:
            self._progress_at = time.monotonic()

    def check_running(self) -> None:
        """Raises Cancelled once the item failed or its readers left: stop writing."""
        if self.error is not None:
            raise Cancelled(f"{self.describe()}: download abandoned: {self.error}")

    def sync(self, path: Path) -> None:
        """Flushes a file or directory of the entry to disk, before its commit. Never retried:
        after a failed fsync the kernel may have dropped the bytes it could not write and a
        second would succeed without them, so the entry is given up."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheFull(f"no space left in the cache to keep {self.describe()}") from None
            raise BlfsError(f"cannot keep {self.describe()}: fsync failed: {exc}") from None
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Every byte is there and verified: waiters go on, handles may be kept by the kernel."""
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def commit(self, size: int, moved: Callable[[Path], None]) -> Path:
        """Publishes the staged entry; `moved(final path)` runs while no reader can open. The
        cache lock is taken first: readers never wait while another process holds it."""
        assert self.staging is not None
        with self.cache.locked(), self.cond:
            final = self.cache.commit(self.staging, size)
            moved(final)
            self.staging = None
        self.cache.touch(self.key)
        return final

    def fail(self, error: BlfsError) -> bool:
        """Ends the item with an error for every waiter (the first error wins; a finished item
        cannot fail). The failure is handed to `on_fail` (remembered) before any waiter sees
        it, so that a waiter trying again at once finds it. Returns whether this call failed it."""
        with self.cond:
            if self._failing:  # another thread fails it: its error is there once remembered
                self.cond.wait_for(lambda: self.error is not None or self.done, LOCK_WAIT)
            if self._failing or self.done:
                return False
            self._failing = True
        try:
            self._on_fail(self, error)
        finally:
            with self.cond:
                failed = not self.done  # finished meanwhile: nothing failed after all
                if failed:
                    self.error = error
                    self.cond.notify_all()
        return failed

    def discard(self) -> None:
        """Removes whatever is still staged (nothing after a commit)."""
        with self.cond:
            staging, self.staging = self.staging, None
        if staging is not None:
            self.cache.discard(staging)


class FileHandle:
    """An open file of an item: reads wait for their bytes, never short before the end."""

    def __init__(
        self,
        item: Item,
        file: GrowingFile,
        fd: int,
        pin: Pin | None,
        final: bool = True,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self._item = item
        self._file = file
        self._fd: int | None = fd
        self._pin = pin
        self._final = final
        self._on_release = on_release

    @property
    def complete(self) -> bool:
        return self._final and self._item.done

    def read(self, offset: int, size: int) -> bytes:
        return self.read_piece(offset, size).read()

    def read_piece(self, offset: int, size: int) -> FileSpan:
        """Where the bytes at `offset` are, once they are there."""
        if size <= 0 or self._fd is None:
            return FileSpan(-1, offset, 0)
        file = self._file
        end = offset + size if file.size is None else min(offset + size, file.size)
        self._item.wait(lambda: file.written >= end, f"byte {end} of {file.path.name}")
        self._item.check()
        if file.written < end and file.size is not None:
            raise BadArchive(f"{self._item.describe()}: {file.path.name} ended early")
        return FileSpan(self._fd, offset, max(0, min(size, file.written - offset)))

    def backing_fd(self) -> int | None:
        return self._fd if self.complete else None

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._pin is not None:
            self._pin.release()
        if self._on_release is not None:
            self._on_release()


def _fresh(error: BlfsError) -> BlfsError:
    """A new instance per waiter: one exception object raised in many threads mixes tracebacks."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
