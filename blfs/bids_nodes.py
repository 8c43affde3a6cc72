"""The nodes of a BIDS view (DESIGN §1.2): directories and generated files from a `bids.Dataset`,
and each data file as a relative symlink into its object's directory.

Symlinks, because a symlink's attributes are its target's path: looking up, listing and `lstat`
of a whole view cost no download, while following a link reaches the object's member, fetched and
cached as everywhere else (one copy, one download, whichever path read it first). A mapped member
that the object's archive turns out not to hold is hidden once the archive is known; until then
its link dangles (ENOENT when followed), never an empty or wrong file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from blfs.bids import Dataset, Entry, Generated, Link
from blfs.errors import NotFound
from blfs.nodes import Attr, BytesFile, Node, directory

if TYPE_CHECKING:
    from blfs.fetch import ObjectFetcher


class BidsDir(Node):
    """A directory of a BIDS view; `relpath` '' is the dataset's top."""

    def __init__(
        self,
        dataset: Callable[[], Dataset],
        objects: ObjectFetcher,
        relpath: str,
        mtime: float,
    ) -> None:
        super().__init__(directory(mtime))
        self._dataset = dataset
        self._objects = objects
        self._relpath = relpath

    def _children(self) -> dict[str, Entry | None]:
        children = self._dataset().children.get(self._relpath)
        if children is None:
            raise NotFound(f"no BIDS directory {self._relpath!r}")
        return children

    def lookup(self, name: str) -> Node:
        children = self._children()
        if name not in children:
            raise NotFound(f"no such file: {name}")
        entry = children[name]
        if entry is None:
            path = f"{self._relpath}/{name}" if self._relpath else name
            return BidsDir(self._dataset, self._objects, path, self._attr.mtime)
        if isinstance(entry, Link) and self._known_missing(entry):
            raise NotFound(f"{entry.member!r} is not in object {entry.object_id}")
        return self._file(entry)

    def entries(self) -> list[tuple[str, Attr]]:
        return [
            (name, self._attr if entry is None else self._file(entry).attr())
            for name, entry in self._children().items()
            if not (isinstance(entry, Link) and self._known_missing(entry))
        ]

    def _file(self, entry: Entry) -> Node:
        if isinstance(entry, Generated):
            return BytesFile(entry.data, self._attr.mtime)
        return Node(Attr(False, len(entry.target.encode()), self._attr.mtime, link=entry.target))

    def _known_missing(self, link: Link) -> bool:
        """Whether the object is cached and lacks the member (asked of the cache, no download)."""
        if not self._objects.cached(link.object_id):
            return False
        try:
            self._objects.contents(link.object_id).lookup(link.member)
        except NotFound:
            return True
        return False
