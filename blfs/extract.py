"""Turns an untrusted archive byte stream into a checked sequence of safe members.

Only regular files and directories pass; every name stays inside the object; sizes and counts are
bounded by the advertised length; the stream is verified to its last byte (DESIGN §2, §10). We do
not rely on tarfile's `filter='data'`: Python 3.11.7 predates fixes to its bypasses.
"""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

from blfs.errors import BadArchive, BlfsError

try:
    from isal.igzip import IGzipFile as _GzipReader
except ImportError:  # isal is optional: 40% cheaper in CPU, same checks
    _GzipReader = gzip.GzipFile  # type: ignore[assignment,misc]

GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data by more than about 1032:1, so this bounds a gzip archive's contents.
DEFLATE_MAX_RATIO = 1032
TAR_BLOCK = 512
# The archive is read from the network (or the decoder) in pieces of up to this size.
STREAM_BUFFER = 1 << 20
# A GNU long name or pax header is read whole: real ones are a few KiB at most.
_EXTENDED_HEADER_MAX = 1 << 20
FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_NAME_MAX = 255


class RawStream(Protocol):
    """The part of api.Download this module uses."""

    def read(self, n: int) -> bytes: ...


@dataclass(frozen=True, slots=True)  # slots: trees of many objects are kept in memory
class Member:
    """A member that passed every check, with a sanitised mode (full st_mode). Here `name` is
    the normalised path inside the object; ObjectContents hands out its last component
    ('' for the object's root)."""

    name: str
    size: int
    mode: int
    mtime: float

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def safe_name(raw: str, label: str) -> str:
    """The normalised relative name of a member ('' for the root), or BadArchive if it escapes."""
    if raw.startswith("/"):
        raise BadArchive(f"{label}: refused hostile member {raw!r}: absolute path")
    if "\x00" in raw:
        raise BadArchive(f"{label}: refused hostile member {raw!r}: NUL in name")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadArchive(f"{label}: refused hostile member {raw!r}: path leaves the object")
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in parts):
        raise BadArchive(f"{label}: refused member {raw[:80]!r}…: name component too long")
    return "/".join(parts)


class CountingReader:
    """Counts the raw bytes read and refuses more than the advertised length."""

    def __init__(self, raw: RawStream, limit: int | None, label: str) -> None:
        self._raw = raw
        self._limit = limit
        self._label = label
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n is not None and n >= 0 else 1 << 20)
        self.count += len(data)
        if self._limit is not None and self.count > self._limit:
            raise BadArchive(f"{self._label}: body longer than its Content-Length {self._limit}")
        return data


class _Prefixed:
    """Replays the bytes read to sniff the format, then continues with the stream.

    A plain `read` (not io.RawIOBase's readinto) hands the network's bytes on without copying.
    """

    def __init__(self, head: bytes, rest: CountingReader) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(n)
        size = len(self._head) if n is None or n < 0 else n
        data, self._head = self._head[:size], self._head[size:]
        return data

    def readinto(self, buffer: Any) -> int:
        """For the gzip decoders, which read into their own buffers."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _Forward:
    """The archive's bytes, read forward only: exact `read`s, `tell` and forward `seek` for
    tarfile's headers, and `view` for member data, which hands on slices of the pieces the
    source returned so that data reaches the disk without a copy in Python (tarfile's own
    stream mode copies every byte three times)."""

    def __init__(self, source: Callable[[int], bytes], label: str) -> None:
        self._source = source
        self._label = label
        self._piece = memoryview(b"")
        self._position = 0

    def view(self, n: int) -> memoryview:
        """The next 1 to `n` bytes (fewer at the end of a piece); empty only at the end."""
        if not self._piece:
            self._piece = memoryview(self._source(STREAM_BUFFER))
        data, self._piece = self._piece[:n], self._piece[n:]
        self._position += len(data)
        return data

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes, fewer only at the end (tarfile reads headers this way)."""
        if n > _EXTENDED_HEADER_MAX:
            raise BadArchive(f"{self._label}: refused archive: a {n}-byte extended header")
        parts = []
        while n > 0:
            data = self.view(n)
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        """Skips forward to `position` (tarfile skips each member's padding this way)."""
        if whence != io.SEEK_SET or position < self._position:
            raise io.UnsupportedOperation("the archive is read forward only")
        while self._position < position and self.view(position - self._position):
            pass
        return self._position

    def drain(self) -> None:
        while self.view(STREAM_BUFFER):
            pass


class ArchiveStream:
    """One archive being read: yields safe members with their data, then verifies the end.

    `limit` is the advertised byte length (Content-Length, else the expected size); None means
    only the end of the tar and the gzip trailer can be checked.
    """

    def __init__(self, raw: RawStream, limit: int | None, label: str) -> None:
        self._label = label
        self._limit = limit
        self._counter = CountingReader(raw, limit, label)
        head = self._read_head()
        self.gzipped = head == GZIP_MAGIC
        prefixed = _Prefixed(head, self._counter)
        body: IO[bytes] = _GzipReader(fileobj=prefixed) if self.gzipped else prefixed  # type: ignore[assignment]
        self._body = _Forward(body.read, label)
        ratio = DEFLATE_MAX_RATIO if self.gzipped else 1
        self.content_bound = None if limit is None else limit * ratio
        self._kinds: dict[str, bool] = {"": True}  # name -> is a directory
        self._total = 0

    @property
    def raw_bytes(self) -> int:
        return self._counter.count

    def _read_head(self) -> bytes:
        head = b""
        while len(head) < len(GZIP_MAGIC):
            chunk = self._counter.read(len(GZIP_MAGIC) - len(head))
            if not chunk:
                raise BadArchive(f"{self._label}: empty or truncated archive")
            head += chunk
        return head

    def members(self) -> Iterator[tuple[Member, Callable[[int], memoryview] | None]]:
        """Safe members in archive order, each file with a `read(n)` for its data, which must
        be read to its end before the next member is asked for. tarfile reads the headers
        (its seekable mode, which reads nothing else); we read the data."""
        with self._guard():
            archive = tarfile.TarFile(fileobj=self._body, mode="r")  # type: ignore[arg-type]
        while True:
            with self._guard():
                info = archive.next()
            if info is None:
                return
            *parents, member = self._check(info)
            for parent in parents:
                yield parent, None
            if member is not None:
                yield member, (None if member.is_dir else self._data(member.size))

    def _data(self, size: int) -> Callable[[int], memoryview]:
        """A member's `size` bytes, which follow its header."""
        left = size

        def read(n: int) -> memoryview:
            nonlocal left
            if left <= 0 or n <= 0:
                return memoryview(b"")
            with self._guard():
                data = self._body.view(min(n, left))
            left -= len(data)
            return data

        return read

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Maps decoder failures to BadArchive; our own errors (network ones) pass unchanged."""
        try:
            yield
        except BlfsError:
            raise
        except Exception as exc:  # tarfile, gzip, zlib and isal errors, EOFError on a cut stream
            raise BadArchive(
                f"{self._label}: corrupt or truncated archive: {type(exc).__name__}: {exc}"
            ) from None

    def _check(self, info: tarfile.TarInfo) -> list[Member | None]:
        """New implicit parent directories, then the member itself (None for the root)."""
        name = safe_name(info.name, self._label)
        if info.type == tarfile.DIRTYPE:
            is_dir = True
        elif info.type in _REGULAR_TYPES and not info.issparse():
            is_dir = False
        else:
            raise BadArchive(
                f"{self._label}: refused member {info.name!r} of type {info.type!r}:"
                " only regular files and directories are accepted"
            )
        if name == "":
            if not is_dir:
                raise BadArchive(f"{self._label}: refused member {info.name!r}: a file as root")
            return [None]
        mtime = float(info.mtime)
        parents = [
            Member(parent, 0, DIR_MODE, mtime) for parent in self._claim(name, is_dir, info.name)
        ]
        size = 0 if is_dir else info.size
        self._total += size
        count = len(self._kinds)
        if self.content_bound is not None and (
            self._total > self.content_bound or count * TAR_BLOCK > self.content_bound
        ):
            raise BadArchive(
                f"{self._label}: refused archive: {count} members, {self._total} bytes"
                f" exceed what {self._limit} advertised bytes can hold"
            )
        mode = DIR_MODE if is_dir else FILE_MODE | (0o111 if info.mode & 0o111 else 0)
        return [*parents, Member(name, size, mode, mtime)]

    def _claim(self, name: str, is_dir: bool, raw: str) -> list[str]:
        """Records a name and returns its new implicit parents; refuses duplicate files and
        paths through a non-directory."""
        parts = name.split("/")
        created = []
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = self._kinds.get(parent)
            if kind is False:
                raise BadArchive(f"{self._label}: refused member {raw!r}: its parent is a file")
            if kind is None:
                self._kinds[parent] = True
                created.append(parent)
        seen = self._kinds.get(name)
        if seen is not None and not (seen and is_dir):
            raise BadArchive(f"{self._label}: refused member {raw!r}: a duplicate name")
        self._kinds[name] = is_dir
        return created

    def finish(self) -> int:
        """Drains the body to EOF (checking the gzip trailer) and verifies the byte count."""
        with self._guard():
            self._body.drain()
        while self._counter.read(1 << 20):
            pass
        if self._limit is not None and self._counter.count != self._limit:
            raise BadArchive(
                f"{self._label}: truncated download: {self._counter.count} of {self._limit} bytes"
            )
        return self._counter.count
