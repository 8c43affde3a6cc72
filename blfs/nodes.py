"""The node contract between the namespace and the FUSE adapter (DESIGN §7): a path resolves to a
`Node`, which gives its attributes, looks up and lists children, or opens a `Handle`.

Generic node shapes live here; the brainlife ones (projects, objects, tasks…) in namespace.py.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blfs.errors import AccessDenied, BlfsError, NotFound
from blfs.ids import is_object_id
from blfs.names import Named
from blfs.redact import without_secrets


class IsADirectory(BlfsError):
    """open() of a directory (the kernel normally sends opendir instead)."""

    errno = errno.EISDIR


@dataclass(frozen=True)
class Attr:
    """A node's type, size and mtime. Only an `exact` one may be handed on with a listing: a
    listed size that stands in for one not known yet must never reach the kernel (DESIGN §9),
    so a listing's attributes count as placeholders unless marked exact."""

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    exact: bool = field(default=False, compare=False)  # how it is known, not what it says


@dataclass(frozen=True)
class FileSpan:
    """Bytes already on disk: a reply can take them from the descriptor (splice) without their
    passing through Python."""

    fd: int
    offset: int
    length: int

    def read(self) -> bytes:
        parts, offset, want = [], self.offset, self.length
        while want > 0:
            data = os.pread(self.fd, want, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            want -= len(data)
        return b"".join(parts)


class Handle(Protocol):
    """An open file: `complete` files never change, so the kernel may keep their pages."""

    complete: bool

    def read(self, offset: int, size: int) -> bytes: ...
    def read_piece(self, offset: int, size: int) -> bytes | FileSpan:
        """What `read` returns, or where on disk it is."""
        ...

    def backing_fd(self) -> int | None:
        """The descriptor of a complete file on disk, which the kernel may read by itself."""
        ...

    def release(self) -> None: ...


class BytesHandle:
    """An open generated file (JSON records): all bytes in memory, never changing."""

    complete = True

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    read_piece = read

    def backing_fd(self) -> None:
        return None

    def release(self) -> None:
        pass


def json_bytes(value: Any) -> bytes:
    """How a record is shown as a file: indented JSON without its secrets (redact.py), the
    size is exactly these bytes."""
    shown = without_secrets(value)
    return (json.dumps(shown, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def json_size(value: Any) -> int:
    """`len(json_bytes(value))` without the indented text, which only Python's slow encoder
    writes (a walk lists thousands of records): the compact text, with the same separators,
    from the C encoder, plus the line breaks and indents the indented one adds."""
    compact = json.dumps(value, separators=(",", ": "), ensure_ascii=False)
    shown = without_secrets(value, compact)
    if shown is not value:
        compact = json.dumps(shown, separators=(",", ": "), ensure_ascii=False)
    return len(compact.encode("utf-8")) + _indents(shown, 1) + 1


def _indents(value: Any, level: int) -> int:
    """The bytes `indent=2` adds within `value` at nesting `level`: a line break and the
    level's indent before each item of a non-empty container, and before its closing bracket."""
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return 0
    if not items:
        return 0
    total = len(items) * (1 + 2 * level) + 2 * level - 1
    for item in items:
        if isinstance(item, (dict, list, tuple)):
            total += _indents(item, level + 1)
    return total


def directory(mtime: float = 0.0) -> Attr:
    return Attr(True, 0, mtime, exact=True)


class Node:
    """One path: a directory (lookup, entries) or a file (open). Cheap to make, made per call."""

    def __init__(self, attr: Attr) -> None:
        self._attr = attr

    def attr(self) -> Attr:
        return self._attr

    def lookup(self, name: str) -> Node:
        raise NotFound(f"no such file: {name}")

    def entries(self) -> list[tuple[str, Attr]]:
        raise NotFound("not a directory")

    def listing(self) -> tuple[list[tuple[str, Attr]], bool]:
        """The entries, and whether a listing of them may be kept (by the kernel): not while
        they may still change without any metadata answer changing (a BIDS view before its
        objects are known)."""
        return self.entries(), True

    def open(self) -> Handle:
        raise IsADirectory("is a directory")


class FileNode(Node):
    """A file whose attributes are known; `opener` makes its handle."""

    def __init__(self, attr: Attr, opener: Callable[[], Handle]) -> None:
        super().__init__(attr)
        self._opener = opener

    def open(self) -> Handle:
        return self._opener()


class BytesFile(FileNode):
    """A generated file whose bytes are known."""

    def __init__(self, data: bytes, mtime: float) -> None:
        super().__init__(Attr(False, len(data), mtime, exact=True), lambda: BytesHandle(data))


class JsonFile(Node):
    """A record shown as a JSON file; serialized only when asked about (lookups pass through)."""

    def __init__(self, value: Any, mtime: float) -> None:
        super().__init__(Attr(False, 0, mtime))
        self._value = value

    def attr(self) -> Attr:
        return Attr(False, json_size(self._value), self._attr.mtime, exact=True)

    def open(self) -> Handle:
        return BytesHandle(json_bytes(self._value))


class DirNode(Node):
    """A directory of fixed entries, followed by those of another directory if any."""

    def __init__(
        self, attr: Attr, fixed: dict[str, Node], rest: Callable[[], Node] | None = None
    ) -> None:
        super().__init__(attr)
        self._fixed = fixed
        self._rest = rest

    def lookup(self, name: str) -> Node:
        fixed = self._fixed.get(name)
        if fixed is not None:
            return fixed
        if self._rest is None:
            raise NotFound(f"no such file: {name}")
        return self._rest().lookup(name)

    def entries(self) -> list[tuple[str, Attr]]:
        own = [(name, node.attr()) for name, node in self._fixed.items()]
        rest = [] if self._rest is None else self._rest().entries()
        return own + [(name, attr) for name, attr in rest if name not in self._fixed]


class Guarded(Node):
    """A directory shown to everyone that only some may read (DESIGN §1.1): while `refusal`
    gives a reason, its listing and every lookup inside it are refused (EACCES) with it, so a
    walk never meets an entry it cannot `stat`."""

    def __init__(self, inner: Node, refusal: Callable[[], str | None]) -> None:
        super().__init__(inner.attr())
        self._inner = inner
        self._refusal = refusal

    def _check(self) -> None:
        reason = self._refusal()
        if reason is not None:
            raise AccessDenied(reason)

    def lookup(self, name: str) -> Node:
        self._check()
        return self._inner.lookup(name)

    def entries(self) -> list[tuple[str, Attr]]:
        self._check()
        return self._inner.entries()

    def listing(self) -> tuple[list[tuple[str, Attr]], bool]:
        self._check()
        return self._inner.listing()


class NamedDir(Node):
    """A directory of records shown by name (and reachable by id): projects, releases, tasks…"""

    def __init__(self, attr: Attr, named: Callable[[], Named[Any]], child: Callable[[Any], Node]):
        super().__init__(attr)
        self._named = named
        self._child = child

    def lookup(self, name: str) -> Node:
        record = self._named().get(name)
        if record is None:
            raise NotFound(f"no such file: {name}")
        return self._child(record)

    def entries(self) -> list[tuple[str, Attr]]:
        return sorted((name, self._child(r).attr()) for name, r in self._named().by_name.items())


class ByIdDir(Node):
    """`/objects` and `/tasks`: lookup by a 24-hex id only, nothing listed."""

    def __init__(self, child: Callable[[str], Node]) -> None:
        super().__init__(directory())
        self._child = child

    def lookup(self, name: str) -> Node:
        if not is_object_id(name):
            raise NotFound(f"not an id: {name}")
        return self._child(name)

    def entries(self) -> list[tuple[str, Attr]]:
        return []
