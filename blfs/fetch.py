"""The fetchers: stream → members → item. One background download per object (or task file),
unpacked into its cache item while it streams; readers wait on the item for exactly the bytes
they ask for. A process that finds another one downloading an object follows that download's
staging instead of waiting for its end (see the journal in archive.py).

`Downloads` is what both fetchers share: the table of items in flight (what `blfs status` shows)
and the policy for failures, which are remembered with a growing backoff (failures.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol

import cachetools

from blfs.archive import Archive, JournalReader, JournalWriter, Tree, relative
from blfs.cache import DATA, INDEX, JOURNAL, Cache, Pin, object_key, task_key
from blfs.errors import AccessDenied, BadArchive, BlfsError, CacheFull, RemoteError, Unreachable
from blfs.extract import ArchiveStream, CountingReader, Member
from blfs.failures import FIRST_BACKOFF, MAX_BACKOFF
from blfs.item import CHUNK, Cancelled, FileHandle, GrowingFile, Item, Source
from blfs.locks import FileLock
from blfs.nodes import Handle
from blfs.private import write_private

__all__ = ["Downloads", "Handle", "Member", "ObjectContents", "ObjectFetcher", "TaskFiles"]

log = logging.getLogger("blfs.fetch")

_KEPT_ARCHIVES = 256  # complete archives (members and files) kept in memory, for reads
_KEPT_MEMBERS = 4_096  # members of committed objects' trees kept for listings (~1 MB)
_KEPT_FAILURES = 20  # recent failures shown by progress()
_FOLLOW_POLL = 0.05  # how often a follower looks at another process's download
_CHECKED_NOTE = 0.5  # seconds between a takeover's notes to the other followers while it checks
# Failures a later attempt may well not repeat, so they are not held against the key; nor is a
# server this host cannot reach (the cache's failure records are shared by every host using it,
# and the client itself fails at once while the server counts as unreachable).
_NOT_REMEMBERED = (AccessDenied, CacheFull, Cancelled, Unreachable)


class Download(Protocol):
    """What api.Client's download methods return (see blfs/api.py)."""

    url: str
    length: int | None
    bytes_read: int

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class Downloads:
    """Every download of this process, objects and task files alike: one table, one progress
    view, one failure policy."""

    def __init__(
        self,
        cache: Cache,
        *,
        stall_timeout: float = 30.0,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.cache = cache
        self.stall_timeout = stall_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._running: dict[Hashable, Item] = {}
        self._failed_recently: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_KEPT_FAILURES
        )

    def progress(self) -> list[dict[str, Any]]:
        """Downloads in flight (id, bytes_done, total, rate, error) and recent failures."""
        with self._lock:
            running = [item.progress() for item in self._running.values()]
            return running + list(self._failed_recently)

    def new_item(self, key: str, label: str) -> Item:
        return Item(self.cache, key, label, self.stall_timeout, self._failed)

    def remembered(self, key: str, label: str) -> None:
        """Raises the key's last failure while its backoff window lasts."""
        failure = self.cache.failures.pending(key)
        if failure is not None:
            when = time.strftime("%H:%M:%S", time.localtime(failure.retry_at))
            raise type(failure.error)(f"{failure.error} (not retried before {when}: {label})")

    def start(
        self,
        table_key: Hashable,
        item: Item,
        work: Callable[[], None],
        ended: Callable[[], None],
    ) -> None:
        """Runs `work` (which fills the item) in a thread of its own; `ended` after it."""
        with self._lock:
            self._running[table_key] = item
        threading.Thread(
            target=self._run,
            args=(table_key, item, work, ended),
            name=f"blfs-fetch-{item.label}",
            daemon=True,  # a killed process leaves only staging, removed at the next start
        ).start()

    def _run(
        self, table_key: Hashable, item: Item, work: Callable[[], None], ended: Callable[[], None]
    ) -> None:
        try:
            work()
        except BlfsError as exc:
            self._ended_with(item, exc)
        except Exception as exc:
            log.exception("download of %s failed", item.describe())
            self._ended_with(item, BlfsError(f"download of {item.describe()} failed: {exc}"))
        else:
            self.cache.failures.forget(item.key)
        finally:
            with self._lock:
                if self._running.get(table_key) is item:
                    del self._running[table_key]
                self._ended.notify_all()
            ended()

    def settle(self, timeout: float) -> bool:
        """Waits up to `timeout` for the downloads that have every byte to be committed, so
        that an unmount right after a copy keeps what it fetched (downloads still arriving are
        left: their staging is removed at the next start). Returns whether none is left."""

        def committed() -> bool:
            return not any(item.owner and item.done for item in self._running.values())

        with self._ended:
            if not committed():
                log.info("keeping the downloads that are complete before exiting")
            return self._ended.wait_for(committed, timeout)

    def _ended_with(self, item: Item, error: BlfsError) -> None:
        if not item.fail(error) and item.done:
            log.warning("could not keep %s in the cache: %s", item.describe(), error)

    def _failed(self, item: Item, error: BlfsError) -> None:
        """An item's first error: logged with the next attempt's time, and remembered."""
        if isinstance(error, Cancelled):
            return
        with self._lock:
            self._failed_recently.append({**item.progress(), "error": str(error)})
        if isinstance(error, _NOT_REMEMBERED) or not item.owner:
            log.warning("download of %s failed: %s", item.describe(), error)
            return
        failure = self.cache.failures.record(
            item.key, error, self._first_backoff, self._max_backoff
        )
        when = time.strftime("%H:%M:%S", time.localtime(failure.retry_at))
        log.warning(
            "download of %s failed: %s; next attempt in %.0f s (at %s)",
            item.describe(),
            error,
            failure.retry_at - time.time(),
            when,
        )


class ObjectFetcher:
    """Data-object archives: one download per object (in this process and across processes
    sharing the cache), unpacked as it streams, served from the cache once complete."""

    def __init__(self, downloads: Downloads, open_download: Callable[[str], Download]) -> None:
        self._downloads = downloads
        self._cache = downloads.cache
        self._open_download = open_download
        self._lock = threading.Lock()
        self._in_flight: dict[str, Archive] = {}
        self._complete: cachetools.LRUCache[str, Archive] = cachetools.LRUCache(_KEPT_ARCHIVES)
        self._trees: cachetools.LRUCache[str, Tree] = cachetools.LRUCache(_KEPT_MEMBERS, len)

    def contents(self, object_id: str, expected_size: int | None = None) -> ObjectContents:
        """The contents of an object; starts (or joins) its download without waiting for it
        unless the object is committed."""
        contents = self.committed(object_id, expected_size)
        if contents is None:
            self.archive(object_id, expected_size)
            contents = ObjectContents(self, object_id, expected_size)
        return contents

    def committed(self, object_id: str, expected_size: int | None = None) -> ObjectContents | None:
        """The contents of a committed object, its members known at once; None (and nothing
        started) while it is not committed. The members stay known in memory after an eviction
        (stored objects never change); a read then fetches the object again."""
        tree = self._committed_tree(object_id)
        return None if tree is None else ObjectContents(self, object_id, expected_size, tree)

    def cached(self, object_id: str) -> bool:
        return self._cache.is_complete(object_key(object_id))

    def progress(self) -> list[dict[str, Any]]:
        return self._downloads.progress()

    def _committed_tree(self, object_id: str) -> Tree | None:
        """The members of a committed object, from memory or its index (no archive made: a
        walk lists far more objects than reads keep archives for); None if not committed."""
        with self._lock:
            tree = self._trees.get(object_id)
            if tree is not None or object_id in self._in_flight:
                return tree
            archive = self._complete.get(object_id)
            if archive is not None:
                tree = archive.tree
            else:
                index = self._cache.read_index(object_key(object_id))
                if index is None:
                    return None
                tree = Tree.from_index(object_id, index)
            self._keep_tree(object_id, tree)
            return tree

    def _keep_tree(self, object_id: str, tree: Tree) -> None:
        """(Under the lock.) Keeps a committed object's tree, unless it alone exceeds the bound."""
        if len(tree) <= _KEPT_MEMBERS:
            self._trees[object_id] = tree

    def archive(self, object_id: str, expected_size: int | None) -> Archive:
        """The object's members: from memory, from the cache, or from a download it starts."""
        key = object_key(object_id)
        with self._lock:
            archive = self._in_flight.get(object_id) or self._complete.get(object_id)
            if archive is not None and archive.item.error is None:
                return archive  # a failed one, still ending, is not: its failure is remembered
            index = self._cache.read_index(key)
            if index is not None:
                archive = Archive(object_id, Item.complete(self._cache, key, f"object {object_id}"))
                archive.fill_from_index(index, self._cache.path(key) / DATA)
                self._complete[object_id] = archive
                self._keep_tree(object_id, archive.tree)
                return archive
            if self._cache.path(key).exists():
                self._cache.discard_damaged(key, "no readable index")
            self._downloads.remembered(key, f"object {object_id}")
            archive = Archive(object_id, self._downloads.new_item(key, f"object {object_id}"))
            self._in_flight[object_id] = archive
        self._downloads.start(
            key,
            archive.item,
            lambda: self._fetch(archive, expected_size),
            lambda: self._ended(archive),
        )
        return archive

    def _ended(self, archive: Archive) -> None:
        archive.item.discard()
        with self._lock:
            if self._in_flight.get(archive.object_id) is archive:
                del self._in_flight[archive.object_id]
            if archive.item.done and self._cache.is_complete(object_key(archive.object_id)):
                self._complete[archive.object_id] = archive
                self._keep_tree(archive.object_id, archive.tree)

    def _forget(self, archive: Archive) -> None:
        """Drops a stale in-memory archive (evicted by someone) so the next access refetches."""
        with self._lock:
            if self._complete.get(archive.object_id) is archive:
                del self._complete[archive.object_id]

    def open(self, object_id: str, expected_size: int | None, relpath: str) -> Handle:
        """A handle on a member, pinned; an entry evicted or found damaged on the way is
        fetched again."""
        for _ in range(3):
            archive = self.archive(object_id, expected_size)
            handle = self._open_member(archive, relpath)
            if handle is not None:
                return handle
        raise BlfsError(f"object {object_id} vanished from the cache three times while opened")

    def _open_member(self, archive: Archive, relpath: str) -> Handle | None:
        item, file = archive.item, archive.file(relpath)
        pin = item.pin()
        try:
            fd = self._open_file(archive, file)
        except BaseException:
            pin.release()
            raise
        if fd is None:
            pin.release()
            self._forget(archive)  # it was complete, then evicted: fetch it again
            return None
        if item.done and os.fstat(fd).st_size != file.size:
            os.close(fd)
            pin.release()
            self._cache.discard_damaged(item.key, f"{relpath!r} is not {file.size} bytes long")
            self._forget(archive)
            return None
        return FileHandle(item, file, fd, pin)

    def _open_file(self, archive: Archive, file: GrowingFile) -> int | None:
        """(Pinned.) An fd on a member's file where it is now: where the archive last saw it, or
        in the entry another process committed since (its rename moved the staging a follower
        reads, and may come just before this open); None if it is in neither (evicted)."""
        try:
            return archive.item.open(file)
        except FileNotFoundError:
            pass
        archive.item.wait(lambda: False, "the end of a download")
        if not self._take_committed(archive):
            return None
        try:
            return archive.item.open(file)
        except FileNotFoundError:
            return None

    # -- the download (or following another process's) -----------------------------------------
    def _fetch(self, archive: Archive, expected_size: int | None) -> None:
        """Downloads the object, or takes what another process holding its lock downloads."""
        lock = self._cache.fetch_lock(object_key(archive.object_id))
        try:
            while not lock.try_acquire():
                if self._take_committed(archive):
                    return
                staging = lock.read_note()
                tmp = self._cache.root / "tmp"
                if staging and self._follow(archive, expected_size, tmp / staging, lock):
                    return
                archive.item.watch("another process to start its download")
                time.sleep(_FOLLOW_POLL)
            previous = lock.read_note()  # left by a holder that died, if any
            lock.write_note("")
            if self._take_committed(archive):
                return
            archive.item.owner = True
            if not (previous and self._resume(archive, expected_size, previous, lock)):
                self._download(archive, expected_size, lock)
        finally:
            lock.release(unlink=True)

    def _resume(
        self, archive: Archive, expected_size: int | None, name: str, lock: FileLock
    ) -> bool:
        """(Holding the fetch lock.) Takes over the staging `name` of a download whose process
        died, which other processes may still be reading; False if it is not to be had."""
        staging = self._cache.root / "tmp" / name
        try:
            journal = JournalReader(staging / JOURNAL)
        except (FileNotFoundError, NotADirectoryError):
            return False
        with contextlib.closing(journal):
            if not self._took_over(archive, staging, lock, _Follower(archive, staging, journal)):
                return False
            self._download(archive, expected_size, lock, resumed=len(archive.order))
        return True

    def _take_committed(self, archive: Archive) -> bool:
        """Serves the committed entry (another process finished it) if there is one."""
        key = object_key(archive.object_id)
        index = self._cache.read_index(key)
        if index is None:
            return False
        archive.fill_from_index(index, self._cache.path(key) / DATA)
        archive.item.finish()
        return True

    def _download(
        self, archive: Archive, expected_size: int | None, lock: FileLock, resumed: int = 0
    ) -> None:
        """Streams the object into a new staging entry, or (`resumed` members journaled) into
        the one this process took over, then commits it."""
        item = archive.item
        download = self._open_download(archive.object_id)
        with contextlib.closing(download):
            item.source = download
            limit = download.length if download.length is not None else expected_size
            if download.length is not None and expected_size not in (None, download.length):
                log.warning(
                    "%s: Content-Length %d differs from the recorded size %d",
                    item.describe(),
                    download.length,
                    expected_size,
                )
            if resumed:
                assert item.staging is not None
                staging = item.staging.path
            else:
                staging = item.stage(limit or 0, directory=True)
            journal = JournalWriter(staging / JOURNAL)
            if resumed:
                journal.end_torn_line()
            lock.write_note(staging.name)
            try:
                archive_bytes = self._unpack(archive, download, staging, limit, journal, resumed)
                journal.end(archive_bytes)
            finally:
                journal.close()
        item.finish()  # the listing is answered now; syncing and the commit are nobody's wait
        self._commit(archive, archive_bytes)

    def _unpack(
        self,
        archive: Archive,
        download: Download,
        staging: Path,
        limit: int | None,
        journal: JournalWriter,
        resumed: int,
    ) -> int:
        """Streams the archive's members into the staging dir; returns the archive's bytes. The
        first `resumed` members are those another process journaled before it died: checked
        against the stream and their files completed in place, so their readers read on."""
        item = archive.item
        data = staging / DATA
        item.make_dir(data)
        stream = ArchiveStream(download, limit, item.describe())
        journaled = archive.order[:resumed]
        for position, (member, read) in enumerate(stream.members()):
            item.check_running()
            path = data / member.name
            if position < resumed:
                self._resume_member(archive, journaled[position], member, read, path, journal)
                continue
            if read is None:
                item.make_dir(path)
                archive.publish(member, None)
                journal.member(member)
                continue
            if resumed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # made by the dead writer before it journaled the member
            fd = item.new_file(path)
            try:
                file = GrowingFile(path, member.size)
                archive.publish(member, file)
                journal.member(member)
                item.fill(file, fd, read)
            finally:
                os.close(fd)
            if file.written != member.size:
                raise BadArchive(f"{item.describe()} member {member.name!r}: truncated")
        return stream.finish()

    def _resume_member(
        self,
        archive: Archive,
        journaled: Member,
        member: Member,
        read: Callable[[int], bytes | memoryview] | None,
        path: Path,
        journal: JournalWriter,
    ) -> None:
        """A member another process began: the bytes it wrote must be the stream's, the rest is
        appended to the same file. While they are checked, the journal says so now and then, so
        that the other followers see a download that goes on."""
        item = archive.item
        if member != journaled:
            raise BadArchive(
                f"{item.describe()}: {member.name!r} is not what was downloaded before"
            )
        if read is None:
            return
        file = archive.files[member.name]
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            present = min(os.fstat(fd).st_size, member.size)
            checked, noted = 0, time.monotonic()
            while checked < present:
                data = read(min(CHUNK, present - checked))
                if not data or os.pread(fd, len(data), checked) != data:
                    raise BadArchive(f"{item.describe()}: {member.name!r} differs from before")
                checked += len(data)
                if time.monotonic() - noted >= _CHECKED_NOTE:
                    journal.checked()
                    noted = time.monotonic()
            item.grown(file, max(file.written, present))
            item.fill(file, fd, read)
        finally:
            os.close(fd)
        if file.written != member.size:
            raise BadArchive(f"{item.describe()} member {member.name!r}: truncated")

    def _commit(self, archive: Archive, archive_bytes: int) -> None:
        """What a power loss must not leave behind a committed name: files with missing bytes.
        So every file and the index are synced before the commit's rename (the staging dir too,
        for filesystems that do not order metadata); the commit itself is not (a lost one is
        only fetched again)."""
        item = archive.item
        assert item.staging is not None
        staging = item.staging.path
        for file in archive.files.values():
            item.sync(file.path)
        index = archive.index(archive_bytes)
        item.spaced(0, lambda: write_private(staging / INDEX, json.dumps(index).encode()))
        item.sync(staging / INDEX)
        item.sync(staging)
        item.commit(index["bytes"], lambda final: archive.rebase(final / DATA))

    def _follow(
        self, archive: Archive, expected_size: int | None, staging: Path, lock: FileLock
    ) -> bool:
        """Reads another process's download as it arrives: members from its journal, bytes
        from the files' sizes; its end is the committed entry. Should that process die first
        (its fetch lock comes free with the staging still there), this one takes over. False
        when the download named was gone before anything of it was read, and nothing of it
        is to be had: the caller looks again."""
        item = archive.item
        try:
            journal = JournalReader(staging / JOURNAL)
        except (FileNotFoundError, NotADirectoryError):
            return self._followed_ended(archive, again=True)
        log.info("reading %s as another process downloads it", item.describe())
        with contextlib.closing(journal):
            follower = _Follower(archive, staging, journal)
            while not follower.step():
                if not staging.is_dir():
                    return self._followed_ended(archive)
                if self._took_over(archive, staging, lock, follower):
                    self._download(archive, expected_size, lock, resumed=len(archive.order))
                    return True
                item.watch("the download in another process")
                time.sleep(_FOLLOW_POLL)
            item.finish()
            while staging.is_dir() and not self._cache.is_complete(item.key):
                if self._took_over(archive, staging, lock, follower):  # all there, not committed
                    self._commit(archive, follower.archive_bytes)
                    return True
                time.sleep(_FOLLOW_POLL)
        with item.cond:
            if self._cache.is_complete(item.key):
                archive.rebase(self._cache.path(item.key) / DATA)
        return True

    def _took_over(
        self, archive: Archive, staging: Path, lock: FileLock, follower: _Follower
    ) -> bool:
        """Whether this process has taken over the followed download, which it does once the
        fetch lock comes free (its process died or is ending) with the staging still there and
        no longer held by its writer."""
        if not (lock.held or lock.try_acquire()):
            return False
        adopted = self._cache.adopt(archive.item.key, staging)
        if adopted is None:  # its writer is still removing it: the staging will go
            return False
        follower.step()  # the last lines and bytes the dead process wrote
        log.warning(
            "taking over the download of %s from a process that ended", archive.item.describe()
        )
        archive.item.adopt(adopted, sum(file.written for file in archive.files.values()))
        return True

    def _followed_ended(self, archive: Archive, again: bool = False) -> bool:
        """The followed download ended before its journal said so: True once its entry is
        taken; else its error, or (`again`: nothing of it was read yet) False, so that the
        caller looks again (the fetch lock, a new download's note, or the entry committed
        meanwhile) rather than fail a reader for a download it never saw."""
        if self._take_committed(archive):
            return True
        failure = self._cache.failures.get(archive.item.key)
        if failure is not None and failure.retry_at > time.time():
            raise failure.error
        if again:
            return False
        raise RemoteError(f"{archive.item.describe()}: the download in another process ended")


class _Follower:
    """One pass at a time over another process's staging: new journal lines, grown files."""

    def __init__(self, archive: Archive, staging: Path, journal: JournalReader) -> None:
        self._archive = archive
        self._data = staging / DATA
        self._journal = journal
        self._growing: list[GrowingFile] = []
        self._source = archive.item.source = Source()
        self.archive_bytes = 0  # the archive's length, once the journal's end says it

    def step(self) -> bool:
        """Publishes what arrived since the last step; True once the archive is verified."""
        ended = False
        for line in self._journal.new_lines():
            if line[0] == "end":
                ended, self.archive_bytes = True, line[1]
            elif line[0] == "checked":
                self._archive.item.going_on()
            else:
                self._publish(Member(*line[1:]))
        self._grow()
        return ended and not self._growing

    def _publish(self, member: Member) -> None:
        file = None if member.is_dir else GrowingFile(self._data / member.name, member.size)
        self._archive.publish(member, file)
        if file is not None:
            self._growing.append(file)

    def _grow(self) -> None:
        for file in list(self._growing):
            try:
                size = os.stat(file.path).st_size
            except FileNotFoundError:
                continue
            if size > file.written:
                self._source.bytes_read += size - file.written
                self._archive.item.grown(file, min(size, file.size or size))
            if file.written == file.size:
                self._growing.remove(file)


class ObjectContents:
    """The members of one object: a committed object's from its tree at once, else every call
    waits (bounded) for the part of the stream it needs."""

    def __init__(
        self,
        fetcher: ObjectFetcher,
        object_id: str,
        expected_size: int | None,
        tree: Tree | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._object_id = object_id
        self._expected_size = expected_size
        self._tree = tree

    def _archive(self) -> Archive:
        return self._fetcher.archive(self._object_id, self._expected_size)

    def lookup(self, relpath: str) -> Member:
        """A member ('' = the root); waits until its header has passed or the archive ended."""
        if self._tree is None:
            return self._archive().lookup(relpath)
        return self._tree.lookup(relative(relpath))

    def listdir(self, relpath: str) -> list[Member]:
        """A directory's members; waits for the whole archive (a partial list misleads cp -r)."""
        if self._tree is None:
            return self._archive().listdir(relpath)
        return self._tree.listdir(relative(relpath))

    def open(self, relpath: str) -> Handle:
        return self._fetcher.open(self._object_id, self._expected_size, relpath)


class _TaskDownload:
    """One task file being downloaded, with the handles reading it."""

    def __init__(self, item: Item, file: GrowingFile, final: bool) -> None:
        self.item = item
        self.file = file
        self.final = final
        self.handles = 1


class TaskFiles:
    """Task output files, one download each, cached by task id + path once the task finished.

    Downloads are shared within this process; two processes may fetch the same file at once
    (the commit is an atomic rename of identical bytes, so either result is whole)."""

    def __init__(self, downloads: Downloads, open_download: Callable[[str, str], Download]) -> None:
        self._downloads = downloads
        self._cache = downloads.cache
        self._open_download = open_download
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, bool], _TaskDownload] = {}

    def open(self, task_id: str, path: str, size: int, final: bool) -> Handle:
        """A handle on a task file: from the cache when the task finished and the file is there,
        else from a download (a non-final file lives in tmp/ until its last handle goes)."""
        key = task_key(task_id, path)
        deadline = time.monotonic() + self._downloads.stall_timeout
        pin = self._cache.pin(key, deadline) if final else None
        try:
            handle = self._cached(key, size, pin) if final else None
            return handle or self._downloading(key, task_id, path, size, final, pin)
        except BaseException:
            if pin is not None:
                pin.release()
            raise

    def _downloading(
        self, key: str, task_id: str, path: str, size: int, final: bool, pin: Pin | None
    ) -> Handle:
        entry = self._join(key, task_id, path, size, final)
        try:
            fd = entry.item.open(entry.file)
        except BaseException:
            self._release(entry)
            raise
        return FileHandle(entry.item, entry.file, fd, pin, final, lambda: self._release(entry))

    def _join(self, key: str, task_id: str, path: str, size: int, final: bool) -> _TaskDownload:
        """The running download of this file (counting one more handle), or a new one."""
        with self._lock:
            entry = self._in_flight.get((key, final))
            if entry is not None:
                with entry.item.cond:
                    if entry.item.error is None:
                        entry.handles += 1
                        return entry
            label = f"task {task_id} file {path}"
            self._downloads.remembered(key, label)
            item = self._downloads.new_item(key, label)
            staging = item.stage(size, directory=False)
            entry = _TaskDownload(item, GrowingFile(staging, size if final else None), final)
            self._in_flight[(key, final)] = entry
        self._downloads.start(
            (key, final),
            item,
            lambda: self._fetch(entry, task_id, path, size),
            lambda: self._ended(entry),
        )
        return entry

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
        done = Item.complete(self._cache, key, key)
        return FileHandle(done, GrowingFile(path, size, size), fd, pin)

    def _fetch(self, entry: _TaskDownload, task_id: str, path: str, size: int) -> None:
        item = entry.item
        item.owner = True
        download = self._open_download(task_id, path)
        with contextlib.closing(download):
            item.source = download
            if entry.final and download.length not in (None, size):
                raise BadArchive(
                    f"{item.describe()}: server sends {download.length} bytes, listed {size}"
                )
            limit = size if entry.final else download.length
            self._copy(entry, CountingReader(download, limit, item.describe()), limit)
        item.finish()  # its readers are served; syncing and the commit are nobody's wait
        if entry.final:  # synced before its commit; a temporary file never is
            item.sync(entry.file.path)
            item.commit(size, lambda final: setattr(entry.file, "path", final))

    def _copy(self, entry: _TaskDownload, reader: CountingReader, limit: int | None) -> None:
        item = entry.item
        fd = os.open(entry.file.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            item.fill(entry.file, fd, reader.read)
            if reader.read(CHUNK) or (limit is not None and reader.count != limit):
                raise BadArchive(f"{item.describe()}: {reader.count} bytes, expected {limit}")
        finally:
            os.close(fd)

    def _ended(self, entry: _TaskDownload) -> None:
        """A download ended: a final file is committed or dropped, a temporary one stays while
        handles read it."""
        with self._lock:
            if self._in_flight.get((entry.item.key, entry.final)) is entry:
                del self._in_flight[(entry.item.key, entry.final)]
            keep = not entry.final and entry.handles and entry.item.error is None
        if not keep:
            entry.item.discard()

    def _release(self, entry: _TaskDownload) -> None:
        """A handle closed: the last one of a non-final file cancels or drops its temporary copy."""
        with self._lock:
            entry.handles -= 1
            if entry.handles or entry.final:
                return
            if self._in_flight.get((entry.item.key, entry.final)) is entry:
                del self._in_flight[(entry.item.key, entry.final)]
        if not entry.item.fail(Cancelled(f"{entry.item.describe()}: no reader left")):
            entry.item.discard()  # it had ended: nothing else will drop the copy
