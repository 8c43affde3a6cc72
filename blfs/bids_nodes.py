"""The nodes of a BIDS view (DESIGN §1.2): directories and generated files from a `bids.Dataset`,
and each data file as the archive member it stands for.

Data files are regular files, not symlinks into the object directories: listing and walking
(`find`, `os.walk`, whose `is_dir()` would follow a link, `glob`) then use only what a listing
gives, which is a data file's size only when it is known without a request or a download (its
object committed, or its file listing known): they cost no download; reading one fetches its
object as everywhere else, into the same cache. A data file's size is its member's: for an
object stored on S3 it comes from the object's file listing (one request, no download), so
`stat` and pybids indexing fetch no archive; for an archive-stored object it is known once the
archive has passed that member's header, so `stat` of such a data file fetches its object.

A listing shows only files that exist (a tool walking the view must never meet one that
vanishes): a file the datatype requires is certain from metadata alone; any other (events,
optional sidecars) is listed once its object's file listing or committed archive shows it, and
a listing asks for the file listing (one request, never a download) where the object has one.
"""

from __future__ import annotations

from collections.abc import Callable

from blfs.bids import Dataset, Entry, Generated, Member, Sidecar
from blfs.errors import NotFound
from blfs.nodes import Attr, BytesFile, Node, directory


class BidsDir(Node):
    """A directory of a BIDS view; `relpath` '' is the dataset's top. A data file is the node
    `member_node` makes for its archive member (the object directory's own member node). A
    required one is listed with the attributes `known` gives for it when they are known without
    a request or a download (else by name and type only, so that it is looked up when its size
    is wanted); an optional one only once `confirmed` (which may ask for the object's file
    listing, never download) finds it. Either is left out once the object is known to lack it
    (NotFound)."""

    def __init__(
        self,
        dataset: Callable[[], Dataset],
        member_node: Callable[[Member], Node],
        known: Callable[[Member], Attr | None],
        confirmed: Callable[[Member], Attr | None],
        relpath: str = "",
        mtime: float = 0.0,
    ) -> None:
        super().__init__(directory(mtime))
        self._dataset = dataset
        self._member_node = member_node
        self._known = known
        self._confirmed = confirmed
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
            return BidsDir(
                self._dataset,
                self._member_node,
                self._known,
                self._confirmed,
                path,
                self._attr.mtime,
            )
        return self._file(entry)

    def entries(self) -> list[tuple[str, Attr]]:
        return self.listing()[0]

    def listing(self) -> tuple[list[tuple[str, Attr]], bool]:
        """Kept by the kernel once every data file is known: until then a required one may
        still leave the listing, an optional one still join it."""
        listed: list[tuple[str, Attr]] = []
        all_known = True
        for name, entry in self._children().items():
            if entry is None:
                listed.append((name, self._attr))
            elif isinstance(entry, (Generated, Sidecar)):
                listed.append((name, self._file(entry).attr()))
            else:
                try:
                    attr = self._known(entry) if entry.required else self._confirmed(entry)
                except NotFound:
                    continue
                all_known = all_known and attr is not None
                if attr is not None or entry.required:
                    listed.append((name, attr or Attr(False, 0, self._attr.mtime)))
        return listed, all_known

    def _file(self, entry: Entry) -> Node:
        if isinstance(entry, (Generated, Sidecar)):
            return BytesFile(entry.data, self._attr.mtime)
        return self._member_node(entry)
