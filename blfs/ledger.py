"""The shared record of a cache's complete entries and their sizes (see the top of cache.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from blfs.private import write_private

log = logging.getLogger("blfs.cache")


class Ledger:
    """The shared record of complete entries and their sizes, replayed incrementally.

    The first line names this version of the file (a new one on every rewrite); each further
    line is a JSON `["+", key, size]` or `["-", key, 0]`. All methods run under the cache lock.
    """

    _MAGIC = b"blfs-ledger-1 "
    compact_after = 10_000  # lines beyond twice the entries that make a rewrite worthwhile

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sizes: dict[str, int] = {}
        self.used = 0
        self.epoch = 0  # bumped whenever `sizes` is replaced by another process's rewrite
        self._name: bytes | None = None
        self._offset = 0
        self._lines = 0

    def catch_up(self) -> list[str] | None:
        """Applies the lines appended since the last call and returns the keys they added
        (all keys, with a new epoch, if the file was rewritten); None if it is missing or torn."""
        try:
            with open(self.path, "rb") as file:
                name = file.readline()
                if not name.startswith(self._MAGIC) or not name.endswith(b"\n"):
                    return None
                if name != self._name:
                    self._name, self._offset, self._lines = name, len(name), 0
                    self.sizes, self.used, self.epoch = {}, 0, self.epoch + 1
                file.seek(self._offset)
                tail = file.read()
        except OSError:  # missing, or not a readable file
            return None
        if not tail:
            return []
        if not tail.endswith(b"\n"):
            return None  # a writer was killed mid-line
        added = []
        try:
            for line in tail.splitlines():
                op, key, size = json.loads(line)
                self._apply(op, key, int(size))
                if op == "+":
                    added.append(key)
        except (ValueError, TypeError):
            return None
        self._offset += len(tail)
        return added

    def _apply(self, op: str, key: str, size: int) -> None:
        self._lines += 1
        self.used -= self.sizes.pop(key, 0)
        if op == "+":
            self.sizes[key] = size
            self.used += size
        elif op != "-":
            raise ValueError(f"unknown ledger operation {op!r}")

    def append(self, op: str, key: str, size: int = 0) -> None:
        """Records a commit ("+") or an eviction ("-"); compacts the file when it has grown long."""
        line = _record(op, key, size)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            _write_all(fd, line)
        finally:
            os.close(fd)
        self._offset += len(line)
        self._apply(op, key, size)
        if self._lines > 2 * len(self.sizes) + self.compact_after:
            try:
                self.rewrite(self.sizes)
            except OSError as exc:  # e.g. a full disk: the long file is still right
                log.warning("cannot compact the cache ledger %s: %s", self.path, exc)

    def rewrite(self, sizes: dict[str, int]) -> None:
        """Replaces the file (atomically, under a new name) with one line per entry."""
        name = self._MAGIC + uuid.uuid4().hex.encode() + b"\n"
        lines = [_record("+", key, size) for key, size in sizes.items()]
        body = name + b"".join(lines)
        temporary = self.path.parent / "tmp" / f"ledger-{uuid.uuid4().hex}"
        write_private(temporary, body)
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        os.replace(temporary, self.path)
        self._name, self._offset, self._lines = name, len(body), len(lines)
        self.sizes = dict(sizes)
        self.used = sum(sizes.values())


def _record(op: str, key: str, size: int) -> bytes:
    return json.dumps([op, key, size], separators=(",", ":")).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
