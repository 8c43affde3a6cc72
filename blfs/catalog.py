"""Every metadata answer the namespace needs, from the REST client through the metadata cache:
projects, datatypes, the object trees of projects and releases, publications, processes, tasks
and their output listings, single records by id (DESIGN §1, §3).

Knows nothing of paths beyond what a tree or a task listing is; knows nothing of FUSE.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blfs import bids
from blfs.ahead import Ahead
from blfs.auth import claims
from blfs.errors import AccessDenied, BlfsError, NotFound, RemoteError
from blfs.failures import backoff
from blfs.metacache import Keys, MetaCache
from blfs.metastore import MetaStore
from blfs.names import Named, id_suffix, pattern_safe, unique_names
from blfs.nodes import Attr, json_bytes
from blfs.tree import DATASET_SELECT, Branch, build_tree, records, timestamp

if TYPE_CHECKING:
    from blfs.api import Client

log = logging.getLogger("blfs")

# What the summary of objects in other states shows of each (the API requires `project`).
STATE_SELECT = "project status status_msg meta datatype create_date"
# A finished task's output never changes: its listings are kept this long (or `ttl` if longer).
FINISHED_TASK_TTL = 24 * 3600.0
# Storage kinds (`storage`, API §2) as app-archive and the warehouse write them. S3 kinds keep
# an object's files one by one (`s3fs` under `archive/<project>/<object>/`, `s3fs-embargo` under
# `embargoed/…`), their `size` being the files' total; tar kinds keep one `.tar` whose length is
# `size`; the other known kinds make the archive on the fly or borrow another object's, so their
# `size` says nothing of a download's length.
S3_KINDS = frozenset({"s3fs", "s3fs-embargo"})
TAR_KINDS = frozenset({"local", "osn", "osiris", "project", "jetstream", "wrangler", "dc2"})
OTHER_KINDS = frozenset({"copy", "url", "datalad", "xnat"})
# Stored objects do not change: their `_product.json` is fetched once, then kept.
PRODUCT_TTL = float("inf")
# How many answers asked ahead are remembered as such (a walk of a big project asks hundreds of
# thousands); one forgotten is looked up in the cache when asked again, without a request.
ASKED_KEPT = 10_000


@functools.lru_cache(maxsize=8)  # asked at every path of a walk, for one token or two
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
    public = project.get("access") == "public"
    return public or _among(project, ("members", "admins", "guests"), sub)


def participants_readable(project: dict[str, Any], sub: str | None) -> bool:
    """The warehouse's rule for a participant table: published, or the user is a member or
    an admin (API §2 GET /participant)."""
    published = bool(project.get("publishParticipantsInfo"))
    return published or _among(project, ("members", "admins"), sub)


def _among(project: dict[str, Any], roles: tuple[str, ...], sub: str | None) -> bool:
    """Whether the user `sub` holds one of `roles` in the project."""
    return sub is not None and any(sub in {str(p) for p in project.get(r) or []} for r in roles)


def label(record: dict[str, Any]) -> str:
    """A process's or task's human name: its name, else its description, else its id."""
    return record.get("name") or record.get("desc") or record["_id"]


@dataclass(frozen=True)
class TaskListing:
    """A task directory from `/task/ls` by shown name (DESIGN §1.1: no glob metacharacter),
    which of its files are symlinks (whose listed size is the link's own, not that of the file
    a download serves), and the server's name of each file shown under another one."""

    attrs: dict[str, Attr]
    file_links: frozenset[str]
    listed: dict[str, str] = field(default_factory=dict)

    def listed_name(self, shown: str) -> str:
        """The server's name of the file shown as `shown`."""
        return self.listed.get(shown, shown)


def task_listing(entries: Iterable[dict[str, Any]], clash_suffix: str = "") -> TaskListing:
    """Symlinks count as what they point to; broken ones (no `directory` flag) are hidden; a
    name with a glob metacharacter is shown mapped (`pattern_safe`, `clash_suffix` on a clash)."""
    valid = {}
    for entry in entries:
        name = entry.get("filename") or ""
        if name in ("", ".", "..") or "/" in name or "directory" not in entry:
            continue
        valid[name] = entry
    names = pattern_safe(valid, clash_suffix)
    shown: dict[str, Attr] = {}
    file_links = set()
    for name, listed in names.items():
        entry = valid[listed]
        attrs = entry.get("attrs") or {}
        is_dir = bool(entry["directory"])
        size = 0 if is_dir else int(attrs.get("size") or 0)
        link = bool(entry.get("link")) and not is_dir
        shown[name] = Attr(is_dir, size, timestamp(attrs.get("mtime")), exact=not link)
        if link:
            file_links.add(name)
    renamed = {name: listed for name, listed in names.items() if name != listed}
    return TaskListing(dict(sorted(shown.items())), frozenset(file_links), renamed)


def _not_shown(record: dict[str, Any], datatypes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    meta = record.get("meta") or {}
    datatype = datatypes.get(str(record.get("datatype")), {}).get("name", record.get("datatype"))
    return {
        "_id": record["_id"],
        "status": record.get("status"),
        "status_msg": record.get("status_msg"),
        "datatype": datatype,
        "subject": meta.get("subject"),
        "session": meta.get("session"),
        "create_date": record.get("create_date"),
    }


def on_s3(record: Mapping[str, Any]) -> bool:
    """Whether an object's files are on S3: then its `size` is their total, not an archive's."""
    return record.get("storage") in S3_KINDS


_unknown_kinds: set[str] = set()
_unknown_lock = threading.Lock()


def archive_length(record: Mapping[str, Any]) -> int | None:
    """The length of the object's download when the server does not send one: `size` for the
    kinds that store a tar, else None (the download is then read to its end and checked by the
    tar itself). An unknown kind is logged once and taken the safe way, as not a tar's."""
    storage = str(record.get("storage"))
    if storage in TAR_KINDS:
        size = record.get("size")
        return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    if storage not in S3_KINDS and storage not in OTHER_KINDS:
        with _unknown_lock:
            first = storage not in _unknown_kinds
            _unknown_kinds.add(storage)
        if first:
            log.warning(
                "objects of the unknown storage kind %r: their recorded size is not taken for"
                " their archive's, and no file listing is asked for them",
                storage,
            )
    return None


def _listable(record: Mapping[str, Any]) -> bool:
    """Whether an object's files can be listed (with sizes) without a download."""
    return on_s3(record) and bool(record.get("project"))


@dataclass(frozen=True)
class S3Listing:
    """An object's S3 listing as kept: its files' sizes when it passed the checks, else None
    (a doubt) and how many answers in a row were doubtful."""

    files: dict[str, int] | None
    attempts: int = 0


def _s3_listing(raw: Any) -> S3Listing:
    """`{"files": …}` passed the checks, `{"doubt": …, "attempts": n}` did not. Anything else
    (an earlier version's unchecked answer) raises, so it is asked again."""
    if "files" in raw:
        return S3Listing({str(path): int(size) for path, size in raw["files"].items()})
    if isinstance(raw.get("doubt"), str):
        return S3Listing(None, int(raw.get("attempts") or 1))
    raise ValueError("not an S3 listing as this version keeps it")


def _listing_lifetime(raw: Any) -> float:
    """A checked listing is kept for good (a stored object's files never change); a doubt only
    for the failure backoff, so that a later answer, or a later mount, gets the listing."""
    if isinstance(raw, dict) and "files" in raw:
        return float("inf")
    attempts = raw.get("attempts") if isinstance(raw, dict) else None
    return backoff(attempts if isinstance(attempts, int) else 1)


def _check_total(files: dict[str, int], record: Mapping[str, Any]) -> None:
    """A listing is consistent with its object when its sizes add up to the record's `size`."""
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise RemoteError("the object's record has no size to check the listing against")
    total = sum(files.values())
    if total != size:
        raise RemoteError(f"its {len(files)} files add up to {total} bytes, the record says {size}")


def is_finished(task: dict[str, Any]) -> bool:
    return task.get("status") == "finished"


class Catalog:
    """Metadata answers by kind, each cached for the TTL (finished tasks' outputs longer).

    What is cached (and kept on disk by `store`) is the server's raw answer; the shapes the
    namespace uses (named records, trees, listings) are built from it. Views made from other
    answers (BIDS) are kept in memory only.
    """

    def __init__(
        self,
        client: Client,
        ttl: float = 60.0,
        store: MetaStore | None = None,
        ahead: Ahead | None = None,
    ) -> None:
        self._client = client
        self._cache = MetaCache(ttl, store)
        self._lock = threading.Lock()
        # Participant tables whose request failed: (failures in a row, when to ask again).
        self._unanswered: dict[str, tuple[int, float]] = {}
        self._gone_tasks: set[str] = set()  # tasks whose listing amaretti said it has not
        self._ahead = ahead or Ahead(0)
        self._asked: dict[Hashable, float] = {}  # key asked ahead -> until when it needs no more
        self._asked_lock = threading.Lock()

    # --- asking ahead (blfs/ahead.py): the answers below, requested before they are needed ---

    def _ask_ahead(self, asks: Iterable[tuple[Hashable, Callable[[], object], float]]) -> None:
        """Submits each `(key, ask, lifetime)` unless it was answered ahead within its lifetime:
        a walk lists and looks up the same directories again and again, and a stored object's
        answers never change, so repeats cost no worker (one still waiting moves up front)."""
        if self._ahead.width <= 0:
            return
        now = time.monotonic()
        with self._asked_lock:
            due = [(k, a, life) for k, a, life in asks if self._asked.get(k, now) <= now]
        if not due:
            return
        self._ahead.submit_all(
            (k, functools.partial(self._answer, k, a, life)) for k, a, life in due
        )

    def _answer(self, key: Hashable, ask: Callable[[], object], lifetime: float) -> None:
        ask()
        with self._asked_lock:
            self._asked.pop(key, None)
            self._asked[key] = time.monotonic() + lifetime
            if len(self._asked) > ASKED_KEPT:  # the oldest: asking it again costs no request
                del self._asked[next(iter(self._asked))]

    def ask_ahead_at_mount(self) -> None:
        """The project list (then the user's accepted agreements, when a readable project has
        any) and the datatypes: every path under projects/ needs them."""

        def projects_then_agreements() -> None:
            for project in self.projects().by_id.values():
                if project.get("agreements"):
                    self.pending_agreements(project["_id"])
                    return

        ttl = self._cache.ttl
        self._ask_ahead(
            [("projects", projects_then_agreements, ttl), ("datatypes", self.datatypes, ttl)]
        )

    def ask_ahead_project(self, project: Mapping[str, Any]) -> None:
        """A project's objects, participants and processes together, once it is looked up
        (every path below it looks it up: once its objects were asked for, nothing is made)."""
        project_id = str(project["_id"])
        with self._asked_lock:
            if self._asked.get(("project", project_id), 0.0) > time.monotonic():
                return

        def participants() -> None:
            if self.participants_readable(dict(project)):
                self.participants(project_id)

        ttl = self._cache.ttl
        asks: list[tuple[Hashable, Callable[[], object], float]] = [
            (("project", project_id), lambda: self.project_tree(project_id), ttl),
            (("participants", project_id), participants, ttl),
        ]
        group = project.get("group_id")
        if group is not None:
            asks.append((("instances", group), lambda: self.instances(group), ttl))
        self._ask_ahead(asks)

    def ask_ahead_objects(self, below: Iterable[Mapping[str, Any]]) -> None:
        """The per-object answers (`_product.json`, an S3 object's file listing) of every
        object below a directory being listed: a walk stats them next, three levels down."""
        asks: list[tuple[Hashable, Callable[[], object], float]] = []
        for record in below:
            object_id = str(record["_id"])
            product = functools.partial(self._product_if_readable, record)
            asks.append((("product", object_id), product, PRODUCT_TTL))
            if _listable(record):
                sizes = functools.partial(self.member_sizes, record)
                asks.append((("member_sizes", object_id), sizes, float("inf")))
        self._ask_ahead(asks)

    def ask_ahead_tasks(self, instance_id: str, reserved: Iterable[str]) -> None:
        """A process's tasks, once processes/ is listed or the process looked up (`reserved`:
        as the namespace asks for them, which shapes the answer kept)."""
        reserved = tuple(reserved)
        ask = functools.partial(self.tasks, instance_id, reserved)
        self._ask_ahead([(("tasks", instance_id), ask, self._cache.ttl)])

    def ask_ahead_task_listing(self, task: dict[str, Any], relpath: str) -> None:
        """A task's directory listing, once the directory above it is listed: a walk's next."""
        key = ("task_ls", task["_id"], relpath)
        lifetime = self._task_ttl(task) or self._cache.ttl
        self._ask_ahead([(key, functools.partial(self.task_listing, task, relpath), lifetime)])

    def _product_if_readable(self, record: Mapping[str, Any]) -> None:
        if self.product_readable(record.get("project")):
            self.product_bytes(str(record["_id"]))

    def on_change(self, callback: Callable[[Keys], None]) -> None:
        """Calls `callback` with the keys of a refreshed answer that differs from the one it
        replaces and of what was made from it."""
        self._cache.on_change(callback)

    def reads(self) -> contextlib.AbstractContextManager[list[Hashable]]:
        """The keys of the answers this thread reads inside (see `MetaCache.reads`)."""
        return self._cache.reads()

    def projects(self) -> Named[dict[str, Any]]:
        def build(projects: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            sub = self._subject()
            shown = [
                (p["_id"], p.get("name"), p)
                for p in projects
                if not p.get("removed") and readable(p, sub)
            ]
            return unique_names(shown)

        return self._cache.get("projects", self._client.projects, build)

    def _subject(self) -> str | None:
        return token_subject(self._client.tokens.get() if self._client.tokens else None)

    def datatypes(self) -> dict[str, dict[str, Any]]:
        return self._cache.get("datatypes", self._client.datatypes)

    def project_tree(self, project_id: str) -> Branch:
        def fetch() -> Iterator[dict[str, Any]]:
            find = {"project": project_id, "removed": False, "status": "stored"}
            expected = self._recorded_count(project_id)
            return self._client.datasets(find, select=DATASET_SELECT, expected=expected)

        def build(pairs: Iterable[tuple[dict[str, Any], Mapping[str, Any]]]) -> Branch:
            shown = (
                (fields, record)
                for fields, record in pairs
                if fields.get("status") == "stored" and not fields.get("removed")
            )
            return build_tree(shown, self.datatypes())

        return self._cache.listing(("project", project_id), fetch, build)

    def _recorded_count(self, project_id: str) -> int:
        """How many stored objects the project's record says it has (`stats`, updated by the
        server now and then): the pages of its listing are asked for together from the start."""
        project = self.projects().by_id.get(project_id) or {}
        count = ((project.get("stats") or {}).get("datasets") or {}).get("count")
        return count if isinstance(count, int) and count > 0 else 0

    def release_tree(self, release_id: str) -> Branch:
        def fetch() -> Iterator[dict[str, Any]]:
            find = {"status": "stored"}
            return self._client.release_datasets(release_id, find, select=DATASET_SELECT)

        def build(pairs: Iterable[tuple[dict[str, Any], Mapping[str, Any]]]) -> Branch:
            shown = ((f, record) for f, record in pairs if f.get("status") == "stored")
            return build_tree(shown, self.datatypes())

        return self._cache.listing(("release", release_id), fetch, build)

    def project_page(self, project_id: str) -> str:
        """The project's page on brainlife.io, where its data-use agreements are accepted."""
        return f"{self._client.site}/project/{project_id}"

    def logged_in(self) -> bool:
        """Whether there is a user: downloads and `_product.json` need a token (API §2)."""
        return self._subject() is not None

    def project_readable(self, project_id: object) -> bool:
        """Whether this user may read the project (shown under projects/): what the warehouse
        asks before it answers an object's `_product.json` (API §2)."""
        return str(project_id) in self.projects().by_id

    def product_readable(self, project_id: object) -> bool:
        """Whether `_product.json` is answered for the project's objects: to a logged-in user
        who may read the project (API §2), not to every reader of a release."""
        return self.logged_in() and self.project_readable(project_id)

    def pending_agreements(self, project_id: object) -> list[dict[str, Any]]:
        """The data-use agreements of a readable project that this user has not accepted: the
        warehouse refuses to download its objects until every one is (API §2). The profile is
        asked for only for a project that has agreements; a guest has accepted none."""
        project = self.projects().by_id.get(str(project_id)) or {}
        agreements = [a for a in project.get("agreements") or [] if isinstance(a, dict)]
        if not agreements:
            return []
        accepted: frozenset[str] = frozenset()
        if self.logged_in():
            with contextlib.suppress(AccessDenied):
                fetch = self._client.accepted_agreements
                accepted = self._cache.get("agreements", fetch, frozenset)
        return [a for a in agreements if str(a.get("_id")) not in accepted]

    def participants_readable(self, project: dict[str, Any]) -> bool:
        """Whether this user may read the project's participant table (no request needed), and
        its request has not just gone unanswered."""
        readable = participants_readable(project, self._subject())
        return readable and not self.participants_unanswered(project["_id"])

    def participants(self, project_id: str) -> dict[str, Any] | None:
        """The project's participant table, or None when it is not published to this user or
        its request went unanswered (a guest's can hang: API §2). A refusal is not kept: with
        the token refused, the table known before is served. A request that failed is not made
        again for the failure backoff, and said once in the log."""
        if self.participants_unanswered(project_id):
            return None
        fetch = functools.partial(self._client.participants, project_id)
        try:
            table = self._cache.get(("participants", project_id), fetch)
        except (AccessDenied, NotFound):
            return None
        except RemoteError as exc:
            with self._lock:
                attempts = self._unanswered.get(project_id, (0, 0.0))[0] + 1
                self._unanswered[project_id] = (attempts, time.monotonic() + backoff(attempts))
            if attempts == 1:
                log.warning("participants.tsv of project %s left out: %s", project_id, exc)
            return None
        with self._lock:
            self._unanswered.pop(project_id, None)
        return table

    def participants_unanswered(self, project_id: str) -> bool:
        """Whether the project's participant table failed to come within the failure backoff:
        its files are then left out (a size once shown must not change when it comes)."""
        with self._lock:
            failed = self._unanswered.get(project_id)
        return failed is not None and time.monotonic() < failed[1]

    def project_bids(self, project: dict[str, Any]) -> bids.Dataset:
        """The project's BIDS view (DESIGN §1.2), made from its tree and kept as long."""
        project_id = project["_id"]
        url = self.project_page(project_id)
        name = project.get("name") or project_id

        # A table the ACL does not let this user read is not asked for: a refusal is not kept,
        # so each view made again would ask again (offline, wait for an unreachable server).
        table = project_id if participants_readable(project, self._subject()) else None

        def make() -> bids.Dataset:
            tree = self.project_tree(project_id)
            return self._bids(name, url, project.get("desc"), tree, table)

        return self._cache.made(("project_bids", project_id), make)

    def release_bids(self, pub: dict[str, Any], release: dict[str, Any]) -> bids.Dataset:
        """A release's BIDS view: its objects, with the publication's licence and DOI."""
        url = f"{self._client.site}/pub/{pub['_id']}"
        name = f"{pub.get('name') or pub['_id']} (release {release.get('name')})"

        def make() -> bids.Dataset:
            tree = self.release_tree(release["_id"])
            return self._bids(name, url, pub.get("desc"), tree, pub.get("project"), pub)

        return self._cache.made(("release_bids", release["_id"]), make)

    def _bids(
        self,
        name: str,
        url: str,
        desc: str | None,
        tree: Branch,
        project_id: str | None,
        release: dict[str, Any] | None = None,
    ) -> bids.Dataset:
        source = bids.Source(
            name=name,
            url=url,
            readme=f"{name}\n\n{url}\n\n{desc or ''}\n",
            records=tuple(records(tree)),
            participants=self.participants(project_id) if project_id else None,
            participants_left_out=bool(project_id) and self.participants_unanswered(project_id),
            release=release,
        )
        return bids.dataset(source, self.datatypes(), self._client.site)

    def object_states(self, project_id: str) -> dict[str, Any]:
        """How many of the project's objects are in each state, and the ones not shown (still
        `storing`, or `failed`) with the server's word on them: a missing upload explained."""

        def fetch() -> list[dict[str, Any]]:
            find = {"project": project_id, "removed": False, "status": {"$ne": "stored"}}
            return list(self._client.datasets(find, select=STATE_SELECT))

        def build(rows: list[dict[str, Any]]) -> dict[str, Any]:
            others = [r for r in rows if r.get("status") != "stored"]
            counts = Counter(str(r.get("status")) for r in others)
            counts["stored"] = self.project_tree(project_id).objects
            datatypes = self.datatypes()
            return {
                "counts": dict(sorted(counts.items())),
                "not_shown": [_not_shown(r, datatypes) for r in others],
            }

        return self._cache.get(("states", project_id), fetch, build)

    def pubs(self) -> Named[dict[str, Any]]:
        def build(pubs: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names((p["_id"], p.get("name"), p) for p in pubs if not p.get("removed"))

        return self._cache.get("pubs", self._client.pubs, build)

    def instances(self, group_id: int) -> Named[dict[str, Any]]:
        def build(instances: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names((i["_id"], label(i), i) for i in instances)

        fetch = functools.partial(self._client.instances, group_id)
        return self._cache.get(("instances", group_id), fetch, build)

    def tasks(self, instance_id: str, reserved: Iterable[str] = ()) -> Named[dict[str, Any]]:
        """A process's tasks by name; a task named like one of `reserved` gets an id suffix."""

        def build(tasks: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names(
                ((t["_id"], label(t), t) for t in tasks if t.get("status") != "removed"),
                reserved=reserved,
            )

        fetch = functools.partial(self._client.tasks, instance_id)
        return self._cache.get(("tasks", instance_id), fetch, build)

    def _task_ttl(self, task: dict[str, Any]) -> float | None:
        """A finished task's outputs never change: keep what was learnt of them long."""
        return max(FINISHED_TASK_TTL, self._cache.ttl) if is_finished(task) else None

    def task_listing(self, task: dict[str, Any], relpath: str) -> TaskListing:
        """A directory of the task's outputs. A task amaretti says it has no such task of (a
        listed task that is gone) is ENOENT, said once in the log."""
        try:
            return self._cache.get(
                ("task_ls", task["_id"], relpath),
                functools.partial(self._client.task_ls, task["_id"], relpath),
                functools.partial(task_listing, clash_suffix=id_suffix(task["_id"][:8])),
                ttl=self._task_ttl(task),
            )
        except NotFound as exc:
            with self._lock:
                first = task["_id"] not in self._gone_tasks
                self._gone_tasks.add(task["_id"])
            if first:
                log.warning("task %s has no outputs to list: %s", task["_id"], exc)
            raise

    def linked_size(self, task: dict[str, Any], path: str) -> int:
        """The size of the file a task symlink points to. `/task/ls` gives the link's own size
        and a download follows the link, so the size is asked of a download (then closed)."""

        def fetch() -> int:
            with contextlib.closing(self._client.download_task_file(task["_id"], path)) as body:
                if body.length is not None:
                    return body.length
                while body.read(1 << 20):
                    pass
                return body.bytes_read

        key = ("task_link", task["_id"], path)
        return self._cache.get(key, fetch, int, ttl=self._task_ttl(task))

    def object_record(self, object_id: str) -> dict[str, Any]:
        def fetch() -> dict[str, Any]:
            for record in self._client.datasets({"_id": object_id}, select=DATASET_SELECT):
                if record.get("status") == "stored":
                    return record
            raise NotFound(f"no stored data-object {object_id}")

        return self._cache.get(("object", object_id), fetch)

    def task_record(self, task_id: str) -> dict[str, Any]:
        return self._cache.get(("task", task_id), lambda: self._client.task(task_id))

    def product_bytes(self, object_id: str) -> bytes:
        """`_product.json`: fetched once per object (stored objects do not change), then kept."""
        fetch = functools.partial(self._client.product, object_id)
        return self._cache.get(("product", object_id), fetch, _product_file, PRODUCT_TTL)

    def member_sizes(self, record: Mapping[str, Any]) -> dict[str, int] | None:
        """An S3-stored object's file sizes by path, from its accepted listing (no download);
        None, without a request, for other storages, and whenever the listing is not accepted:
        the archive then decides, as if there were no listing (DESIGN §2).

        The listing is a hint, checked before use: well-formed and complete (api.object_files),
        and its sizes adding up to the record's `size`. An accepted one is kept for good (the
        files of a stored object never change); any other answer, an HTTP error included, is
        kept as a doubt only for the failure backoff, in memory and on disk, then asked again."""
        if not _listable(record):
            return None
        key = ("s3_listing", record["_id"])

        def fetch() -> dict[str, Any]:
            try:
                files = self._client.object_files(record["project"], record["_id"])
                _check_total(files, record)
            except BlfsError as exc:
                before = self._cache.known(key, _s3_listing, _listing_lifetime)
                attempts = (before.attempts if before is not None else 0) + 1
                log.info(
                    "the S3 file listing of object %s is not used, its archive decides: %s",
                    record["_id"],
                    exc,
                )
                return {"doubt": str(exc), "attempts": attempts}
            return {"files": files}

        return self._cache.get(key, fetch, _s3_listing, ttl=_listing_lifetime).files

    def known_member_sizes(self, record: Mapping[str, Any]) -> dict[str, int] | None:
        """The object's file sizes if its listing was already accepted: never makes the request
        (nor looks for an answer `member_sizes` never asks for)."""
        if not _listable(record):
            return None
        known = self._cache.known(("s3_listing", record["_id"]), _s3_listing, _listing_lifetime)
        return None if known is None else known.files

    def known_product_bytes(self, object_id: str) -> bytes | None:
        """`_product.json` if it was already fetched: a listing must not make the request."""
        return self._cache.known(("product", object_id), _product_file, PRODUCT_TTL)


def _product_file(product: Any) -> bytes:
    return json_bytes({"product": product})
