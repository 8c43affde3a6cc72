"""What is known of one object's members, arriving over an item or read from the cache: the tree
readers look names up in, and the journal that lets other processes see it grow.

The journal (`journal` in the object's staging dir, kept in the committed entry) has one JSON line
per member header as it passes (`["member", name, size, mode, mtime]`), then `["end", bytes]`
once the whole archive has been verified, or `["failed"]`; a process that took over a download
whose writer died adds `["checked"]` while it re-reads what is there (see fetch.py). The bytes of
each file that are present are its size on disk: files are written in order by one writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from blfs.errors import BlfsError, NotFound
from blfs.extract import DIR_MODE, Member
from blfs.item import GrowingFile, Item
from blfs.private import FILE_MODE


def relative(relpath: str) -> str:
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise NotFound(f"no such path: {relpath!r}")
    return "/".join(parts)


class Tree:
    """An object's members by path, without their files: all that lookups and listings need.
    A committed object's tree never changes and is kept in memory on its own, many at once (a
    walk of a big project lists every object, some of them in several places)."""

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        # By path, each named by its last component (as lookups and listings hand them out).
        self.members: dict[str, Member] = {"": Member("", 0, DIR_MODE, 0.0)}
        self.children: dict[str, list[str]] = {"": []}

    @classmethod
    def from_index(cls, object_id: str, index: dict[str, Any]) -> Tree:
        """The tree of a committed object, from its index."""
        tree = cls(object_id)
        for name, size, mode, mtime in index["members"]:
            if name not in tree.members:
                tree.add(Member(name, size, mode, mtime))
        return tree

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Member) -> None:
        """A member, named by its path, whose parent is known already (archive order)."""
        name = member.name
        if name not in self.members:
            parent, _, _ = name.rpartition("/")
            self.children[parent].append(name)
            if member.is_dir:
                self.children[name] = []
        self.members[name] = dataclasses.replace(member, name=name.rpartition("/")[2])

    def lookup(self, name: str) -> Member:
        """A member by its normalised path ('' = the root)."""
        member = self.members.get(name)
        if member is None:
            raise NotFound(f"{name!r} is not in object {self.object_id}")
        return member

    def listdir(self, name: str) -> list[Member]:
        """A directory's members, by its normalised path."""
        if name not in self.children:
            raise NotFound(f"{name!r} is not a directory in object {self.object_id}")
        return [self.members[child] for child in self.children[name]]


class Archive:
    """The members of one object, as they arrive, with their files; every call waits (bounded by
    the item) for what it needs."""

    def __init__(self, object_id: str, item: Item) -> None:
        self.object_id = object_id
        self.item = item
        self.tree = Tree(object_id)
        self.files: dict[str, GrowingFile] = {}
        self.order: list[Member] = []

    def fill_from_index(self, index: dict[str, Any], base: Path) -> None:
        """Publishes every member of a complete object whose files live under `base`; files
        already known (and maybe open) are completed in place."""
        for name, size, mode, mtime in index["members"]:
            member = Member(name, size, mode, mtime)
            known = self.files.get(name)
            if known is not None:
                self._complete(known, base / name)
            elif name not in self.tree.members:
                file = None if member.is_dir else GrowingFile(base / name, size, size)
                self.publish(member, file)

    def _complete(self, file: GrowingFile, path: Path) -> None:
        with self.item.cond:
            file.path = path
            file.written = file.size or 0
            self.item.cond.notify_all()

    def publish(self, member: Member, file: GrowingFile | None) -> None:
        with self.item.cond:
            self.tree.add(member)
            if file is not None:
                self.files[member.name] = file
            self.order.append(member)
            self.item.cond.notify_all()

    def rebase(self, base: Path) -> None:
        """(Under the item's condition.) Points every file at its committed location."""
        for name, file in self.files.items():
            file.path = base / name

    def lookup(self, relpath: str) -> Member:
        """A member ('' = the root); waits until its header has passed or the archive ended."""
        name = relative(relpath)
        self.item.wait(lambda: name in self.tree.members, f"member {name!r}")
        self.item.check()
        return self.tree.lookup(name)

    def listdir(self, relpath: str) -> list[Member]:
        """A directory's members; waits for the whole archive (a partial list misleads cp -r)."""
        name = relative(relpath)
        self.item.wait(lambda: False, f"the listing of {name or 'the root'}")
        self.item.check()
        return self.tree.listdir(name)

    def file(self, relpath: str) -> GrowingFile:
        member = self.lookup(relpath)
        if member.is_dir:
            raise BlfsError(f"{relpath!r} in object {self.object_id} is a directory")
        return self.files[relative(relpath)]

    def index(self, archive_bytes: int) -> dict[str, Any]:
        return {
            "version": 1,
            "object_id": self.object_id,
            "archive_bytes": archive_bytes,
            "bytes": sum(member.size for member in self.order),
            "members": [[m.name, m.size, m.mode, m.mtime] for m in self.order],
        }


class JournalWriter:
    """The owner's side: appends one line per event, each in one write."""

    def __init__(self, path: Path) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, FILE_MODE)

    def end_torn_line(self) -> None:
        """(A new writer, taking over from one that was killed.) Ends a line it left cut short."""
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")

    def member(self, member: Member) -> None:
        self._line(["member", member.name, member.size, member.mode, member.mtime])

    def checked(self) -> None:
        """(A process that took over.) Bytes already there were checked against the stream."""
        self._line(["checked"])

    def end(self, archive_bytes: int) -> None:
        self._line(["end", archive_bytes])

    def failed(self) -> None:
        self._line(["failed"])

    def _line(self, record: list[Any]) -> None:
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


class JournalReader:
    """A follower's side: the whole lines appended since the last call. While it is open it
    holds a shared lock on the journal, which keeps the staging of a downloader that died from
    being removed before a follower takes it over (Cache.adopt)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # read-write: NFS locks need it
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(self._fd)
            raise
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[list[Any]]:
        """The new whole lines; a line cut short by a writer that was killed (ended by the
        process that took over) is no record and is skipped."""
        data = os.pread(self._fd, 1 << 20, self._offset)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def close(self) -> None:
        os.close(self._fd)
