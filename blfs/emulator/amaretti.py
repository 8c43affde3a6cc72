"""The amaretti service (`/api/amaretti`): instances, tasks, task products and task output files.

Quirks reproduced: `find.$or` overwritten by the ACL, no `count`, `limit=0` → 100, `/task/:id`
without auth, access errors as 500, compressible task files gzip-encoded without a length,
folders as an on-the-fly tar.gz without dotfiles.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import mimetypes
import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from .context import App
from .query import (
    amaretti_limit,
    check_object_id,
    parse_find,
    parse_select,
    parse_skip,
    parse_sort,
)
from .web import ApiError, Request, Response, json_response, route

WORKDIR = "/workdir"
JSON = "application/json"
EXTRA_TYPES = {".gz": "application/gzip", ".tsv": "text/tab-separated-values", ".log": "text/plain"}


def content_type(name: str) -> str:
    """By the last extension, as Express does: `t1.nii.gz` → application/gzip."""
    suffix = posixpath.splitext(name)[1].lower()
    kind = EXTRA_TYPES.get(suffix) or mimetypes.types_map.get(suffix, "application/octet-stream")
    return f"{kind}; charset=UTF-8" if kind.startswith("text/") or kind == JSON else kind


def _entry(path: Path) -> dict:
    info = os.lstat(path)
    link = stat.S_ISLNK(info.st_mode)
    entry: dict = {"filename": path.name}
    if link:
        with contextlib.suppress(OSError):
            entry["directory"] = stat.S_ISDIR(os.stat(path).st_mode)
    else:
        entry["directory"] = stat.S_ISDIR(info.st_mode)
    entry["link"] = link
    mode_string = stat.filemode(info.st_mode)
    entry["attrs"] = {
        "mode": info.st_mode,
        "mode_string": mode_string,
        "uid": info.st_uid,
        "gid": info.st_gid,
        "size": info.st_size,
        "atime": int(info.st_atime),
        "mtime": int(info.st_mtime),
        "owner": None,
        "group": None,
    }
    when = dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc).strftime("%b %d %H:%M")
    entry["_raw"] = f"{mode_string} 1 {info.st_uid} {info.st_gid} {info.st_size} {when} {path.name}"
    return entry


def _without_dotfiles(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if posixpath.basename(info.name).startswith(".") else info


def _tar_gz(directory: Path):
    """`tar --exclude='.*' -hcz *` of `directory`, written as it is produced."""

    def produce(out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.GNU_FORMAT) as tar:
            tar.dereference = True
            for name in sorted(os.listdir(directory)):
                if not name.startswith("."):
                    tar.add(directory / name, arcname=name, filter=_without_dotfiles)

    return produce


def routes(app: App) -> list:
    store = app.store

    def acl(claims: dict, find: dict, group_key: str) -> dict:
        """Non-admins: the server overwrites any `$or` of the caller's filter."""
        if app.has_scope(claims, "amaretti", "admin"):
            return find
        gids = claims.get("gids") or []
        return {**find, "$or": [{"user_id": app.sub(claims)}, {group_key: {"$in": gids}}]}

    def listing(request: Request, collection: str, group_key: str, default_sort: str | None):
        claims = app.user(request)
        find = parse_find(request, "find" if request.arg("find") else "where")
        return store.find(
            collection,
            acl(claims, find, group_key),
            parse_select(request),
            parse_sort(request, default_sort),
            parse_skip(request),
            amaretti_limit(request),
        )

    def instances(request: Request) -> Response:
        return json_response({"instances": listing(request, "instances", "group_id", "_id")})

    def tasks(request: Request) -> Response:
        return json_response({"tasks": listing(request, "tasks", "_group_id", None)})

    def find_task(task_id: str, missing: str = "no such task id") -> dict:
        check_object_id(task_id, "_id", "Task")
        task = store.one("tasks", {"_id": task_id})
        if task is None:
            raise ApiError(missing)
        return task

    def task(request: Request) -> Response:
        return json_response(find_task(request.params["id"]))

    def can_access(claims: dict, task: dict) -> bool:
        return (
            app.has_scope(claims, "amaretti", "admin")
            or str(task.get("user_id")) == app.sub(claims)
            or task.get("_group_id") in (claims.get("gids") or [])
        )

    def task_products(request: Request) -> Response:
        claims = app.user(request)
        ids = request.args("ids[]") or request.args("ids")
        allowed = [
            t["_id"] for t in store.find("tasks", {"_id": {"$in": ids}}) if can_access(claims, t)
        ]
        return json_response(store.find("taskproducts", {"task_id": {"$in": allowed}}))

    def task_path(request: Request, claims: dict, relative: str) -> tuple[dict, Path, str]:
        """The task, the existing file or dir on disk, and its normalized relative path, with
        task.js `find_resource`'s texts (or those the `amaretti` variant knob asks for)."""
        shape = app.knobs.variant("amaretti")
        task = find_task(request.params["id"], "no such task")
        if shape == "no_such_task":
            raise ApiError("no such task")
        if not can_access(claims, task):
            raise ApiError("don't have access to specified task")
        if not task.get("resource_ids") or shape == "no_resource":
            raise ApiError(f"no resource currently available to download this task:{task['_id']}")
        if relative.startswith("/") or ".." in relative.split("/"):
            raise ApiError(f"Error: path is not under the task directory: {relative}")
        normal = posixpath.normpath(relative) if relative.strip("/.") else ""
        path = store.task_dir(task) / normal
        if not path.exists():
            shown = posixpath.join(WORKDIR, task["instance_id"], task["_id"], normal)
            raise ApiError(f"Error: No such file -- {shown}")
        return task, path, normal

    def ls(request: Request) -> Response:
        claims = app.user(request)
        _, directory, _ = task_path(request, claims, request.arg("p") or "")
        if not directory.is_dir():
            raise ApiError(f"Error: not a directory -- {request.arg('p')}")
        names = sorted(os.listdir(directory))
        return json_response({"files": [_entry(directory / n) for n in names]})

    def download(request: Request) -> Response:
        claims = app.user(request, allow_query=True)
        relative = request.arg("p") or (request.params.get("rest") or "").lstrip("/")
        task, path, normal = task_path(request, claims, relative)
        if path.is_dir():
            parts = [
                task["instance_id"],
                task["_id"],
                *([normal.replace("/", ".")] if normal else []),
            ]
            name = ".".join(parts) + ".tar.gz"
            return Response(
                headers=[
                    ("Content-Type", "application/x-tgz"),
                    ("Content-disposition", f"attachment; filename={name}"),
                ],
                producer=_tar_gz(path),
            )
        return Response(
            headers=[
                ("Content-Type", content_type(path.name)),
                ("Content-disposition", f"attachment; filename={path.name}"),
            ],
            file=path,
            file_size=path.stat().st_size,
        )

    return [
        route("GET", "/instance", instances),
        route("GET", "/task", tasks),
        route("GET", "/task/product", task_products),
        route("GET", "/task/ls/(?P<id>[^/]+)", ls),
        route("GET", "/task/download/(?P<id>[^/]+)(?P<rest>/.*)?", download),
        route("GET", "/task/(?P<id>[^/]+)", task),
    ]
