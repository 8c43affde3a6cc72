"""GNU tar archives written the way brainlife stores them: members at the root, 10 KiB records.

Members can be streamed: the header is written after the body, so a multi-gigabyte image never
has to be held in memory or measured beforehand.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class TarWriter:
    """Appends members to a seekable binary file; `close` writes the end blocks and padding."""

    def __init__(self, out: BinaryIO, mtime: int, owner: str = "brainlife") -> None:
        self._out = out
        self._mtime = mtime
        self._owner = owner

    def _header(self, name: str, kind: bytes, size: int, mode: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = self._mtime
        info.uid = info.gid = 1000
        info.uname = info.gname = self._owner
        return info.tobuf(tarfile.GNU_FORMAT)

    def directory(self, name: str) -> None:
        self._out.write(self._header(name, tarfile.DIRTYPE, 0, 0o755))

    def file(self, name: str, data: bytes) -> None:
        self._out.write(self._header(name, tarfile.REGTYPE, len(data), 0o644))
        self._out.write(data)
        self._pad(len(data))

    def stream(self, name: str, produce: Callable[[BinaryIO], None]) -> None:
        """Lets `produce` write the body, then goes back to fill in the header with its size."""
        if len(self._header(name, tarfile.REGTYPE, 0, 0o644)) != BLOCK:
            raise ValueError(f"streamed member name too long: {name}")
        start = self._out.tell()
        self._out.write(bytes(BLOCK))
        produce(self._out)
        end = self._out.tell()
        size = end - start - BLOCK
        self._out.seek(start)
        self._out.write(self._header(name, tarfile.REGTYPE, size, 0o644))
        self._out.seek(end)
        self._pad(size)

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._out.write(bytes(BLOCK - size % BLOCK))

    def close(self) -> None:
        self._out.write(bytes(2 * BLOCK))
        end = self._out.tell()
        if end % RECORD:
            self._out.write(bytes(RECORD - end % RECORD))
