"""Metadata answers kept on disk (DESIGN §3), so a remount lists at once and an offline restart
still shows every known listing.

One SQLite file in the cache dir holds the server's raw JSON answers, by server and user (a
`scope`) and key, with the wall-clock time each was fetched. A listing of many records (a
project's objects) is kept row by row instead, each row under its listing's key and a
generation; the answer itself then names the generation, so that a listing is switched to its
new rows in one commit and one half-written never shows: a mount reads such a listing, and
any one record of it, without holding the whole answer in memory.

Several mounts may share the file, with a busy timeout. On a local filesystem it is in WAL mode;
WAL needs memory shared by every process using the file, which processes on several hosts do not
have (SQLite: "WAL does not work over a network filesystem"; on a FUSE filesystem mapping its index
killed the mount with SIGBUS), so on any other filesystem (NFS, Lustre, GPFS, FUSE…), where one
cache dir may serve a cluster, it uses a rollback journal, which relies only on the POSIX locks the
data cache needs there too. The store is an optimisation only: when the file cannot be opened, read
or written it is dropped for the rest of the mount with one log line, and the mount carries on from
memory.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blfs.mountinfo import filesystem_type
from blfs.private import FILE_MODE, private_dir, tighten

log = logging.getLogger("blfs")

FILENAME = "metadata.sqlite3"
BUSY_TIMEOUT_MS = 2000
# Filesystems only one host can use, where WAL's shared memory is sound.
LOCAL_FILESYSTEMS = frozenset(
    ("ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "bcachefs", "tmpfs", "ramfs")
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fetched REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS rows (
    scope TEXT NOT NULL,
    listing TEXT NOT NULL,
    id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    head TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (scope, listing, id, generation)
)
"""
# Rows read from the store per statement while a listing is read back: the store's lock is
# held for one batch at a time, never for a whole listing.
ROWS_BATCH = 1000


class StoreFailed(Exception):
    """The store failed part-way through reading a listing back: what was read is not all."""


@dataclass(frozen=True)
class Stored:
    """A raw answer as it was fetched, and when (seconds since the epoch)."""

    body: Any
    text: str
    fetched: float


class MetaStore:
    """Raw answers of one scope (server and user) in the shared SQLite file."""

    def __init__(self, path: Path, scope: str) -> None:
        self._scope = scope
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = _connect(path)
        except (sqlite3.Error, OSError) as exc:
            log.warning(
                "metadata cache %s unusable, keeping metadata in memory only: %s", path, exc
            )

    def load(self, key: str) -> Stored | None:
        row = self._run(
            "SELECT body, fetched FROM answers WHERE scope = ? AND key = ?", (self._scope, key)
        )
        if row is None:
            return None
        text, fetched = row
        try:
            return Stored(json.loads(text), text, float(fetched))
        except (ValueError, TypeError):
            return None

    def save(self, key: str, text: str) -> None:
        """Keeps `text` (a JSON answer) as fetched now."""
        self._run(
            "INSERT OR REPLACE INTO answers (scope, key, fetched, body) VALUES (?, ?, ?, ?)",
            (self._scope, key, time.time(), text),
        )

    def touch(self, key: str) -> None:
        """Marks the kept answer as confirmed by the server now."""
        self._run(
            "UPDATE answers SET fetched = ? WHERE scope = ? AND key = ?",
            (time.time(), self._scope, key),
        )

    @property
    def usable(self) -> bool:
        """Whether answers are still kept on disk (not after a failure dropped the store)."""
        return self._db is not None

    def save_rows(self, listing: str, generation: int, rows: list[tuple[str, str, str]]) -> bool:
        """Adds `(id, head, body)` rows to a listing's `generation` (two JSON texts: what a
        listing is built from, and the whole record); whether they were kept."""
        params = [(self._scope, listing, key, generation, h, b) for key, h, b in rows]
        sql = "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?)"
        return self._run(sql, params, many=True) is not None

    def rows(self, listing: str, generation: int) -> Iterator[tuple[str, str]]:
        """The `(id, head)` rows of a listing's generation, by id, a batch at a time."""
        after = ""
        while True:
            batch = self._all(
                "SELECT id, head FROM rows WHERE scope = ? AND listing = ? AND generation = ?"
                " AND id > ? ORDER BY id LIMIT ?",
                (self._scope, listing, generation, after, ROWS_BATCH),
            )
            if batch is None:
                raise StoreFailed("the metadata store failed while a listing was read back")
            yield from batch
            if len(batch) < ROWS_BATCH:
                return
            after = batch[-1][0]

    def row(self, listing: str, key: str) -> str | None:
        """The whole record of one row of a listing (JSON text), from its newest generation."""
        row = self._run(
            "SELECT body FROM rows WHERE scope = ? AND listing = ? AND id = ?"
            " ORDER BY generation DESC LIMIT 1",
            (self._scope, listing, key),
        )
        return None if row is None else row[0]

    def drop_rows(self, listing: str, keep: int) -> None:
        """Removes a listing's rows of every generation but `keep`."""
        self._run(
            "DELETE FROM rows WHERE scope = ? AND listing = ? AND generation != ?",
            (self._scope, listing, keep),
        )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _run(self, sql: str, params: Any, many: bool = False) -> tuple[Any, ...] | None:
        """One statement in its own transaction (`many`: once per set of `params`, answering
        `()` when done); any failure drops the store for good."""
        with self._lock:
            if self._db is None:
                return None
            try:
                with self._db:
                    if many:
                        self._db.executemany(sql, params)
                        return ()
                    return self._db.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                self._drop(exc)
                return None

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        """Every row the query answers; None when the store is (or just became) unusable."""
        with self._lock:
            if self._db is None:
                return None
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                self._drop(exc)
                return None

    def _drop(self, exc: sqlite3.Error) -> None:
        """Call with the lock held."""
        log.warning("metadata cache failed, keeping metadata in memory only: %s", exc)
        assert self._db is not None
        self._db.close()
        self._db = None


def journal_mode(directory: Path) -> str:
    """WAL where only this host can see the store, a rollback journal anywhere else (and
    where the filesystem cannot be told)."""
    try:
        local = filesystem_type(directory) in LOCAL_FILESYSTEMS
    except (OSError, ValueError, IndexError):
        local = False
    return "WAL" if local else "DELETE"


def _connect(path: Path) -> sqlite3.Connection:
    """Opens (creating it owner-only) the store, in the journal mode its filesystem allows,
    with a busy timeout."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    tighten(path)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        db.execute(f"PRAGMA journal_mode={journal_mode(path.parent)}")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.commit()
    except sqlite3.Error:
        db.close()
        raise
    return db
