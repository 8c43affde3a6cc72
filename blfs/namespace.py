"""Path → node for the whole mount (DESIGN §1): projects, their data-objects and processes,
publications and their releases, and lookups of any object or task by id.

Every level above an object's own directory comes from the catalog's metadata answers; anything
inside an object other than `_info.json`/`_product.json` is handed to the object fetcher, and
task files to the task-file store. Knows nothing of FUSE.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blfs import bids
from blfs.bids_nodes import BidsDir
from blfs.catalog import Catalog, archive_length, is_finished
from blfs.errors import NotFound, SizeMismatch
from blfs.ids import is_object_id
from blfs.metacache import Keys
from blfs.names import Named, id_suffix, unique_names
from blfs.nodes import (
    Attr,
    ByIdDir,
    BytesFile,
    DirNode,
    FileNode,
    Guarded,
    Handle,
    JsonFile,
    NamedDir,
    Node,
    directory,
    json_size,
)
from blfs.stored_record import whole
from blfs.tree import Branch, datatype_dir, records, timestamp

if TYPE_CHECKING:
    from blfs.fetch import Member as MemberInfo
    from blfs.fetch import ObjectContents, ObjectFetcher, TaskFiles

OBJECT_METADATA = ("_info.json", "_product.json")
TASK_METADATA = "_task.json"
INSTANCE_METADATA = "_instance.json"
STATES = "object-states.json"
PARTICIPANTS = ("participants.tsv", "participants.json")
# Why this user may not read a project's or a release's data, beside its refused directories;
# the same line is added to project.json under ACCESS_KEY.
ACCESS = "ACCESS.txt"
ACCESS_KEY = "blfs_access"
# How many `_info.json` sizes are remembered: those of the objects listed last.
INFO_SIZES_KEPT = 10_000
# A listing of a directory of a project's tree asks ahead for at most this many objects below
# it, the first in path order: a walk then has the next ones asked for before it reaches them,
# and no listing queues more than twice as many requests (a product and a file listing each).
ASK_AHEAD_BELOW = 1000


@dataclass(frozen=True)
class Beside:
    """DESIGN §1.1's collision rule between a directory's metadata files and the files listed
    beside them (archive members, task outputs). A metadata file keeps its name, which must be
    known without a download; a listed file of the same name is shown, and reached, as
    `<name> (<first 8 hex of the object's or task's id>)`."""

    metadata: frozenset[str]
    owner_id: str

    @property
    def _suffix(self) -> str:
        return id_suffix(self.owner_id[:8])

    def shown(self, listed: Iterable[tuple[str, Attr]]) -> list[tuple[str, Attr]]:
        return [(name + self._suffix if name in self.metadata else name, a) for name, a in listed]

    def listed_name(self, name: str) -> str:
        """The name in the listing that a shown name stands for."""
        base = name.removesuffix(self._suffix)
        return base if base in self.metadata else name


class Namespace:
    """Answers getattr/readdir/open for every path of the mount."""

    def __init__(self, catalog: Catalog, objects: ObjectFetcher, task_files: TaskFiles) -> None:
        self.catalog = catalog
        self.objects = objects
        self.task_files = task_files
        self._info_sizes: dict[str, tuple[Mapping[str, Any], int]] = {}
        self._root = DirNode(
            directory(),
            {
                "projects": NamedDir(directory(), catalog.projects, self._project_node),
                "publications": NamedDir(directory(), catalog.pubs, self._pub_node),
                "objects": ByIdDir(self._object_by_id),
                "tasks": ByIdDir(self._task_by_id),
            },
        )

    def getattr(self, path: str) -> Attr:
        return self._resolve(path).attr()

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        return self._resolve(path).entries()

    def listing(self, path: str) -> tuple[list[tuple[str, Attr]], bool, Keys]:
        """The directory's entries, whether a listing of it may be kept (see Node), and the
        keys of the answers it shows (for `on_change`): those it read, and the last one that
        found the directory (a branch of a project's tree reads nothing more of its own)."""
        with self.catalog.reads() as resolved:
            node = self._resolve(path)
        with self.catalog.reads() as read:
            entries, stable = node.listing()
        return entries, stable, frozenset([*resolved[-1:], *read])

    def open(self, path: str) -> Handle:
        return self._resolve(path).open()

    def info_size(self, record: Mapping[str, Any]) -> int:
        """`_info.json`'s size, serialized once per record: a walk lists thousands of objects."""
        known = self._info_sizes.get(record["_id"])
        if known is None or known[0] is not record:
            known = self._info_sizes[record["_id"]] = (record, json_size(whole(record)))
            if len(self._info_sizes) > INFO_SIZES_KEPT:  # the oldest: made again if listed
                self._info_sizes.pop(next(iter(self._info_sizes)), None)
        return known[1]

    def on_change(self, callback: Callable[[Keys], None]) -> None:
        """Calls `callback` with the keys of the metadata answers that changed (as `listing`
        names them)."""
        self.catalog.on_change(callback)

    def _resolve(self, path: str) -> Node:
        node: Node = self._root
        for name in path.split("/"):
            if name:
                node = node.lookup(name)
        return node

    def refusal(self, project_id: object) -> str | None:
        """Why this user may not read the data of a project's objects (their downloads would
        be refused), as one line naming what to do; None when nothing stands in the way."""
        if not self.catalog.logged_in():
            return "Reading data needs a login: run `blfs login`, then mount again."
        if self.catalog.pending_agreements(project_id):
            page = self.catalog.project_page(str(project_id))
            return (
                f"Reading this project's data needs its data-use agreement accepted at {page} "
                "(log in there, open the project, accept the agreement)."
            )
        return None

    def access_text(self, project_id: object, reason: str) -> bytes:
        """ACCESS.txt: the reason, what is refused until then, and the agreements' texts."""
        lines = [
            reason,
            "",
            "Until then bids/ and the files inside the data-objects' directories are refused "
            "(Permission denied); the records (project.json, _info.json) stay readable.",
        ]
        for agreement in self.catalog.pending_agreements(project_id):
            lines += ["", f"Agreement {agreement.get('_id')}:", str(agreement.get("agreement"))]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _project_node(self, project: dict[str, Any]) -> Node:
        self.catalog.ask_ahead_project(project)
        mtime = timestamp(project.get("create_date"))
        group = project.get("group_id")
        processes = NamedDir(
            directory(mtime),
            lambda: self.catalog.instances(group) if group is not None else Named(),
            self._instance_node,
        )
        view = self._bids_dir(lambda: self.catalog.project_bids(project), mtime)
        guarded = Guarded(view, lambda: self.refusal(project["_id"]))
        return ProjectDir(self, project, {"processes": processes, "bids": guarded}, mtime)

    def _pub_node(self, pub: dict[str, Any]) -> Node:
        mtime = timestamp(pub.get("create_date"))
        releases = NamedDir(
            directory(mtime),
            lambda: unique_names(
                (
                    (r["_id"], r.get("name"), r)
                    for r in pub.get("releases") or []
                    if not r.get("removed")
                ),
                reserved=["publication.json"],
            ),
            lambda release: self._release_node(pub, release),
        )
        return DirNode(
            directory(mtime), {"publication.json": JsonFile(pub, mtime)}, lambda: releases
        )

    def _release_node(self, pub: dict[str, Any], release: dict[str, Any]) -> Node:
        """A release: its objects (readable by any logged-in user, published), and its BIDS
        view, refused with ACCESS.txt beside it where the downloads would be."""
        mtime = timestamp(release.get("create_date"))
        view = self._bids_dir(lambda: self.catalog.release_bids(pub, release), mtime)
        fixed: dict[str, Node] = {"bids": Guarded(view, lambda: self.refusal(pub.get("project")))}
        reason = self.refusal(pub.get("project"))
        if reason is not None:
            fixed[ACCESS] = BytesFile(self.access_text(pub.get("project"), reason), mtime)
        return DirNode(
            directory(mtime),
            fixed,
            lambda: BranchNode(self, self.catalog.release_tree(release["_id"]), mtime),
        )

    def _bids_dir(self, dataset: Callable[[], bids.Dataset], mtime: float) -> Node:
        """A BIDS view (DESIGN §1.2) whose data files are their objects' member nodes."""

        def member(entry: bids.Member) -> Member:
            return Member(self, entry.record, entry.member)

        def known(entry: bids.Member) -> Attr | None:
            return member(entry).known_attr()

        def confirmed(entry: bids.Member) -> Attr | None:
            return member(entry).listed_attr()

        return BidsDir(dataset, member, known, confirmed, mtime=mtime)

    def _instance_node(self, instance: dict[str, Any]) -> Node:
        self.catalog.ask_ahead_tasks(instance["_id"], [INSTANCE_METADATA])
        mtime = timestamp(instance.get("create_date"))

        def task_node(task: dict[str, Any]) -> Node:
            self.catalog.ask_ahead_task_listing(task, "")
            return TaskDir(self, task, "", directory(timestamp(task.get("create_date"))))

        tasks = NamedDir(
            directory(mtime),
            lambda: self.catalog.tasks(instance["_id"], reserved=[INSTANCE_METADATA]),
            task_node,
        )
        metadata = JsonFile(instance, mtime)
        return DirNode(directory(mtime), {INSTANCE_METADATA: metadata}, lambda: tasks)

    def _object_by_id(self, object_id: str) -> Node:
        return ObjectDir(self, self.catalog.object_record(object_id))

    def _task_by_id(self, task_id: str) -> Node:
        task = self.catalog.task_record(task_id)
        if task.get("status") == "removed":
            raise NotFound(f"task {task_id} was removed")
        return TaskDir(self, task, "", directory(timestamp(task.get("create_date"))))


class ProjectDir(DirNode):
    """A project: processes/ and bids/; files made from metadata (project.json, ACCESS.txt when
    its data is refused, the objects by state, the participant table when this user may read
    it and the server gave it: a listing asks for it, asked ahead once the project is looked up,
    rather than promise a file that may not come), then its subjects."""

    def __init__(
        self, ns: Namespace, project: dict[str, Any], fixed: dict[str, Node], mtime: float
    ) -> None:
        super().__init__(
            directory(mtime), fixed, lambda: BranchNode(ns, ns.catalog.project_tree(project["_id"]))
        )
        self._ns = ns
        self._project = project

    def _made_names(self) -> list[str]:
        readable = self._ns.catalog.participants_readable(self._project)
        refused = self._ns.refusal(self._project["_id"]) is not None
        return [*([ACCESS] if refused else []), STATES, *(PARTICIPANTS if readable else ())]

    def _record(self) -> JsonFile:
        """project.json: the record as the API gives it, plus ACCESS.txt's first line."""
        reason = self._ns.refusal(self._project["_id"])
        shown = self._project if reason is None else {**self._project, ACCESS_KEY: reason}
        return JsonFile(shown, self._attr.mtime)

    def _made(self, name: str) -> Node:
        catalog, project_id, mtime = self._ns.catalog, self._project["_id"], self._attr.mtime
        if name == ACCESS:
            reason = self._ns.refusal(project_id)
            if reason is None:
                raise NotFound(f"no such file: {name}")
            return BytesFile(self._ns.access_text(project_id, reason), mtime)
        if name == STATES:
            return JsonFile(catalog.object_states(project_id), mtime)
        table = catalog.participants(project_id)
        if table is None:  # refused after all, or unanswered: left out
            raise NotFound(f"no participant table of project {project_id}")
        rows = table.get("subjects") or []
        tsv, sidecar = bids.participants([bids.label(r.get("subject")) for r in rows], table)
        return BytesFile(tsv if name == "participants.tsv" else sidecar or b"{}\n", mtime)

    def lookup(self, name: str) -> Node:
        if name == "project.json":
            return self._record()
        # The readability check reads the token: only for the names it can let through.
        if name in (STATES, ACCESS) or (name in PARTICIPANTS and name in self._made_names()):
            return self._made(name)
        return super().lookup(name)

    def entries(self) -> list[tuple[str, Attr]]:
        # The objects by state are sized once looked up (the adapter only uses the type from
        # readdir); a refusal or a server error there is not a file that vanishes.
        made = []
        for name in self._made_names():
            if name not in PARTICIPANTS:
                made.append((name, Attr(False, 0, self._attr.mtime)))
            elif self._ns.catalog.participants(self._project["_id"]) is not None:
                made.append((name, self._made(name).attr()))
        return [("project.json", self._record().attr()), *made, *super().entries()]


class BranchNode(Node):
    """A directory of a data-object tree (a project or a release, `sub-…` down to tags)."""

    def __init__(self, ns: Namespace, branch: Branch, mtime: float | None = None) -> None:
        super().__init__(directory(branch.mtime if mtime is None else mtime))
        self._ns = ns
        self._branch = branch

    def lookup(self, name: str) -> Node:
        child = self._branch.children.get(name)
        if child is None and is_object_id(name):
            child = self._datatype_by_id(name)
        if child is None:
            raise NotFound(f"no such file: {name}")
        if isinstance(child, Branch):
            return BranchNode(self._ns, child)
        return ObjectDir(self._ns, child)

    def _datatype_by_id(self, datatype_id: str) -> Branch | None:
        """A datatype's directory reached by the datatype's id (a lookup alias, not listed)."""
        datatypes = self._ns.catalog.datatypes()
        if datatype_id not in datatypes:
            return None
        child = self._branch.children.get(datatype_dir({"datatype": datatype_id}, datatypes))
        return child if isinstance(child, Branch) else None

    def entries(self) -> list[tuple[str, Attr]]:
        # A walk stats every object's files next: asked for now, many at a time (the first
        # ones only below a big directory, where the walk asks from each directory it lists).
        first = itertools.islice(records(self._branch), ASK_AHEAD_BELOW)
        self._ns.catalog.ask_ahead_objects(first)
        return [
            (name, directory(c.mtime if isinstance(c, Branch) else _created(c)))
            for name, c in self._branch.children.items()
        ]


def _created(record: Mapping[str, Any]) -> float:
    return timestamp(record.get("create_date"))


class ObjectDir(Node):
    """`<object-id>/`: two metadata files answered without download, then the archive's members."""

    def __init__(self, ns: Namespace, record: Mapping[str, Any]) -> None:
        super().__init__(directory(_created(record)))
        self._ns = ns
        self._record = record
        self._beside = Beside(frozenset(OBJECT_METADATA), record["_id"])

    def _info(self) -> JsonFile:
        return JsonFile(whole(self._record), self._attr.mtime)

    def _product(self) -> FileNode:
        return BytesFile(self._ns.catalog.product_bytes(self._record["_id"]), self._attr.mtime)

    def _product_readable(self) -> bool:
        """Where the warehouse does not answer `_product.json`, it is not shown."""
        return self._ns.catalog.product_readable(self._record.get("project"))

    def lookup(self, name: str) -> Node:
        if name == "_info.json":
            return self._info()
        if name == "_product.json":
            if not self._product_readable():
                raise NotFound("_product.json is answered only to readers of the project")
            return self._product()
        return Member(self._ns, self._record, self._beside.listed_name(name))

    def entries(self) -> list[tuple[str, Attr]]:
        mtime = self._attr.mtime
        members = Member(self._ns, self._record, "").entries()
        info = Attr(False, self._ns.info_size(self._record), mtime, exact=True)
        fixed = [("_info.json", info)]
        if self._product_readable():
            # Its size is only known after its request, which a listing must not make.
            known = self._ns.catalog.known_product_bytes(self._record["_id"])
            exact = Attr(False, len(known), mtime, exact=True) if known else None
            fixed.append(("_product.json", exact or Attr(False, 0, mtime)))
        return fixed + self._beside.shown(members)


class Member(Node):
    """A path inside an object's archive. Its attributes come from its object's S3 file listing
    while the archive is not local (so `stat` downloads nothing) and whenever that listing is
    known, so that a size once shown never changes (DESIGN §9); otherwise, and for every read,
    from the object fetcher."""

    def __init__(self, ns: Namespace, record: Mapping[str, Any], relpath: str) -> None:
        super().__init__(Attr(False))  # unknown until the listing or the archive says: see attr()
        self._ns = ns
        self._record = record
        self._relpath = relpath

    def _archive_size(self) -> int | None:
        return archive_length(self._record)

    def _contents(self) -> ObjectContents:
        return self._ns.objects.contents(self._record["_id"], self._archive_size())

    def attr(self) -> Attr:
        listed = self.listed_attr()  # the file listing is asked for while the archive is not local
        if listed is not None:
            return listed
        return _member_attr(self._contents().lookup(self._relpath))

    def known_attr(self) -> Attr | None:
        """The attributes as far as they are known without asking the server or for a download:
        from the object's file listing whenever it is known (so that a size once shown never
        changes), else from its committed archive; None while unknown; NotFound when the object
        is known not to hold this path (a listing alone never hides what the local archive
        holds)."""
        record = self._record
        sizes = self._ns.catalog.known_member_sizes(record)
        absent: NotFound | None = None
        if sizes is not None:
            try:
                return _listed_attr(sizes, self._relpath, _created(record))
            except NotFound as exc:
                absent = exc
        contents = self._ns.objects.committed(record["_id"], self._archive_size())
        if contents is None:
            if absent is not None:
                raise absent
            return None
        return _member_attr(contents.lookup(self._relpath))

    def listed_attr(self) -> Attr | None:
        """`known_attr`, else what the object's file listing says where it has one (asked for
        once, then kept): never downloads. None while only a download could tell."""
        known = self.known_attr()
        if known is not None:
            return known
        sizes = self._ns.catalog.member_sizes(self._record)
        return None if sizes is None else _listed_attr(sizes, self._relpath, _created(self._record))

    def lookup(self, name: str) -> Node:
        return Member(self._ns, self._record, f"{self._relpath}/{name}" if self._relpath else name)

    def entries(self) -> list[tuple[str, Attr]]:
        members = self._contents().listdir(self._relpath)
        return sorted((m.name.rsplit("/", 1)[-1], _member_attr(m)) for m in members)

    def open(self) -> Handle:
        contents = self._contents()
        listed = (self._ns.catalog.known_member_sizes(self._record) or {}).get(self._relpath)
        if listed is not None:
            where = f"{self._relpath!r} of object {self._record['_id']}"
            _check_listed_size(contents.lookup(self._relpath), listed, where)
        return contents.open(self._relpath)


def _member_attr(member: MemberInfo) -> Attr:
    is_dir = stat.S_ISDIR(member.mode)
    return Attr(is_dir, 0 if is_dir else member.size, member.mtime, exact=True)


def _listed_attr(sizes: dict[str, int], relpath: str, mtime: float) -> Attr:
    """A listed file, or a directory above one (the object's root is one), or ENOENT."""
    if relpath in sizes:
        return Attr(False, sizes[relpath], mtime, exact=True)
    if not relpath or any(path.startswith(f"{relpath}/") for path in sizes):
        return directory(mtime)
    raise NotFound(f"{relpath!r} is not in its object's file listing")


def _check_listed_size(member: MemberInfo, listed: int, where: str) -> None:
    """A member whose archive disagrees with the size its listing gave (which stat may have
    shown) is never served: its reads fail, and the adapter logs why."""
    if stat.S_ISDIR(member.mode) or member.size != listed:
        raise SizeMismatch(
            f"{where} has {member.size} bytes in the archive but {listed} in the object's file "
            "listing: not served"
        )


class TaskDir(Node):
    """A directory of a task's output tree, listed by `/task/ls` (sizes and mtimes included);
    the task's root also holds `_task.json`, its record, answered without a download."""

    def __init__(self, ns: Namespace, task: dict[str, Any], relpath: str, attr: Attr) -> None:
        super().__init__(attr)
        self._ns = ns
        self._task = task
        self._relpath = relpath
        metadata = frozenset() if relpath else frozenset([TASK_METADATA])
        self._beside = Beside(metadata, task["_id"])

    def _metadata(self) -> JsonFile:
        return JsonFile(self._task, self._attr.mtime)

    def _below(self, listed: str) -> str:
        """The task path of an entry of this directory, by the server's name."""
        return f"{self._relpath}/{listed}" if self._relpath else listed

    def lookup(self, name: str) -> Node:
        if name in self._beside.metadata:
            return self._metadata()
        name = self._beside.listed_name(name)
        catalog = self._ns.catalog
        listing = catalog.task_listing(self._task, self._relpath)
        attr = listing.attrs.get(name)
        if attr is None:
            raise NotFound(f"no such file: {name}")
        path = self._below(listing.listed_name(name))  # the server's name, for its requests
        if attr.is_dir:
            return TaskDir(self._ns, self._task, path, attr)
        if name in listing.file_links:
            attr = Attr(False, catalog.linked_size(self._task, path), attr.mtime)
        task_id, size, final = self._task["_id"], attr.size, is_finished(self._task)
        return FileNode(attr, lambda: self._ns.task_files.open(task_id, path, size, final=final))

    def entries(self) -> list[tuple[str, Attr]]:
        # A symlinked file is listed with the link's own size, marked inexact: its real size
        # costs a request, made only when it is looked up.
        catalog = self._ns.catalog
        listing = catalog.task_listing(self._task, self._relpath)
        for name, attr in listing.attrs.items():
            if attr.is_dir:  # a walk lists each next
                catalog.ask_ahead_task_listing(self._task, self._below(listing.listed_name(name)))
        own = [(TASK_METADATA, self._metadata().attr())] if self._beside.metadata else []
        return own + self._beside.shown(listing.attrs.items())
