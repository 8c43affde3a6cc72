"""The streaming fetcher: one background download per object (or task file), unpacked into the
cache while it streams, with readers waiting (bounded) for exactly the bytes they ask for.

Every kind of file is served by the same pieces: a `_Transfer` (thread state, condition, error),
a `_GrowingFile` (bytes written so far) and a `_FileHandle` (pread once the bytes are there).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cachetools

from blfs.cache import DATA, INDEX, Cache, FileLock, Pin, Staging, object_key, task_key
from blfs.errors import BadArchive, BlfsError, NotFound, RemoteTimeout
from blfs.extract import DIR_MODE, ArchiveStream, CountingReader, Member
from blfs.nodes import Handle

log = logging.getLogger("blfs.fetch")

CHUNK = 1 << 18  # readers wake after each chunk: small enough for an early first byte
_KEPT_ARCHIVES = 256  # complete member indexes kept in memory
_KEPT_FAILURES = 20  # recent failures shown by progress()


class Download(Protocol):
    """What api.Client's download methods return (see blfs/api.py)."""

    url: str
    length: int | None
    bytes_read: int

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class _Cancelled(BlfsError):
    """The last reader of a temporary (non-final) file went away."""


class _Transfer:
    """One background download that readers wait on: progress, end, or error."""

    def __init__(self, ident: str, wait_timeout: float, *, finished: bool = False) -> None:
        self.ident = ident
        self.wait_timeout = wait_timeout
        self.cond = threading.Condition()
        self.error: BlfsError | None = None
        self.finished = finished
        self.cancelled = False
        self.download: Download | None = None
        self.started = time.monotonic()

    def describe(self) -> str:
        url = self.download.url if self.download is not None else None
        return f"{self.ident} ({url})" if url else self.ident

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        """Returns once `ready()` or the transfer ended; raises its error if it failed first,
        RemoteTimeout after wait_timeout."""
        deadline = time.monotonic() + self.wait_timeout
        with self.cond:
            while not ready():
                if self.error is not None:
                    raise _fresh(self.error)
                if self.finished:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RemoteTimeout(
                        f"timed out after {self.wait_timeout:g}s waiting for {what}"
                        f" of {self.describe()}"
                    )
                self.cond.wait(remaining)

    def end(self, error: BlfsError | None = None) -> None:
        with self.cond:
            self.error = error
            self.finished = error is None
            self.cond.notify_all()

    def progress(self) -> dict[str, Any]:
        download = self.download
        done = download.bytes_read if download is not None else 0
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "id": self.ident,
            "bytes_done": done,
            "total": download.length if download is not None else None,
            "rate": done / elapsed,
            "error": str(self.error) if self.error is not None else None,
        }


def _fresh(error: BlfsError) -> BlfsError:
    """A new instance per waiter: one exception object raised in many threads mixes tracebacks."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error


class _GrowingFile:
    """A file that a transfer writes and readers read; `size` None = known only at the end."""

    def __init__(self, transfer: _Transfer, path: Path, size: int | None, written: int = 0) -> None:
        self.transfer = transfer
        self.path = path
        self.size = size
        self.written = written

    def wait(self, end: int) -> int:
        """Waits until the bytes before `end` are on disk (or the file ended); returns how many
        bytes of the file are there."""
        target = end if self.size is None else min(end, self.size)
        self.transfer.wait(lambda: self.written >= target, f"byte {target} of {self.path.name}")
        return self.written

    def open(self) -> int:
        """An fd for reading; FileNotFoundError if the file is gone (evicted, failed)."""
        with self.transfer.cond:  # commit renames under this condition: the path is current
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)


class _FileHandle:
    """An open file of any kind: reads wait for their bytes, never short before the end."""

    def __init__(
        self,
        file: _GrowingFile,
        fd: int,
        pin: Pin | None,
        final: bool = True,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self._file = file
        self._fd: int | None = fd
        self._pin = pin
        self._final = final
        self._on_release = on_release

    @property
    def complete(self) -> bool:
        return self._final and self._file.transfer.finished

    def read(self, offset: int, size: int) -> bytes:
        if size <= 0 or self._fd is None:
            return b""
        available = self._file.wait(offset + size)
        want = max(0, min(size, available - offset))
        parts = []
        while want > 0:
            data = os.pread(self._fd, want, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            want -= len(data)
        return b"".join(parts)

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._pin is not None:
            self._pin.release()
        if self._on_release is not None:
            self._on_release()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fill(
    file: _GrowingFile, fd: int, read: Callable[[int], bytes], staging: Staging, what: str
) -> None:
    """Copies a source into a growing file chunk by chunk, waking readers after each."""
    cache = staging.cache
    transfer = file.transfer
    while file.size is None or file.written < file.size:
        if transfer.cancelled:
            raise _Cancelled(f"{what}: download cancelled")
        want = CHUNK if file.size is None else min(CHUNK, file.size - file.written)
        data = read(want)
        if not data:
            break
        offset = file.written
        cache.room(what, len(data), lambda data=data, offset=offset: _pwrite_all(fd, data, offset))
        staging.add(len(data))
        with transfer.cond:
            file.written += len(data)
            transfer.cond.notify_all()
    if file.size is not None and file.written != file.size:
        raise BadArchive(f"{what}: truncated: {file.written} of {file.size} bytes")


def _new_file(path: Path, cache: Cache) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return cache.room(str(path.name), 0, lambda: os.open(path, flags, 0o644))


def _relative(relpath: str) -> str:
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise NotFound(f"no such path: {relpath!r}")
    return "/".join(parts)


class _Archive:
    """What is known of one object's members: arriving from a transfer, or read from the index."""

    def __init__(self, object_id: str, transfer: _Transfer) -> None:
        self.object_id = object_id
        self.transfer = transfer
        self.members: dict[str, Member] = {"": Member("", 0, DIR_MODE, 0.0)}
        self.files: dict[str, _GrowingFile] = {}
        self.children: dict[str, list[str]] = {"": []}
        self.order: list[Member] = []

        self.staging: Staging | None = None

    @classmethod
    def from_index(cls, object_id: str, index: dict[str, Any], base: Path) -> _Archive:
        archive = cls(object_id, _Transfer(f"object {object_id}", 0.0, finished=True))
        archive.fill_from_index(index, base)
        return archive

    def fill_from_index(self, index: dict[str, Any], base: Path) -> None:
        """Publishes every member of a complete object whose files live under `base`."""
        for name, size, mode, mtime in index["members"]:
            member = Member(name, size, mode, mtime)
            file = None if member.is_dir else _GrowingFile(self.transfer, base / name, size, size)
            self.publish(member, file)

    def publish(self, member: Member, file: _GrowingFile | None) -> None:
        with self.transfer.cond:
            name = member.name
            if name not in self.members:
                parent, _, _ = name.rpartition("/")
                self.children[parent].append(name)
                if member.is_dir:
                    self.children[name] = []
            self.members[name] = dataclasses.replace(member, name=name.rpartition("/")[2])
            if file is not None:
                self.files[name] = file
            self.order.append(member)
            self.transfer.cond.notify_all()

    def rebase(self, base: Path) -> None:
        """(Under the condition.) Points every file at its committed location."""
        for name, file in self.files.items():
            file.path = base / name

    def lookup(self, relpath: str) -> Member:
        name = _relative(relpath)
        self.transfer.wait(lambda: name in self.members, f"member {name!r}")
        member = self.members.get(name)
        if member is None:
            raise NotFound(f"{relpath!r} is not in object {self.object_id}")
        return member

    def listdir(self, relpath: str) -> list[Member]:
        name = _relative(relpath)
        self.transfer.wait(lambda: False, f"the listing of {name or 'the root'}")
        if name not in self.children:
            raise NotFound(f"{relpath!r} is not a directory in object {self.object_id}")
        return [self.members[child] for child in self.children[name]]

    def file(self, relpath: str) -> _GrowingFile:
        member = self.lookup(relpath)
        if member.is_dir:
            raise BlfsError(f"{relpath!r} in object {self.object_id} is a directory")
        return self.files[_relative(relpath)]

    def index(self, archive_bytes: int) -> dict[str, Any]:
        return {
            "version": 1,
            "object_id": self.object_id,
            "archive_bytes": archive_bytes,
            "bytes": sum(member.size for member in self.order),
            "members": [[m.name, m.size, m.mode, m.mtime] for m in self.order],
        }


class _Downloads:
    """What both fetchers share: the table of downloads in flight and their recent failures."""

    def __init__(self, cache: Cache, wait_timeout: float) -> None:
        self._cache = cache
        self._wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._inflight: dict[Any, _Archive | _TaskDownload] = {}
        self._failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=_KEPT_FAILURES)

    def progress(self) -> list[dict[str, Any]]:
        """Downloads in flight (id, bytes_done, total, rate, error) and recent failures."""
        with self._lock:
            running = [entry.transfer.progress() for entry in self._inflight.values()]
            return running + list(self._failures)

    def _attempt(self, transfer: _Transfer, work: Callable[[], None]) -> BlfsError | None:
        """Runs a download; returns its error (logged), None when it succeeded."""
        try:
            work()
        except _Cancelled as exc:
            return exc
        except BlfsError as exc:
            log.warning("download of %s failed: %s", transfer.describe(), exc)
            error: BlfsError = exc
        except Exception as exc:
            log.exception("download of %s failed", transfer.describe())
            error = BlfsError(f"download of {transfer.describe()} failed: {exc}")
        else:
            return None
        with self._lock:
            self._failures.append({**transfer.progress(), "error": str(error)})
        return error


class ObjectFetcher(_Downloads):
    """Data-object archives: one download per object (in this process and across processes
    sharing the cache), unpacked as it streams, served from the cache once complete."""

    def __init__(
        self,
        cache: Cache,
        open_download: Callable[[str], Download],
        *,
        wait_timeout: float = 60.0,
    ) -> None:
        super().__init__(cache, wait_timeout)
        self._open_download = open_download
        self._complete: cachetools.LRUCache[str, _Archive] = cachetools.LRUCache(_KEPT_ARCHIVES)

    def contents(self, object_id: str, expected_size: int | None = None) -> ObjectContents:
        """The contents of an object; starts (or joins) its download without waiting for it."""
        self._archive(object_id, expected_size)
        return ObjectContents(self, object_id, expected_size)

    def cached(self, object_id: str) -> bool:
        return self._cache.is_complete(object_key(object_id))

    def _archive(self, object_id: str, expected_size: int | None) -> _Archive:
        key = object_key(object_id)
        with self._lock:
            archive = self._inflight.get(object_id) or self._complete.get(object_id)
            if archive is not None:
                assert isinstance(archive, _Archive)
                return archive
            index = self._cache.read_index(key)
            if index is not None:
                archive = _Archive.from_index(object_id, index, self._cache.path(key) / DATA)
                self._complete[object_id] = archive
                return archive
            archive = _Archive(object_id, _Transfer(f"object {object_id}", self._wait_timeout))
            self._inflight[object_id] = archive
        threading.Thread(
            target=self._run,
            args=(archive, expected_size),
            name=f"blfs-fetch-{object_id}",
            daemon=True,  # a killed process leaves only staging, removed at the next start
        ).start()
        return archive

    def _forget(self, archive: _Archive) -> None:
        """Drops a stale in-memory archive (evicted by someone) so the next access refetches."""
        with self._lock:
            if self._complete.get(archive.object_id) is archive:
                del self._complete[archive.object_id]

    def _open(self, object_id: str, expected_size: int | None, relpath: str) -> Handle:
        key = object_key(object_id)
        for _ in range(2):
            archive = self._archive(object_id, expected_size)
            file = archive.file(relpath)
            pin = self._cache.pin(key, time.monotonic() + self._wait_timeout)
            try:
                fd = file.open()
            except FileNotFoundError:
                pin.release()
                transfer = archive.transfer
                transfer.wait(lambda transfer=transfer: transfer.finished, "the end of a download")
                self._forget(archive)  # it was complete, then evicted: fetch it again
                continue
            except BaseException:
                pin.release()
                raise
            return _FileHandle(file, fd, pin)
        raise BlfsError(f"object {object_id} was evicted twice while being opened")

    def _run(self, archive: _Archive, expected_size: int | None) -> None:
        transfer = archive.transfer
        lock = self._cache.fetch_lock(object_key(archive.object_id))
        error = self._attempt(transfer, lambda: self._fetch(archive, expected_size, lock))
        with self._lock:
            del self._inflight[archive.object_id]
            if error is None:
                self._complete[archive.object_id] = archive
        transfer.end(error)
        if archive.staging is not None:
            archive.staging.discard()
        if transfer.download is not None:
            transfer.download.close()
        lock.release(unlink=True)

    def _fetch(self, archive: _Archive, expected_size: int | None, lock: FileLock) -> None:
        """Downloads and unpacks one object into a staging dir, verifies it, then commits it;
        or takes the result of another process that held the object's fetch lock."""
        key = object_key(archive.object_id)
        cache = self._cache
        transfer = archive.transfer
        deadline = time.monotonic() + self._wait_timeout
        what = f"another process downloading {transfer.ident}"
        if not lock.acquire(deadline, what, ready=lambda: cache.is_complete(key)) or (
            cache.is_complete(key)
        ):
            index = cache.read_index(key)
            if index is None:
                raise BlfsError(f"{transfer.ident} was evicted right after its download")
            archive.fill_from_index(index, cache.path(key) / DATA)
            return
        transfer.download = download = self._open_download(archive.object_id)
        limit = download.length if download.length is not None else expected_size
        if download.length is not None and expected_size not in (None, download.length):
            log.warning(
                "%s: Content-Length %d differs from the recorded size %d",
                transfer.describe(),
                download.length,
                expected_size,
            )
        archive.staging = staging = cache.stage(key, limit or 0, directory=True)
        self._unpack(archive, download, staging, limit)
        with transfer.cond:
            final = staging.commit()
            archive.rebase(final / DATA)
        archive.staging = None

    def _unpack(
        self, archive: _Archive, download: Download, staging: Staging, limit: int | None
    ) -> None:
        cache = self._cache
        label = archive.transfer.describe()
        data = staging.path / DATA
        cache.room(label, 0, data.mkdir)
        stream = ArchiveStream(download, limit, label)
        for member, read in stream.members():
            path = data / member.name
            if read is None:
                cache.room(label, 0, lambda path=path: path.mkdir(exist_ok=True))
                archive.publish(member, None)
                continue
            fd = _new_file(path, cache)
            try:
                file = _GrowingFile(archive.transfer, path, member.size)
                archive.publish(member, file)
                _fill(file, fd, read, staging, f"{label} member {member.name!r}")
            finally:
                os.close(fd)
        archive_bytes = stream.finish()
        # What a power loss must not leave behind a committed name: files with missing bytes.
        # So every file and the index are synced before the commit's rename (the staging dir
        # too, for filesystems that do not order metadata); the commit itself is not (a lost one
        # is only fetched again). Syncing after the stream keeps it from stalling the download
        # and the readers of later members.
        for file in archive.files.values():
            cache.room(label, 0, lambda path=file.path: _fsync_path(path))
        index = staging.path / INDEX
        text = _json(archive.index(archive_bytes))
        cache.room(label, len(text), lambda: _write_synced(index, text))
        _fsync_path(staging.path)


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectContents:
    """The members of one object; every call waits (bounded) for the part of the stream it needs."""

    def __init__(self, fetcher: ObjectFetcher, object_id: str, expected_size: int | None) -> None:
        self._fetcher = fetcher
        self._object_id = object_id
        self._expected_size = expected_size

    def _archive(self) -> _Archive:
        return self._fetcher._archive(self._object_id, self._expected_size)

    def lookup(self, relpath: str) -> Member:
        """A member ('' = the root); waits until its header has passed or the archive ended."""
        return self._archive().lookup(relpath)

    def listdir(self, relpath: str) -> list[Member]:
        """A directory's members; waits for the whole archive (a partial list misleads cp -r)."""
        return self._archive().listdir(relpath)

    def open(self, relpath: str) -> Handle:
        return self._fetcher._open(self._object_id, self._expected_size, relpath)


class _TaskDownload:
    """One task file being downloaded, with the handles reading it."""

    def __init__(self, transfer: _Transfer, file: _GrowingFile, staging: Staging, final: bool):
        self.transfer = transfer
        self.file = file
        self.staging = staging
        self.final = final
        self.handles = 0


class TaskFiles(_Downloads):
    """Task output files, one download each, cached by task id + path once the task finished.

    Downloads are shared within this process; two processes may fetch the same file at once
    (the commit is an atomic rename of identical bytes, so either result is whole)."""

    def __init__(
        self,
        cache: Cache,
        open_download: Callable[[str, str], Download],
        *,
        wait_timeout: float = 60.0,
    ) -> None:
        super().__init__(cache, wait_timeout)
        self._open_download = open_download

    def open(self, task_id: str, path: str, size: int, final: bool) -> Handle:
        """A handle on a task file: from the cache when the task finished and the file is there,
        else from a download (a non-final file lives in tmp/ until its last handle goes)."""
        key = task_key(task_id, path)
        deadline = time.monotonic() + self._wait_timeout
        pin = self._cache.pin(key, deadline) if final else None
        try:
            if final:
                handle = self._cached(key, size, pin)
                if handle is not None:
                    return handle
            entry = self._join(key, task_id, path, size, final)
            try:
                fd = entry.file.open()
            except FileNotFoundError:
                self._release(entry)
                entry.transfer.wait(lambda: False, "the end of a failed download")
                raise BlfsError(f"{entry.transfer.describe()}: download ended early") from None
        except BaseException:
            if pin is not None:
                pin.release()
            raise
        return _FileHandle(entry.file, fd, pin, final, lambda: self._release(entry))

    def _join(self, key: str, task_id: str, path: str, size: int, final: bool) -> _TaskDownload:
        """The running download of this file (counting one more handle), or a new one."""
        with self._lock:
            entry = self._inflight.get((key, final))
            if isinstance(entry, _TaskDownload):
                with entry.transfer.cond:
                    if not entry.transfer.cancelled:
                        entry.handles += 1
                        return entry
            return self._start(key, task_id, path, size, final)

    def _cached(self, key: str, size: int, pin: Pin | None) -> Handle | None:
        path = self._cache.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_size != size:
            os.close(fd)
            log.warning("cached %s has a different size than listed; fetching it again", key)
            return None
        done = _Transfer(key, self._wait_timeout, finished=True)
        return _FileHandle(_GrowingFile(done, path, size, size), fd, pin)

    def _start(self, key: str, task_id: str, path: str, size: int, final: bool) -> _TaskDownload:
        """(Under self._lock.) Stages the file and starts its download thread."""
        staging = self._cache.stage(key, size, directory=False)
        transfer = _Transfer(f"task {task_id} file {path}", self._wait_timeout)
        entry = _TaskDownload(
            transfer, _GrowingFile(transfer, staging.path, size if final else None), staging, final
        )
        entry.handles = 1
        self._inflight[(key, final)] = entry
        threading.Thread(
            target=self._run,
            args=(entry, task_id, path, size),
            name=f"blfs-task-{task_id}",
            daemon=True,
        ).start()
        return entry

    def _run(self, entry: _TaskDownload, task_id: str, path: str, size: int) -> None:
        transfer = entry.transfer
        error = self._attempt(transfer, lambda: self._fetch(entry, task_id, path, size))
        if transfer.download is not None:
            transfer.download.close()
        with self._lock:
            key = (entry.staging.key, entry.final)
            if self._inflight.get(key) is entry:
                del self._inflight[key]
        with transfer.cond:
            transfer.end(error)
            drop = error is not None or (entry.handles == 0 and not entry.final)
        if drop or entry.final:
            entry.staging.discard()

    def _fetch(self, entry: _TaskDownload, task_id: str, path: str, size: int) -> None:
        transfer = entry.transfer
        transfer.download = download = self._open_download(task_id, path)
        if entry.final and download.length not in (None, size):
            raise BadArchive(
                f"{transfer.describe()}: server sends {download.length} bytes, listed {size}"
            )
        limit = size if entry.final else download.length
        reader = CountingReader(download, limit, transfer.describe())
        fd = os.open(entry.staging.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _fill(entry.file, fd, reader.read, entry.staging, transfer.describe())
            if reader.read(CHUNK) or (limit is not None and reader.count != limit):
                raise BadArchive(f"{transfer.describe()}: {reader.count} bytes, expected {limit}")
            if entry.final:  # synced before its commit; a temporary file never is
                self._cache.room(transfer.describe(), 0, lambda: os.fsync(fd))
        finally:
            os.close(fd)
        if entry.final:
            with transfer.cond:
                entry.file.path = entry.staging.commit()

    def _release(self, entry: _TaskDownload) -> None:
        """A handle closed: the last one of a non-final file cancels or drops its temporary copy."""
        with entry.transfer.cond:
            entry.handles -= 1
            if entry.handles or entry.final:
                return
            entry.transfer.cancelled = True
            ended = entry.transfer.finished or entry.transfer.error is not None
        with self._lock:
            key = (entry.staging.key, entry.final)
            if self._inflight.get(key) is entry:
                del self._inflight[key]
        if ended:
            entry.staging.discard()
