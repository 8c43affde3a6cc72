"""Every metadata answer the namespace needs, from the REST client through the metadata cache:
projects, datatypes, the object trees of projects and releases, publications, processes, tasks
and their output listings, single records by id (DESIGN §1, §3).

Knows nothing of paths beyond what a tree or a task listing is; knows nothing of FUSE.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from blfs.auth import claims
from blfs.errors import NotFound
from blfs.metacache import MetaCache
from blfs.metastore import MetaStore
from blfs.names import Named, unique_names
from blfs.nodes import Attr, json_bytes
from blfs.tree import DATASET_SELECT, Branch, build_tree, timestamp

if TYPE_CHECKING:
    from blfs.api import Client

# A finished task's output never changes: its listings are kept this long (or `ttl` if longer).
FINISHED_TASK_TTL = 24 * 3600.0
# Stored objects do not change: their `_product.json` is fetched once, then kept.
PRODUCT_TTL = float("inf")


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


def label(record: dict[str, Any]) -> str:
    """A process's or task's human name: its name, else its description, else its id."""
    return record.get("name") or record.get("desc") or record["_id"]


def task_listing(entries: Iterable[dict[str, Any]]) -> dict[str, Attr]:
    """A task directory from `/task/ls`. Symlinks count as what they point to; broken ones (no
    `directory` flag) are hidden. A symlinked file's listed size is the link's own, not that of
    the file a download serves: it is marked inexact."""
    shown: dict[str, Attr] = {}
    for entry in entries:
        name = entry.get("filename") or ""
        if name in ("", ".", "..") or "/" in name or "directory" not in entry:
            continue
        attrs = entry.get("attrs") or {}
        is_dir = bool(entry["directory"])
        size = 0 if is_dir else int(attrs.get("size") or 0)
        file_link = bool(entry.get("link")) and not is_dir
        shown[name] = Attr(is_dir, size, timestamp(attrs.get("mtime")), exact=not file_link)
    return dict(sorted(shown.items()))


def is_finished(task: dict[str, Any]) -> bool:
    return task.get("status") == "finished"


class Catalog:
    """Metadata answers by kind, each cached for the TTL (finished tasks' outputs longer).

    What is cached (and kept on disk by `store`) is the server's raw answer; the shapes the
    namespace uses (named records, trees, listings) are built from it.
    """

    def __init__(self, client: Client, ttl: float = 60.0, store: MetaStore | None = None) -> None:
        self._client = client
        self._cache = MetaCache(ttl, store)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Calls `callback` whenever a refreshed answer differs from the one it replaces."""
        self._cache.on_change(callback)

    def projects(self) -> Named[dict[str, Any]]:
        def build(projects: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            sub = token_subject(self._client.tokens.get() if self._client.tokens else None)
            shown = [
                (p["_id"], p.get("name"), p)
                for p in projects
                if not p.get("removed") and readable(p, sub)
            ]
            return unique_names(shown)

        return self._cache.get("projects", self._client.projects, build)

    def datatypes(self) -> dict[str, dict[str, Any]]:
        return self._cache.get("datatypes", self._client.datatypes)

    def project_tree(self, project_id: str) -> Branch:
        def fetch() -> list[dict[str, Any]]:
            find = {"project": project_id, "removed": False, "status": "stored"}
            return list(self._client.datasets(find, select=DATASET_SELECT))

        def build(records: list[dict[str, Any]]) -> Branch:
            shown = [r for r in records if r.get("status") == "stored" and not r.get("removed")]
            return build_tree(shown, self.datatypes())

        return self._cache.get(("project", project_id), fetch, build)

    def release_tree(self, release_id: str) -> Branch:
        def fetch() -> list[dict[str, Any]]:
            find = {"status": "stored"}
            return list(self._client.release_datasets(release_id, find, select=DATASET_SELECT))

        def build(records: list[dict[str, Any]]) -> Branch:
            shown = (r for r in records if r.get("status") == "stored")
            return build_tree(shown, self.datatypes())

        return self._cache.get(("release", release_id), fetch, build)

    def pubs(self) -> Named[dict[str, Any]]:
        def build(pubs: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names((p["_id"], p.get("name"), p) for p in pubs if not p.get("removed"))

        return self._cache.get("pubs", self._client.pubs, build)

    def instances(self, group_id: int) -> Named[dict[str, Any]]:
        def build(instances: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names((i["_id"], label(i), i) for i in instances)

        return self._cache.get(
            ("instances", group_id), lambda: self._client.instances(group_id), build
        )

    def tasks(self, instance_id: str) -> Named[dict[str, Any]]:
        def build(tasks: list[dict[str, Any]]) -> Named[dict[str, Any]]:
            return unique_names(
                (t["_id"], label(t), t) for t in tasks if t.get("status") != "removed"
            )

        return self._cache.get(
            ("tasks", instance_id), lambda: self._client.tasks(instance_id), build
        )

    def _task_ttl(self, task: dict[str, Any]) -> float | None:
        """A finished task's outputs never change: keep what was learnt of them long."""
        return max(FINISHED_TASK_TTL, self._cache.ttl) if is_finished(task) else None

    def task_listing(self, task: dict[str, Any], relpath: str) -> dict[str, Attr]:
        return self._cache.get(
            ("task_ls", task["_id"], relpath),
            lambda: self._client.task_ls(task["_id"], relpath),
            task_listing,
            ttl=self._task_ttl(task),
        )

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

        return self._cache.get(
            ("task_link", task["_id"], path), fetch, int, ttl=self._task_ttl(task)
        )

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

    def known_product_bytes(self, object_id: str) -> bytes | None:
        """`_product.json` if it was already fetched: a listing must not make the request."""
        return self._cache.known(("product", object_id), _product_file, PRODUCT_TTL)


def _product_file(product: Any) -> bytes:
    return json_bytes({"product": product})
