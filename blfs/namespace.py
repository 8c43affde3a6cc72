"""Path → node for the whole mount (DESIGN §1): projects, their data-objects and processes,
publications and their releases, and lookups of any object or task by id.

Every level above an object's own directory comes from metadata answers cached in memory
(`MetaCache`); anything inside an object other than `_info.json`/`_product.json` is handed to the
object fetcher, and task files to the task-file store. Knows nothing of FUSE.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blfs.auth import claims
from blfs.errors import BlfsError, NotFound
from blfs.metacache import MetaCache
from blfs.names import Named, unique_names
from blfs.tree import DATASET_SELECT, Branch, build_tree, timestamp

if TYPE_CHECKING:
    from blfs.api import Client
    from blfs.fetch import Handle, ObjectContents, ObjectFetcher, TaskFiles
    from blfs.fetch import Member as MemberInfo

# A finished task's output never changes: its listings are kept this long (or `ttl` if longer).
FINISHED_TASK_TTL = 24 * 3600.0
_ID = re.compile(r"[0-9a-f]{24}")


class IsADirectory(BlfsError):
    """open() of a directory (the kernel normally sends opendir instead)."""

    errno = errno.EISDIR


@dataclass(frozen=True)
class Attr:
    is_dir: bool
    size: int = 0
    mtime: float = 0.0


class BytesHandle:
    """An open generated file (JSON records): all bytes in memory, never changing."""

    complete = True

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def release(self) -> None:
        pass


def json_bytes(value: Any) -> bytes:
    """How a record is shown as a file: indented JSON, the size is exactly these bytes."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def token_subject(token: str | None) -> str | None:
    """The user id (`sub`) of a token, or None for a guest or an unreadable token."""
    if not token:
        return None
    try:
        sub = claims(token).get("sub")
    except ValueError:
        return None
    return None if sub is None else str(sub)


def readable(project: dict[str, Any], sub: str | None) -> bool:
    """The warehouse's read ACL: public, or the user is a member, admin or guest."""
    if project.get("access") == "public":
        return True
    people = [*project.get("members", []), *project.get("admins", []), *project.get("guests", [])]
    return sub is not None and sub in {str(p) for p in people}


def _dir(mtime: Any = None) -> Attr:
    return Attr(True, 0, timestamp(mtime))


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

    def open(self) -> Handle:
        raise IsADirectory("is a directory")


class FileNode(Node):
    """A file whose attributes are known; `opener` makes its handle."""

    def __init__(self, attr: Attr, opener: Callable[[], Handle]) -> None:
        super().__init__(attr)
        self._opener = opener

    def open(self) -> Handle:
        return self._opener()


class JsonFile(Node):
    """A record shown as a JSON file; serialized only when asked about (lookups pass through)."""

    def __init__(self, value: Any, mtime: float) -> None:
        super().__init__(Attr(False, 0, mtime))
        self._value = value

    def attr(self) -> Attr:
        return Attr(False, len(json_bytes(self._value)), self._attr.mtime)

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
        super().__init__(_dir())
        self._child = child

    def lookup(self, name: str) -> Node:
        if not _ID.fullmatch(name):
            raise NotFound(f"not an id: {name}")
        return self._child(name)

    def entries(self) -> list[tuple[str, Attr]]:
        return []


class Namespace:
    """Answers getattr/readdir/open for every path of the mount."""

    def __init__(
        self,
        client: Client,
        objects: ObjectFetcher,
        task_files: TaskFiles,
        *,
        ttl: float = 60.0,
    ) -> None:
        self._client = client
        self._objects = objects
        self._task_files = task_files
        self._cache = MetaCache(ttl)
        self._root = DirNode(
            _dir(),
            {
                "projects": NamedDir(_dir(), self._projects, self._project_node),
                "publications": NamedDir(_dir(), self._pubs, self._pub_node),
                "objects": ByIdDir(self._object_by_id),
                "tasks": ByIdDir(self._task_by_id),
            },
        )

    def getattr(self, path: str) -> Attr:
        return self._resolve(path).attr()

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        return self._resolve(path).entries()

    def open(self, path: str) -> Handle:
        return self._resolve(path).open()

    def _resolve(self, path: str) -> Node:
        node: Node = self._root
        for name in path.split("/"):
            if name:
                node = node.lookup(name)
        return node

    # --- metadata, cached --------------------------------------------------------------------

    def _projects(self) -> Named[dict[str, Any]]:
        def fetch() -> Named[dict[str, Any]]:
            sub = token_subject(self._client.tokens.get() if self._client.tokens else None)
            shown = [
                (p["_id"], p.get("name"), p)
                for p in self._client.projects()
                if not p.get("removed") and readable(p, sub)
            ]
            return unique_names(shown)

        return self._cache.get("projects", fetch)

    def _datatypes(self) -> dict[str, dict[str, Any]]:
        return self._cache.get("datatypes", self._client.datatypes)

    def _project_tree(self, project_id: str) -> Branch:
        def fetch() -> Branch:
            find = {"project": project_id, "removed": False, "status": "stored"}
            records = self._client.datasets(find, select=DATASET_SELECT)
            shown = [r for r in records if r.get("status") == "stored" and not r.get("removed")]
            return build_tree(shown, self._datatypes())

        return self._cache.get(("project", project_id), fetch)

    def _release_tree(self, release_id: str) -> Branch:
        def fetch() -> Branch:
            records = self._client.release_datasets(
                release_id, {"status": "stored"}, select=DATASET_SELECT
            )
            return build_tree(
                (r for r in records if r.get("status") == "stored"), self._datatypes()
            )

        return self._cache.get(("release", release_id), fetch)

    def _pubs(self) -> Named[dict[str, Any]]:
        def fetch() -> Named[dict[str, Any]]:
            pubs = self._client.pubs()
            return unique_names((p["_id"], p.get("name"), p) for p in pubs if not p.get("removed"))

        return self._cache.get("pubs", fetch)

    def _instances(self, group_id: int) -> Named[dict[str, Any]]:
        def fetch() -> Named[dict[str, Any]]:
            instances = self._client.instances(group_id)
            return unique_names((i["_id"], _label(i), i) for i in instances)

        return self._cache.get(("instances", group_id), fetch)

    def _tasks(self, instance_id: str) -> Named[dict[str, Any]]:
        def fetch() -> Named[dict[str, Any]]:
            tasks = self._client.tasks(instance_id)
            return unique_names(
                (t["_id"], _label(t), t) for t in tasks if t.get("status") != "removed"
            )

        return self._cache.get(("tasks", instance_id), fetch)

    def _task_ttl(self, task: dict[str, Any]) -> float | None:
        """A finished task's outputs never change: keep what was learnt of them long."""
        return max(FINISHED_TASK_TTL, self._cache.ttl) if task.get("status") == "finished" else None

    def _task_listing(self, task: dict[str, Any], relpath: str) -> TaskListing:
        return self._cache.get(
            ("task_ls", task["_id"], relpath),
            lambda: task_listing(self._client.task_ls(task["_id"], relpath)),
            ttl=self._task_ttl(task),
        )

    def _linked_size(self, task: dict[str, Any], path: str) -> int:
        """The size of the file a task symlink points to. `/task/ls` gives the link's own size
        and a download follows the link, so the size is asked of a download (then closed)."""

        def fetch() -> int:
            with contextlib.closing(self._client.download_task_file(task["_id"], path)) as body:
                if body.length is not None:
                    return body.length
                while body.read(1 << 20):
                    pass
                return body.bytes_read

        return self._cache.get(("task_link", task["_id"], path), fetch, ttl=self._task_ttl(task))

    def _object_record(self, object_id: str) -> dict[str, Any]:
        def fetch() -> dict[str, Any]:
            for record in self._client.datasets({"_id": object_id}, select=DATASET_SELECT):
                if record.get("status") == "stored":
                    return record
            raise NotFound(f"no stored data-object {object_id}")

        return self._cache.get(("object", object_id), fetch)

    def _task_record(self, task_id: str) -> dict[str, Any]:
        return self._cache.get(("task", task_id), lambda: self._client.task(task_id))

    def _product_bytes(self, object_id: str) -> bytes:
        """`_product.json`: fetched once per object (stored objects do not change), then kept."""

        def fetch() -> bytes:
            return json_bytes({"product": self._client.product(object_id)})

        return self._cache.get(("product", object_id), fetch, ttl=float("inf"))

    # --- nodes ---------------------------------------------------------------------------------

    def _project_node(self, project: dict[str, Any]) -> Node:
        mtime = timestamp(project.get("create_date"))
        group = project.get("group_id")
        processes = NamedDir(
            Attr(True, 0, mtime),
            lambda: self._instances(group) if group is not None else Named(),
            self._instance_node,
        )
        return DirNode(
            Attr(True, 0, mtime),
            {"project.json": JsonFile(project, mtime), "processes": processes},
            lambda: self._branch_node(self._project_tree(project["_id"])),
        )

    def _pub_node(self, pub: dict[str, Any]) -> Node:
        mtime = timestamp(pub.get("create_date"))
        releases = NamedDir(
            Attr(True, 0, mtime),
            lambda: unique_names(
                (
                    (r["_id"], r.get("name"), r)
                    for r in pub.get("releases") or []
                    if not r.get("removed")
                ),
                reserved=["publication.json"],
            ),
            lambda release: self._branch_node(
                self._release_tree(release["_id"]), timestamp(release.get("create_date"))
            ),
        )
        return DirNode(
            Attr(True, 0, mtime), {"publication.json": JsonFile(pub, mtime)}, lambda: releases
        )

    def _branch_node(self, branch: Branch, mtime: float | None = None) -> Node:
        return BranchNode(self, branch, branch.mtime if mtime is None else mtime)

    def _instance_node(self, instance: dict[str, Any]) -> Node:
        return NamedDir(
            _dir(instance.get("create_date")),
            lambda: self._tasks(instance["_id"]),
            lambda task: TaskDir(self, task, "", _dir(task.get("create_date"))),
        )

    def _object_by_id(self, object_id: str) -> Node:
        return ObjectDir(self, self._object_record(object_id))

    def _task_by_id(self, task_id: str) -> Node:
        task = self._task_record(task_id)
        if task.get("status") == "removed":
            raise NotFound(f"task {task_id} was removed")
        return TaskDir(self, task, "", _dir(task.get("create_date")))


def _label(record: dict[str, Any]) -> str:
    """A process's or task's human name: its name, else its description, else its id."""
    return record.get("name") or record.get("desc") or record["_id"]


@dataclass(frozen=True)
class TaskListing:
    """A task directory from `/task/ls`, and which of its files are symlinks (whose listed size
    is the link's own, not that of the file a download serves)."""

    attrs: dict[str, Attr]
    file_links: frozenset[str]


def task_listing(entries: Iterable[dict[str, Any]]) -> TaskListing:
    """Symlinks count as what they point to; broken ones (no `directory` flag) are hidden."""
    shown: dict[str, Attr] = {}
    file_links = set()
    for entry in entries:
        name = entry.get("filename") or ""
        if name in ("", ".", "..") or "/" in name or "directory" not in entry:
            continue
        attrs = entry.get("attrs") or {}
        is_dir = bool(entry["directory"])
        size = 0 if is_dir else int(attrs.get("size") or 0)
        shown[name] = Attr(is_dir, size, timestamp(attrs.get("mtime")))
        if entry.get("link") and not is_dir:
            file_links.add(name)
    return TaskListing(dict(sorted(shown.items())), frozenset(file_links))


class BranchNode(Node):
    """A directory of a data-object tree (a project or a release, `sub-…` down to tags)."""

    def __init__(self, ns: Namespace, branch: Branch, mtime: float) -> None:
        super().__init__(Attr(True, 0, mtime))
        self._ns = ns
        self._branch = branch

    def lookup(self, name: str) -> Node:
        child = self._branch.children.get(name)
        if child is None:
            raise NotFound(f"no such file: {name}")
        if isinstance(child, Branch):
            return BranchNode(self._ns, child, child.mtime)
        return ObjectDir(self._ns, child)

    def entries(self) -> list[tuple[str, Attr]]:
        return [
            (name, Attr(True, 0, c.mtime if isinstance(c, Branch) else _created(c)))
            for name, c in self._branch.children.items()
        ]


def _created(record: dict[str, Any]) -> float:
    return timestamp(record.get("create_date"))


class ObjectDir(Node):
    """`<object-id>/`: two metadata files answered without download, then the archive's members."""

    def __init__(self, ns: Namespace, record: dict[str, Any]) -> None:
        super().__init__(Attr(True, 0, _created(record)))
        self._ns = ns
        self._record = record

    def _info(self) -> JsonFile:
        return JsonFile(self._record, self._attr.mtime)

    def _product(self) -> FileNode:
        object_id = self._record["_id"]
        data = self._ns._product_bytes(object_id)
        return FileNode(Attr(False, len(data), self._attr.mtime), lambda: BytesHandle(data))

    def lookup(self, name: str) -> Node:
        if name == "_info.json":
            return self._info()
        if name == "_product.json":
            return self._product()
        return Member(self._ns, self._record, name)

    def entries(self) -> list[tuple[str, Attr]]:
        # `_product.json`'s size is only known after its request, which a listing must not make;
        # the listed size is the cached one if any (the adapter only uses the type from readdir).
        known = self._ns._cache.peek(("product", self._record["_id"]))
        product = Attr(False, len(known) if known else 0, self._attr.mtime)
        members = Member(self._ns, self._record, "").entries()
        fixed = [("_info.json", self._info().attr()), ("_product.json", product)]
        return fixed + [(n, a) for n, a in members if n not in ("_info.json", "_product.json")]


class Member(Node):
    """A path inside an object's archive: every call goes to the object fetcher."""

    def __init__(self, ns: Namespace, record: dict[str, Any], relpath: str) -> None:
        super().__init__(Attr(False))  # unknown until the archive's header is seen: see attr()
        self._ns = ns
        self._record = record
        self._relpath = relpath

    def _contents(self) -> ObjectContents:
        return self._ns._objects.contents(
            self._record["_id"], expected_size=self._record.get("size")
        )

    def attr(self) -> Attr:
        return _member_attr(self._contents().lookup(self._relpath))

    def lookup(self, name: str) -> Node:
        return Member(self._ns, self._record, f"{self._relpath}/{name}" if self._relpath else name)

    def entries(self) -> list[tuple[str, Attr]]:
        members = self._contents().listdir(self._relpath)
        return sorted((m.name.rsplit("/", 1)[-1], _member_attr(m)) for m in members)

    def open(self) -> Handle:
        return self._contents().open(self._relpath)


def _member_attr(member: MemberInfo) -> Attr:
    is_dir = stat.S_ISDIR(member.mode)
    return Attr(is_dir, 0 if is_dir else member.size, member.mtime)


class TaskDir(Node):
    """A directory of a task's output tree, listed by `/task/ls` (sizes and mtimes included)."""

    def __init__(self, ns: Namespace, task: dict[str, Any], relpath: str, attr: Attr) -> None:
        super().__init__(attr)
        self._ns = ns
        self._task = task
        self._relpath = relpath

    def lookup(self, name: str) -> Node:
        listing = self._ns._task_listing(self._task, self._relpath)
        attr = listing.attrs.get(name)
        if attr is None:
            raise NotFound(f"no such file: {name}")
        path = f"{self._relpath}/{name}" if self._relpath else name
        if attr.is_dir:
            return TaskDir(self._ns, self._task, path, attr)
        if name in listing.file_links:
            attr = Attr(False, self._ns._linked_size(self._task, path), attr.mtime)
        task_id, size, final = self._task["_id"], attr.size, self._task.get("status") == "finished"
        return FileNode(attr, lambda: self._ns._task_files.open(task_id, path, size, final=final))

    def entries(self) -> list[tuple[str, Attr]]:
        # A symlinked file is listed with the link's own size: its real size costs a request,
        # made only when it is looked up (the adapter takes only the type from a listing).
        return list(self._ns._task_listing(self._task, self._relpath).attrs.items())
