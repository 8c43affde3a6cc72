"""The warehouse service (`/api/warehouse`): projects, datatypes, datasets, publications.

Quirks reproduced on purpose (API document §2, §3, §7): `count` before the ACL filter, unreadable
rows silently dropped, `limit=0` = all, 403 `{"err": ...}` on download, a hang when a dataset
query's `select` drops `project`, a hang for the product of an unknown id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from . import downscript, s3files
from .context import App
from .query import (
    check_object_id,
    parse_find,
    parse_select,
    parse_skip,
    parse_sort,
    warehouse_limit,
)
from .web import ApiError, Hang, Request, Response, json_response, route

SITE = "https://brainlife.io"


def _legacy_tags(request: Request, find: dict) -> dict:
    """`datatype_tags[]=tag` requires a tag, `datatype_tags[]=!tag` excludes it."""
    tags = request.args("datatype_tags[]")
    if not tags:
        return find
    conditions = [
        {"datatype_tags": {"$ne": t[1:]}} if t.startswith("!") else {"datatype_tags": t}
        for t in tags
    ]
    return {"$and": [find, *conditions]}


def routes(app: App) -> list:
    store = app.store

    def page(
        request: Request, collection: str, find: dict, default_sort: str | None = "_id"
    ) -> list[dict]:
        """The rows of one list request: its select, sort, skip and limit applied to `find`."""
        return store.find(
            collection,
            find,
            parse_select(request),
            parse_sort(request, default_sort),
            parse_skip(request),
            warehouse_limit(request),
        )

    def projects(request: Request) -> Response:
        claims = app.user(request, required=False)
        find = parse_find(request)
        if claims is None:
            find = {**find, "access": "public"}
        elif not (request.arg("admin") and app.has_scope(claims, "warehouse", "admin")):
            sub = app.sub(claims)
            visible = [
                {"guests": sub},
                {"members": sub},
                {"admins": sub},
                {"access": "public"},
                {"listed": True},
            ]
            find = {"$and": [find, {"$or": visible}]}
        rows = page(request, "projects", find)
        return json_response({"projects": rows, "count": store.count("projects", find)})

    def project_query(request: Request) -> Response:
        claims = app.user(request, required=False)
        words = (request.arg("q") or "").split()
        matches = [
            {
                "$or": [
                    {field: {"$regex": re.escape(w), "$options": "i"}}
                    for field in ("name", "desc", "tags")
                ]
            }
            for w in words
        ]
        find = {
            "_id": {"$in": sorted(app.readable_projects(claims))},
            "removed": False,
            **({"$and": matches} if matches else {}),
        }
        return json_response(store.find("projects", find, sort=[("_id", 1)]))

    def datatypes(request: Request) -> Response:
        app.user(request, required=False)
        find = parse_find(request)
        rows = page(request, "datatypes", find)
        return json_response({"datatypes": rows, "count": store.count("datatypes", find)})

    def datasets(request: Request) -> Response:
        claims = app.user(request)
        find = _legacy_tags(request, parse_find(request))
        rows = page(request, "datasets", find, default_sort=None)
        sub = app.sub(claims)
        readable = app.readable_projects(claims)
        writable = {
            p["_id"]
            for p in store.find(
                "projects", {"$or": [{"members": sub}, {"admins": sub}]}, {"_id": 1}
            )
        }
        kept = []
        for row in rows:
            if not row.get("publications"):
                if "project" not in row:
                    raise Hang("the ACL filter dereferences d.project._id")
                if row["project"] not in readable:
                    continue
            row["_canedit"] = row.get("project") in writable
            kept.append(row)
        if request.arg("single"):
            if not kept:
                return Response(200, [("Content-Type", "application/json; charset=utf-8")])
            return json_response(kept[0])
        sizes = store.find("datasets", find, {"size": 1})
        total = sum(r["size"] for r in sizes if isinstance(r.get("size"), int))
        return json_response({"datasets": kept, "count": len(sizes), "size": total})

    def readable_project(claims: dict, find: dict) -> str:
        project = find.get("project")
        if not project:
            raise ApiError("please specify project query")
        if project not in app.readable_projects(claims):
            raise ApiError(f"no read access to specified project:{project}")
        return project

    def distinct(request: Request) -> Response:
        claims = app.user(request)
        find = parse_find(request)
        readable_project(claims, find)
        return json_response(store.distinct("datasets", request.arg("distinct") or "_id", find))

    def inventory(request: Request) -> Response:
        claims = app.user(request)
        find = parse_find(request)
        if not find.get("publications"):
            readable_project(claims, find)
        group = {
            "subject": "$meta.subject",
            "datatype": "$datatype",
            "datatype_tags": "$datatype_tags",
        }
        pipeline = [
            {"$match": find},
            {"$group": {"_id": group, "count": {"$sum": 1}, "size": {"$sum": "$size"}}},
            {"$sort": {"_id.subject": 1}},
        ]
        return json_response(store.aggregate("datasets", pipeline))

    def check_download_access(claims: dict, dataset: dict) -> None:
        """The download ACL: a published object or a readable project, and its agreements."""
        if app.has_scope(claims, "warehouse", "stage"):
            return
        if not dataset.get("publications") and dataset["project"] not in app.readable_projects(
            claims
        ):
            message = "you don't have access to the project that the dataset belongs"
            raise ApiError(message, 403, {"err": message})
        project = store.one("projects", {"_id": dataset["project"]}) or {}
        user = store.one("users", {"sub": claims.get("sub")}) or {}
        agreed = user.get("agreements") or {}
        if any(not agreed.get(a["_id"]) for a in project.get("agreements") or []):
            message = (
                "You must agree to all data access agreements at "
                f"{SITE}/project/{dataset['project']}"
            )
            raise ApiError(message, 403, {"err": message})

    def download(request: Request) -> Response:
        claims = app.user(request, allow_query=True)
        dataset_id = check_object_id(request.params["id"], "_id", "Datasets")
        dataset = store.one("datasets", {"_id": dataset_id})
        if dataset is None:
            raise ApiError("couldn't find the dataset specified", 404)
        if dataset.get("status") != "stored":
            raise ApiError(f"status it not stored:{dataset.get('status')}")
        if not dataset.get("storage"):
            raise ApiError("storage not set")
        check_download_access(claims, dataset)
        path = store.archive(dataset_id)
        if path is None:
            raise ApiError(f"Error: ENOENT: no such file or directory, stat '{dataset_id}.tar'")
        if request.method == "GET":
            store.increment("datasets", dataset_id, "download_count")
        headers = [("Content-disposition", f"attachment; filename={path.name}")]
        if app.knobs.variant("download") == "no_length":  # sent chunked
            return Response(headers=headers, producer=lambda out: _copy(path, out))
        return Response(headers=headers, file=path, file_size=path.stat().st_size)

    def files(request: Request) -> Response:
        """The S3 files API (`bl data query --s3`): one page of a delimited listing of the files
        of a project's objects on S3; 400 for a project not on S3, the download's ACL. The
        `files` variant knob gives another server's answer instead."""
        shape = app.knobs.variant("files")
        if shape == "absent":
            text = f"Cannot GET {request.path}"
            return Response(404, [("Content-Type", "text/html; charset=utf-8")], text.encode())
        if shape == "error":
            raise ApiError("InternalError: We encountered an internal error. Please try again.")
        claims = app.user(request)
        project_id = check_object_id(request.params["project"], "_id", "Projects")
        prefix = request.params.get("prefix", "")
        object_id = prefix.strip("/").partition("/")[0]
        kinds = {"$in": list(s3files.S3_KINDS)}
        on_s3 = {"project": project_id, "storage": kinds, "status": "stored"}
        dataset = store.one("datasets", {**on_s3, "_id": object_id}) if object_id else None
        objects = [dataset] if dataset else store.find("datasets", on_s3, {"_id": 1})
        if not objects:
            if store.one("projects", {"_id": project_id}) is None:
                raise ApiError("couldn't find the project specified", 404)
            raise ApiError("this project's files are not stored on S3", 400)
        check_download_access(claims, dataset or {"project": project_id})
        listed = [] if object_id and dataset is None else objects
        keys = {
            f"{d['_id']}/{name}": file
            for d in listed
            for name, file in store.stored_files(d["_id"]).items()
        }
        limit = min(int(request.arg("limit") or s3files.MAX_KEYS), s3files.MAX_KEYS)
        page = s3files.listing(keys, prefix, limit, request.arg("continuationToken"))
        if page is None:
            raise ApiError(f"no such path: {prefix}", 404)
        if shape is not None:
            root = s3files.key_root(project_id, dataset.get("storage") if dataset else None)
            page = s3files.variant(page, shape, root)
        return json_response(page)

    def download_script(request: Request) -> Response:
        """The script of `bl bids download`: objects sorted by subject, unreadable ones left
        out after the query (limit default 100, "0" = all), one header per project."""
        claims = app.user(request)
        body = request.json()
        if not body.get("find"):
            raise ApiError("please set find parameter")
        limit = body.get("limit") or 100
        rows = store.find(
            "datasets",
            body["find"],
            sort=[("meta.subject", 1)],
            skip=int(body.get("skip") or 0),
            limit=int(limit),
        )
        readable = app.readable_projects(claims)
        rows = [r for r in rows if r.get("publications") or r.get("project") in readable]
        site = f"{request.scheme}://{request.headers.get('Host')}"
        auth = request.headers.get("Authorization")
        script = "#!/bin/bash\n\nset -e\n\n"
        if auth:
            script += f'auth="Authorization: {auth}"\n'
        users = {str(u["sub"]): u for u in store.find("users", {})}
        for project_id in dict.fromkeys(r["project"] for r in rows):
            project = store.one("projects", {"_id": project_id}) or {"_id": project_id}
            people = dict.fromkeys([*project.get("admins", []), *project.get("members", [])])
            authors = [
                users[p].get("fullname") or users[p].get("email") for p in people if p in users
            ]
            script += downscript.project_header(project, authors, site)
        datatypes = {d["_id"]: d for d in store.find("datatypes", {})}
        for row in rows:
            if row.get("meta") is not None:
                script += downscript.dataset_lines(
                    row, datatypes[row["datatype"]], site, bool(auth)
                )
        return Response(
            200,
            [("Content-Type", "text/html; charset=utf-8")],
            (script + downscript.CLOSING).encode(),
        )

    def product(request: Request) -> Response:
        claims = app.user(request)
        dataset_id = check_object_id(request.params["id"], "_id", "Datasets")
        dataset = store.one("datasets", {"_id": dataset_id})
        if dataset is None:
            raise Hang("the handler calls an undefined function for unknown ids")
        if dataset["project"] not in app.readable_projects(claims):
            raise ApiError("can't access this dataset")
        record = store.one("products", {"dataset_id": dataset_id})
        return json_response({"product": record["product"] if record else None})

    def participants(request: Request) -> Response:
        """Published participant info, else members and admins only (401 in plain text)."""
        claims = app.user(request, required=False)
        project_id = check_object_id(request.params["id"], "_id", "Projects")
        project = store.one("projects", {"_id": project_id})
        if project is None:
            return Response(404)
        sub = app.sub(claims)
        insider = app.has_scope(claims, "warehouse", "admin") or sub in (
            project.get("admins", []) + project.get("members", [])
        )
        if not project.get("publishParticipantsInfo") and not insider:
            message = (
                "you are not an administartor nor member of this project (no public participants)"
            )
            return Response(401, [("Content-Type", "text/html; charset=utf-8")], message.encode())
        record = store.one("participants", {"project": project_id})
        if record is None and claims is None and app.knobs.variant("participants"):
            raise Hang("getParticipants reads req.user.sub of a guest")
        if record is None:  # the warehouse creates an empty record on first access
            record = {"project": project_id, "subjects": [], "columns": {}, "__v": 0}
        return json_response(record)

    def pubs(request: Request) -> Response:
        find = parse_find(request)
        rows = page(request, "pubs", find)
        if request.arg("deref_contacts"):
            users = {str(u["sub"]): u for u in store.find("users", {})}
            for row in rows:
                for key in ("authors", "contributors"):
                    if key in row:
                        row[key] = [_contact(users.get(str(s)), s) for s in row[key]]
        return json_response({"pubs": rows, "count": store.count("pubs", find)})

    def pub_datasets(request: Request) -> Response:
        find = {"$and": [parse_find(request), {"publications": request.params["id"]}]}
        rows = page(request, "datasets", find)
        return json_response({"datasets": rows, "count": store.count("datasets", find)})

    return [
        route("GET", "/project", projects),
        route("GET", "/project/query", project_query),
        route("GET", "/datatype", datatypes),
        route("GET", "/dataset", datasets),
        route("GET", "/dataset/distinct", distinct),
        route("GET", "/dataset/inventory", inventory),
        route("GET", "/dataset/download/(?P<id>[^/]+)", download),
        route("GET", "/dataset/product/(?P<id>[^/]+)", product),
        route("POST", "/dataset/downscript", download_script),
        route("GET", "/files/(?P<project>[^/]+)(?:/(?P<prefix>.*))?", files),
        route("GET", "/participant/(?P<id>[^/]+)", participants),
        route("GET", "/pub", pubs),
        route("GET", "/pub/datasets/(?P<id>[^/]+)", pub_datasets),
    ]


def _copy(path: Path, out: BinaryIO) -> None:
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            out.write(chunk)


def _contact(user: dict | None, sub: str) -> dict:
    if user is None:
        return {"sub": sub}
    return {k: user[k] for k in ("sub", "username", "fullname", "email")}
