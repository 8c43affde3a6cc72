"""The on-disk cache of complete objects and task files: layout, locks, staging, the size bound.

Layout under the root (all on one filesystem, so a rename is atomic; every directory 0700, every
file 0600 whatever the umask, and an older cache with looser modes is tightened when opened):
    objects/<id>/index.json, objects/<id>/data/…   a complete object (member index + files)
    objects/<id>/journal                            the members as they arrived (see below)
    tasks/<task_id>/<path>                          a complete task output file
    tmp/<uuid>[.lock]                               staging entries; the lock file holds the
                                                    bytes reserved for it, locked by its writer
    tmp/evict-<uuid>                                an entry on its way out (see below)
    locks/<digest>.fetch | .use, locks/cache.lock   per-key and cache-wide lock files
    failures/<digest>                               the last failed download of a key (failures.py)
    ledger                                          the complete entries and their sizes (below)

Something is complete only once it has appeared by one `rename` from `tmp/`, with every byte and
the index synced before; nothing else is ever written under `objects/` or `tasks/`. Eviction
renames an entry into `tmp/evict-…` under the cache lock and deletes it after letting the lock go,
so nobody waits for a big entry's deletion. Whatever else is found there (a stray file,
an object dir without a readable index, a file whose size disagrees with its index) is damage:
it is discarded when seen and fetched again on next use, never served.

Locking is `fcntl.flock`: `<key>.fetch` exclusive while one process downloads that key, which
writes the name of its staging entry into that file so other processes can read the members as
they arrive (`journal` in the staging dir: one JSON line per member header, then the end or the
failure; bytes present = the sizes of the files). Followers hold a shared lock on the journal:
when the downloader dies, its staging is not removed while followed, and the first follower to
take the fetch lock adopts it (`adopt`) and finishes the download into it, so the files every
follower has open keep growing; `<key>.use` shared while a process has the
entry open, and taken exclusive (non-blocking) by eviction, which skips entries it cannot lock;
`cache.lock` exclusive while the cache is scanned, space reserved, entries evicted or committed.
Locks die with their process. On NFS, Linux maps flock to POSIX byte-range locks (so every lock
file is opened read-write); that needs a working lock manager. Last use is the mtime of
`index.json` (objects) or of the file (tasks), set when opened.

The bound is kept without rescanning the cache: every process holds the sizes of the complete
entries in memory and learns what other processes committed or evicted from the `ledger`, an
append-only file of one line per change, written under the cache lock (before a commit's rename,
after an eviction's). So each lock session reads only the lines it has not seen, and the worst a
process killed between the two steps leaves is an entry counted that is not there, dropped when
eviction reaches it. A process rebuilds the ledger from the disk when it starts (after a power
loss its tail may be lost) or finds it torn or unreadable, and compacts it when it has grown
long; a new first line tells the others to read it again from the start. Eviction order is a heap
of last uses as last seen, each checked by one stat when it reaches the top (a use only moves an
entry later), so evicting costs O(log n) per entry rather than a sort of the whole cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blfs.errors import BlfsError, CacheFull, LocksRefused, NotFound, RemoteTimeout
from blfs.eviction import EvictionOrder
from blfs.failures import Failures
from blfs.ledger import Ledger
from blfs.locks import FileLock, host_only, locked_by_anyone
from blfs.private import DIR_MODE, FILE_MODE, private_dir, tighten_children

log = logging.getLogger("blfs.cache")

INDEX = "index.json"
LEDGER = "ledger"
DATA = "data"
JOURNAL = "journal"  # an object's members as they arrive (archive.py), kept in its staging dir
_DOOMED = "evict-"  # tmp/evict-<uuid>: an entry renamed out of the way, removed after the lock
LOCK_WAIT = 60.0  # bound on waiting for the cache-wide lock or a pin (held for milliseconds)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_RESERVATION_WIDTH = 20
_LAYOUT = ("objects", "tasks", "tmp", "locks")


@dataclass(frozen=True)
class CacheEntry:
    """A complete entry: `objects/<id>` or `tasks/<task_id>/<path>`."""

    key: str
    size: int
    last_use: float


def object_key(object_id: str) -> str:
    return f"objects/{_checked_id(object_id)}"


def task_key(task_id: str, path: str) -> str:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or "\x00" in path:
        raise NotFound(f"not a task file path: {path!r}")
    return f"tasks/{_checked_id(task_id)}/{'/'.join(parts)}"


def lock_path(root: Path, key: str, kind: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return root / "locks" / f"{digest}.{kind}"


def settled(root: Path, key: str) -> bool:
    """Whether no process is downloading `key` into the cache at `root` any more (it was
    committed, or failed): a reader's listing comes before the commit, which is off its path."""
    probe = FileLock(lock_path(root, key, "fetch"), exclusive=False)
    if not probe.try_acquire():
        return False
    probe.release()
    return True


def _checked_id(identifier: str) -> str:
    if not _SAFE_ID.match(identifier) or identifier in (".", ".."):
        raise NotFound(f"not a valid id: {identifier!r}")
    return identifier


class Staging:
    """An entry being written under tmp/, with the bytes reserved for it (Cache.stage)."""

    def __init__(self, key: str, path: Path, lock: FileLock, reserved: int) -> None:
        self.key = key
        self.path = path
        self.lock = lock
        self.reserved = reserved

    def record(self) -> None:
        """(Under the cache lock.) Publishes the reservation to the other processes."""
        os.pwrite(self.lock.fd, f"{self.reserved:0{_RESERVATION_WIDTH}d}".encode(), 0)


class Pin:
    """Keeps one entry from eviction (in this process and, by a shared flock, in others)."""

    def __init__(self, cache: Cache, key: str) -> None:
        self._cache = cache
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._cache.unpin(self.key)


class Cache:
    """A persistent, size-bounded store shared by every mount and process using `root`: the
    bound, the ledger and the eviction order. What is written into an entry is up to its item."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        _layout(self.root)
        self.failures = Failures(self.root / "failures")
        self._mutex = threading.Lock()
        self._cache_mutex = threading.Lock()  # threads queue here rather than poll the flock
        self._pins: dict[str, tuple[int, FileLock]] = {}
        self._doomed: list[Path] = []  # renamed into tmp/ under the lock, removed after it
        self._ledger = Ledger(self.root / LEDGER)
        self._order = EvictionOrder(self._last_use)
        try:
            with self.locked():
                self._rebuild()
                self._reservations(exclude=None)  # removes staging left by killed processes
        except LocksRefused as exc:
            raise LocksRefused(
                f"cannot use the cache dir {self.root}: its filesystem refuses file locks"
                f" ({exc}), which sharing it between processes needs; give a cache dir on a"
                " local disk (--cache-dir DIR), or mount that filesystem with working locks"
                " (NFS: without 'nolock' and with rpc.statd running; Lustre: -o flock)"
            ) from None
        for path in (self.root / "tmp").glob(_DOOMED + "*"):
            _remove_path(path)  # a killed process's; one still being removed is removed twice
        local = host_only(self.root)
        if local is not None:
            log.warning(
                "the cache dir %s is on %s: its locks hold on this host only, so mounts on other"
                " hosts must not share it (each would download and evict unseen by the others);"
                " give them a cache dir each (--cache-dir DIR), or mount it with shared locks"
                " (NFS: without 'nolock' or 'local_lock'; Lustre: -o flock)",
                self.root,
                local,
            )

    # -- paths and locks -------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / key

    def _lock_path(self, key: str, kind: str) -> Path:
        return lock_path(self.root, key, kind)

    def fetch_lock(self, key: str) -> FileLock:
        """The lock one process holds while it downloads `key`."""
        return FileLock(self._lock_path(key, "fetch"), exclusive=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The cache-wide lock (not reentrant) with the ledger caught up: reservations,
        eviction, commits."""
        deadline = time.monotonic() + LOCK_WAIT
        if not self._cache_mutex.acquire(timeout=LOCK_WAIT):
            raise RemoteTimeout(f"timed out waiting for the cache lock in {self.root}")
        lock = FileLock(self.root / "locks" / "cache.lock", exclusive=True)
        try:
            lock.acquire(deadline, f"the cache lock in {self.root}")
            self._catch_up()
            yield
        finally:
            doomed, self._doomed = self._doomed, []
            lock.release()
            self._cache_mutex.release()
            for path in doomed:  # deleting a big entry takes long: nobody waits for it
                _remove_path(path)

    # -- complete entries ------------------------------------------------------------------
    def is_complete(self, key: str) -> bool:
        marker = self.root / key / INDEX if key.startswith("objects/") else self.root / key
        return os.path.isfile(marker)

    def read_index(self, key: str) -> dict[str, Any] | None:
        """The member index of a complete object; None if it is not there or not readable."""
        try:
            index = json.loads((self.root / key / INDEX).read_bytes())
            members = index["members"]
            if isinstance(index["bytes"], int) and isinstance(members, list):
                return index
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def touch(self, key: str) -> None:
        """Marks an entry as just used (its LRU position)."""
        marker = self.root / key / INDEX if key.startswith("objects/") else self.root / key
        with suppress(FileNotFoundError):
            os.utime(marker)

    def pin(self, key: str, deadline: float) -> Pin:
        """Pins an entry (complete or not) against eviction until the Pin is released."""
        with self._mutex:
            held = self._pins.get(key)
            if held:
                self._pins[key] = (held[0] + 1, held[1])
                return Pin(self, key)
        lock = FileLock(self._lock_path(key, "use"), exclusive=False)
        lock.acquire(deadline, f"eviction of {key} to finish")
        with self._mutex:
            held = self._pins.get(key)
            if held:
                lock.release()
                self._pins[key] = (held[0] + 1, held[1])
            else:
                self._pins[key] = (1, lock)
        self.touch(key)
        return Pin(self, key)

    def unpin(self, key: str) -> None:
        """(Pin.release.) The last release of a key trims the cache to its bound."""
        with self._mutex:
            count, lock = self._pins[key]
            if count > 1:
                self._pins[key] = (count - 1, lock)
                return
            del self._pins[key]
            lock.release()
        self.trim()

    def discard_damaged(self, key: str, why: str) -> None:
        """Removes an entry found damaged (it is fetched again on next use), even if in use:
        open files stay readable, and nothing may be served from it any more."""
        log.warning("discarding damaged cache entry %s: %s", key, why)
        with self.locked():
            self._remove(key)

    # -- staging and space ---------------------------------------------------------------------
    def stage(self, key: str, reserve: int, directory: bool) -> Staging:
        """A new staging entry (a directory or an empty file) with `reserve` bytes set aside,
        evicting least-recently-used entries to stay within the bound where possible."""
        name = uuid.uuid4().hex
        path = self.root / "tmp" / name
        with self.locked():
            self._evict_for(reserve, exclude=None)
            lock = FileLock(path.with_name(name + ".lock"), exclusive=True)
            if not lock.try_acquire():
                raise BlfsError(f"cannot lock new staging entry {path}")
            staging = Staging(key, path, lock, reserve)
            try:
                staging.record()
                if directory:
                    path.mkdir(mode=DIR_MODE)
                else:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            except OSError as exc:
                self.discard(staging)
                raise CacheFull(f"cannot create a staging entry in {self.root}: {exc}") from None
        return staging

    def reserve(self, staging: Staging, written: int) -> None:
        """Sets more aside (evicting) once `written` bytes have passed the reservation."""
        if written <= staging.reserved:
            return
        staging.reserved = written + max(64 << 20, written // 4)
        with self.locked():
            self._evict_for(staging.reserved, exclude=staging.path.name)
            staging.record()

    def free_disk(self, needed: int) -> int:
        """Evicts until the filesystem has `needed` bytes free (a full disk); the bytes freed."""

        def enough(_: int) -> bool:
            stats = os.statvfs(self.root)
            return stats.f_bavail * stats.f_frsize >= needed + (1 << 20)

        with self.locked():
            return self._evict_until(enough)

    def commit(self, staging: Staging, size: int) -> Path:
        """(Under the cache lock: the caller holds `locked()`, so that it can make the rename
        atomic with its own state too.) Renames the staged entry into place and returns its
        final path."""
        final = self.root / staging.key
        if staging.key.startswith("objects/") and self.read_index(staging.key) is not None:
            self._doom(staging.path)  # another writer finished first
        else:
            self._remove(staging.key)  # a damaged leftover, if any
            private_dir(final.parent)
            self._admit(staging.key, size)
            os.replace(staging.path, final)
        staging.lock.release(unlink=True)
        return final

    def adopt(self, key: str, path: Path) -> Staging | None:
        """The staging entry `path` of a download of `key` whose process ended before its
        commit, taken over by a process that holds the key's fetch lock and follows it (its
        followers keep it from removal); None if it is gone or its writer still holds it."""
        with self.locked():
            lock = FileLock(path.with_name(path.name + ".lock"), exclusive=True)
            if not lock.try_acquire():
                return None
            if not path.is_dir():  # its writer removed it before letting its lock go
                lock.release(unlink=True)
                return None
            try:
                reserved = int(os.pread(lock.fd, _RESERVATION_WIDTH, 0) or 0)
            except ValueError:
                reserved = 0
            return Staging(key, path, lock, reserved)

    def discard(self, staging: Staging) -> None:
        """Removes whatever was staged; safe to call after commit()."""
        _remove_path(staging.path)
        staging.lock.release(unlink=True)

    def trim(self) -> None:
        """Evicts least-recently-used entries until the cache is within its bound."""
        with self.locked():
            self._evict_for(0, exclude=None)

    def _evict_for(self, needed: int, exclude: str | None) -> None:
        """(Under the cache lock.) Makes `needed` more bytes fit within the bound if it can."""
        over = self._ledger.used + self._reservations(exclude) + needed - self.max_bytes
        if over > 0:
            self._evict_until(lambda freed: freed >= over)

    def _evict_until(self, enough: Callable[[int], bool]) -> int:
        """(Under the cache lock.) Evicts unpinned entries, least recently used first, until
        `enough(bytes freed)`; returns the bytes freed."""
        return self._order.evict_until(self._ledger.sizes, self._evict, enough)

    def _last_use(self, key: str) -> float | None:
        """The mtime that marks an entry's last use; None (and recorded) if it is gone."""
        marker = self.root / key / INDEX if key.startswith("objects/") else self.root / key
        try:
            return os.stat(marker).st_mtime
        except FileNotFoundError:
            self._remove(key)
            return None

    def _evict(self, key: str) -> bool:
        """(Under the cache lock.) Removes one unpinned entry whole; False if it is in use."""
        with self._mutex:
            if key in self._pins:
                return False
            lock = FileLock(self._lock_path(key, "use"), exclusive=True)
            if not lock.try_acquire():
                return False
        try:
            removed = self._remove(key)
        finally:
            lock.release(unlink=True)
        if removed:
            log.info("evicted %s from the cache", key)
        return removed

    def _remove(self, key: str) -> bool:
        """(Under the cache lock.) Takes an entry (or a damaged leftover) off the disk and the
        ledger: renamed into tmp/, so it vanishes at once and whole, and deleted once the lock
        is let go."""
        removed = self._doom(self.root / key)
        if key in self._ledger.sizes:
            self._ledger.append("-", key)
        if not removed:
            return False
        self._remove_empty_parents(self.root / key)
        return True

    def _doom(self, path: Path) -> bool:
        """(Under the cache lock.) Renames `path` out of the way, to be deleted after the lock;
        False if it is not there."""
        doomed = self.root / "tmp" / f"{_DOOMED}{uuid.uuid4().hex}"
        try:
            os.rename(path, doomed)
        except (FileNotFoundError, NotADirectoryError):
            return False
        self._doomed.append(doomed)
        return True

    def _remove_empty_parents(self, path: Path) -> None:
        parent = path.parent
        while parent != self.root and parent.parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def _reservations(self, exclude: str | None) -> int:
        """(Under the cache lock.) Bytes reserved by live staging entries; removes dead ones."""
        tmp = self.root / "tmp"
        total = 0
        live = set()
        for lock_path in tmp.glob("*.lock"):
            name = lock_path.name[: -len(".lock")]
            probe = FileLock(lock_path, exclusive=False)
            if probe.try_acquire():
                if not locked_by_anyone(tmp / name / JOURNAL):  # nobody follows it to take over
                    self._doom(tmp / name)
                    probe.release(unlink=True)
                    continue
                probe.release()
            live.add(name)
            if name != exclude:
                with suppress(OSError, ValueError), open(lock_path, "rb") as file:
                    total += int(file.read(_RESERVATION_WIDTH) or 0)
        for path in tmp.iterdir():
            name = path.name
            if not name.endswith(".lock") and name not in live and not name.startswith(_DOOMED):
                self._doom(path)
        return total

    def _admit(self, key: str, size: int) -> None:
        """(Under the cache lock, before the rename that commits it.) Counts a new entry."""
        try:
            self._ledger.append("+", key, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CacheFull(f"no space left in the cache {self.root} to record {key}") from None
        self._order.add(key)

    def _catch_up(self) -> None:
        """(Under the cache lock.) Learns what other processes committed and evicted."""
        epoch = self._ledger.epoch
        added = self._ledger.catch_up()
        if added is None:
            self._rebuild()
            return
        if self._ledger.epoch != epoch:
            self._order.reset(())
        for key in added:
            self._order.add(key)

    def _rebuild(self) -> None:
        """(Under the cache lock.) Makes the ledger match the complete entries on disk, taking
        sizes it already knows from it (entries never change) and the rest from their index;
        whatever is not a complete entry is discarded."""
        known = self._ledger.sizes
        sizes = {}
        for child in os.scandir(self.root / "objects"):
            key = f"objects/{child.name}"
            size = self._object_size(key, known, child.is_dir(follow_symlinks=False))
            if size is None:
                log.warning("discarding damaged cache entry %s: no readable index", key)
                self._remove(key)
            else:
                sizes[key] = size
        tasks = self.root / "tasks"
        for directory, _, files in os.walk(tasks):
            for name in files:
                path = os.path.join(directory, name)
                key = "tasks/" + os.path.relpath(path, tasks)
                with suppress(FileNotFoundError):
                    sizes[key] = known[key] if key in known else os.stat(path).st_size
        self._ledger.rewrite(sizes)
        self._order.reset(sizes)

    def _object_size(self, key: str, known: dict[str, int], is_dir: bool) -> int | None:
        """The size of a complete object on disk; None if it is damaged or not an object."""
        if not is_dir or not self.is_complete(key):
            return None
        if key in known:
            return known[key]
        index = self.read_index(key)
        return None if index is None else index["bytes"]

    # -- what the CLI shows --------------------------------------------------------------------
    def usage(self) -> tuple[int, int]:
        """(bytes used by complete entries and reservations, the bound)."""
        with self.locked():
            return self._ledger.used + self._reservations(None), self.max_bytes

    def entries(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        with self.locked():
            entries = []
            for key, size in list(self._ledger.sizes.items()):
                last_use = self._last_use(key)
                if last_use is not None:
                    entries.append(CacheEntry(key, size, last_use))
        return sorted(entries, key=lambda entry: entry.last_use)

    def clear(self, keys: Iterable[str] | None = None) -> list[str]:
        """Evicts the given entries (default: all) and forgets their failures; entries in use
        are skipped. Returns the keys removed."""
        if keys is None:
            self.failures.forget_all()
        for key in keys or ():
            self.failures.forget(key)
        with self.locked():
            wanted = list(self._ledger.sizes) if keys is None else list(keys)
            return [key for key in wanted if self._evict(key)]


def _layout(root: Path) -> None:
    """The cache's directories, owner-only, with anything else found in their place removed."""
    private_dir(root)
    for name in _LAYOUT:
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        private_dir(path)
    tighten_children(root)
    tighten_children(root / "objects")
    tighten_children(root / "tasks")


def _remove_path(path: Path) -> None:
    """Removes a file or a whole directory, whichever it is; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)
