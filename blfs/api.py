"""The brainlife REST client (DESIGN §7 "api"): URLs, JSON, tokens, paging, retries, timeouts, and
the mapping of brainlife's error answers to our exception types (DESIGN §4, API §0 and §5).

Knows nothing of paths or FUSE. Safe to call from many threads at once: one pooled
`requests.Session`, and token refreshes serialised by a lock.
"""

from __future__ import annotations

import collections
import enum
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests
import urllib3

from blfs.auth import TokenStore, claims
from blfs.errors import (
    AccessDenied,
    BadRequest,
    BlfsError,
    NotFound,
    RemoteError,
    RemoteTimeout,
    Unreachable,
)
from blfs.ids import is_object_id

log = logging.getLogger(__name__)

LOGIN_HINT = "run `blfs login`"
# Rows per page of a list query. No server enforces a maximum (API §0).
PAGE_SIZE = 1000
# Refresh a token once less than this fraction of its lifetime is left (API §1: POST /refresh).
REFRESH_FRACTION = 0.5
# Lifetime assumed for a token without `iat` (the server default, API §1).
DEFAULT_TTL = 7 * 86400.0
# After a failed refresh, carry on with the old token for this long before trying again.
REFRESH_RETRY_AFTER = 60.0
# After a request failed all its retries, later requests get a single attempt for this long.
DOWN_WINDOW = 30.0
# A server that takes longer than this to accept a connection is not going to answer soon (a
# connection across an ocean takes a fraction of a second; a firewall that drops packets, for
# ever). It is what an unreachable server costs, once per UNREACHABLE_FIRST…UNREACHABLE_MOST.
CONNECT_TIMEOUT = 3.0
# After a call found the server unreachable, calls fail at once for this long, doubling with each
# such spell in a row up to UNREACHABLE_MOST: an offline mount answers from its cache at once.
UNREACHABLE_FIRST = 5.0
UNREACHABLE_MOST = 60.0
# A read of a body waits for all it asks, so it asks for what the link brings in about this
# long (at the rate seen so far), within these bounds: 1 MiB reads on a fast link cost a
# quarter of 256 KiB ones per byte; 64 KiB ones keep the first bytes early on a slow link.
_READ_SECONDS = 0.05
_READ_MIN = 1 << 16
_READ_MAX = 1 << 20
# Where a CA bundle for a server's certificate can be given, as requests and OpenSSL read it.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
# Requests one object's S3 file listing may take, all folders and pages together: an object of
# 100,000 files in 1000-key pages, and a bound on a server whose pages never end.
LISTING_REQUESTS = 100
# Server messages (HTTP 500 bodies) meaning "no access" and "no such thing" (API §2, §4, §5):
# amaretti says "no such task id" (/task/:id) and "no such task" (/task/ls, /task/download).
_NO_ACCESS = re.compile(r"no read access|can't access|don't have access", re.IGNORECASE)
_NOT_FOUND = re.compile(r"no such task\b|CastError", re.IGNORECASE)
# 500 answers that a retry cannot change: the request itself is at fault, or (amaretti's "no
# resource currently available…") the one task's resources are offline, not the server.
_PERMANENT = re.compile(
    r"SyntaxError|status it not stored|No such file|no resource currently available", re.I
)


class Auth(enum.Enum):
    """What a route wants from the token (API §2–§4)."""

    NONE = "none"  # never sent (/pub, /task/:id, /datatype): public for everyone
    OPTIONAL = "optional"  # sent if we have one (/project: guests see public projects)
    REQUIRED = "required"  # no token → AccessDenied without asking the server


def printable(url: str) -> str:
    """The URL without any `at=` token parameter: the only form that may reach a message or log."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(p for p in parts.query.split("&") if not p.startswith("at="))
    return urlunsplit(parts._replace(query=query))


class _Failure(Exception):
    """One failed attempt: the error to raise, and whether another attempt might succeed."""

    def __init__(self, error: BlfsError, retryable: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


def _server_message(response: requests.Response) -> str:
    """brainlife's error text: `{"message": …}` (handlers), `{"err": …}` (download ACL) or text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "err"):
            if isinstance(body.get(key), str):
                return body[key]
    text = response.text.strip().splitlines()
    return text[0][:300] if text else f"HTTP {response.status_code}"


def _classify(response: requests.Response) -> _Failure:
    """Maps an error answer to our exception types (DESIGN §4)."""
    status = response.status_code
    url = printable(response.url)
    message = _server_message(response)
    if "UnauthorizedError" in message or status == 401:
        detail = message.removeprefix("UnauthorizedError: ")
        return _Failure(AccessDenied(f"brainlife refused the token ({detail}): {LOGIN_HINT}"))
    if status == 403 or _NO_ACCESS.search(message):
        return _Failure(AccessDenied(f"no access: {message} ({url})"))
    if status == 404 or _NOT_FOUND.search(message):
        return _Failure(NotFound(f"not found: {message} ({url})"))
    if status == 400:
        return _Failure(BadRequest(f"{url} failed: HTTP 400: {message}"))
    retryable = status >= 500 and not _PERMANENT.search(message)
    return _Failure(RemoteError(f"{url} failed: HTTP {status}: {message}"), retryable)


@dataclass(frozen=True)
class _Unreachable:
    """A spell of the server being unreachable: when calls may try again (monotonic and
    wall-clock time), how many spells in a row, and the error that began this one."""

    until: float
    retry_at: float
    spells: int
    error: Unreachable


class Download:
    """One streaming HTTP body, raw bytes exactly as sent (no content decoding).

    The read timeout bounds each wait for the next chunk, not the whole body. A body that ends
    before its Content-Length raises RemoteError, so a truncated download never looks complete.
    """

    def __init__(self, response: requests.Response, url: str) -> None:
        self._response = response
        self.url = url
        length = response.headers.get("Content-Length")
        self.length: int | None = int(length) if length and length.isdigit() else None
        self.bytes_read = 0
        self._read_size = _READ_MIN

    def read(self, n: int) -> bytes:
        """The next 1 to `n` bytes (b"" at the end), in reads sized to the link's rate.

        Not read1: over TLS it returns one 16 KiB record at a time (measured: 18,000 pieces
        and twice the CPU for 300 MB), where a sized read gathers the records in C."""
        want = min(n, self._read_size)
        start = time.monotonic()
        try:
            data = self._response.raw.read(want, decode_content=False)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise RemoteTimeout(f"{self.url}: no data for too long after {self._done()}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RemoteError(f"{self.url}: download broke off after {self._done()}") from exc
        if not data and n and self.length is not None and self.bytes_read < self.length:
            raise RemoteError(f"{self.url}: download broke off after {self._done()}")
        self.bytes_read += len(data)
        rate = len(data) / max(time.monotonic() - start, 1e-6)
        self._read_size = min(max(int(rate * _READ_SECONDS), _READ_MIN), _READ_MAX)
        return data

    def _done(self) -> str:
        total = "?" if self.length is None else str(self.length)
        return f"{self.bytes_read} of {total} bytes"

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client:
    """brainlife's auth, warehouse and amaretti services under one API URL (API §0)."""

    def __init__(
        self,
        api_url: str,
        tokens: TokenStore | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        page_size: int = PAGE_SIZE,
        parallel: int = 1,
    ) -> None:
        api = api_url.rstrip("/")
        self.api_url = api
        self.tokens = tokens
        self.site = api.removesuffix("/api")  # brainlife's web pages (project and object URLs)
        self.timeout = timeout
        self.retries = retries
        self.page_size = page_size
        self.parallel = parallel  # requests at once for a listing's further pages
        self._auth = f"{api}/auth"
        self._warehouse = f"{api}/warehouse"
        self._amaretti = f"{api}/amaretti"
        self._session = requests.Session()
        # requests reads REQUESTS_CA_BUNDLE itself (it wins over this); SSL_CERT_FILE it ignores.
        self._session.verify = os.environ.get("SSL_CERT_FILE") or True
        # Up to 64 FUSE threads plus the downloads in flight, each holding a connection.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=128)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._refresh_lock = threading.Lock()
        self._refresh_failed_at = float("-inf")
        self._down_until = 0.0
        self._unreachable: _Unreachable | None = None

    # --- warehouse ------------------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        """Projects the user can read or that are listed, not removed (API §2 GET /project)."""
        find = {"removed": False}
        return list(self._warehouse_pages("/project", "projects", {"find": find}, Auth.OPTIONAL))

    def datatypes(self) -> dict[str, dict[str, Any]]:
        rows = self._warehouse_pages("/datatype", "datatypes", {}, Auth.NONE)
        return {row["_id"]: row for row in rows}

    def datasets(
        self, find: dict[str, Any], select: str | None = None, expected: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Every dataset matching `find` that the user can read, all pages (`expected`: how
        many there probably are, see `_warehouse_pages`)."""
        params: dict[str, Any] = {"find": find, "sort": "_id"}
        if select is not None:
            params["select"] = _dataset_select(select)
        return self._warehouse_pages("/dataset", "datasets", params, Auth.REQUIRED, expected)

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        _check_id(dataset_id, "data-object")
        for record in self.datasets({"_id": dataset_id}):
            return record
        raise NotFound(f"no readable data-object {dataset_id}")

    def product(self, dataset_id: str) -> dict[str, Any] | None:
        _check_id(dataset_id, "data-object")
        url = f"{self._warehouse}/dataset/product/{dataset_id}"
        return self._get_json(url, {}, Auth.REQUIRED).get("product")

    def participants(self, project_id: str) -> dict[str, Any]:
        """A project's participant table `{subjects: [{subject, …}], columns: {…}}` (API §2);
        AccessDenied unless it is published or the user is a member or admin."""
        _check_id(project_id, "project")
        return self._get_json(f"{self._warehouse}/participant/{project_id}", {}, Auth.OPTIONAL)

    def object_files(self, project_id: str, dataset_id: str) -> dict[str, int]:
        """The size of every file of a data-object stored on S3, by its path inside the object.

        The S3 "files" API (API §2) as the 2026 `bl` CLI calls it (`util.js#listWarehouseFiles`,
        `bl-data-query.js --s3`): `GET /files/<project>/<prefix>?limit=&continuationToken=`,
        pages chained by `nextContinuationToken` while `isTruncated`, each `{objects: [{Name,
        Size}], folders: [{Name}]}`, folders printed by the CLI as `Name + "/"`. No public server
        code defines it, so everything else is inferred and checked: an object's prefix is its id
        (app-archive copies an `s3fs` object's files to `<root>/<project>/<object>/<path>`), the
        listing is delimited like S3's (folders are listed in turn), and a `Name` is relative to
        the prefix listed or a full key ending in it. An answer of another shape, pages that do
        not end properly (a token repeated, a truncated page without one, more than
        `LISTING_REQUESTS` requests) or a name listed twice raise RemoteError, as HTTP errors
        raise as usual: the caller then has no listing.
        """
        _check_id(project_id, "project")
        _check_id(dataset_id, "data-object")
        sizes: dict[str, int] = {}
        folders = [""]
        budget = [LISTING_REQUESTS]
        while folders:
            folder = folders.pop()
            prefix = f"{dataset_id}/{folder}"
            for page in self._files_pages(project_id, prefix, budget):
                files, subfolders = _listing_page(page, prefix)
                for name, size in files:
                    if folder + name in sizes:
                        raise _unusable(project_id, prefix, f"{folder + name!r} listed twice")
                    sizes[folder + name] = size
                folders += [f"{folder}{name}/" for name in subfolders]
        return sizes

    def _files_pages(
        self, project_id: str, prefix: str, budget: list[int]
    ) -> Iterator[dict[str, Any]]:
        """The pages of one folder; `budget` counts down the requests the whole listing may
        make."""
        url = f"{self._warehouse}/files/{project_id}/{quote(prefix.rstrip('/'))}"
        params: dict[str, Any] = {"limit": self.page_size}
        seen: set[str] = set()
        while True:
            if budget[0] <= 0:
                raise _unusable(project_id, prefix, f"more than {LISTING_REQUESTS} requests")
            budget[0] -= 1
            page = self._files_page(url, params)
            yield page
            if not page.get("isTruncated"):
                return
            token = page.get("nextContinuationToken")
            if not isinstance(token, str) or not token:
                raise _unusable(project_id, prefix, "a truncated page without a continuation token")
            if token in seen:
                raise _unusable(project_id, prefix, "a continuation token repeated")
            seen.add(token)
            params = {**params, "continuationToken": token}

    def _files_page(self, url: str, params: dict[str, Any]) -> Any:
        """One page, one attempt: a listing is a hint the archive can do without, so a failure
        is not retried, nor taken to mean the server is down."""
        headers = self._auth_headers(Auth.REQUIRED)
        try:
            response = self._attempt("GET", url, params=params, headers=headers)
        except _Failure as exc:
            raise exc.error from None
        with response:
            if not response.ok:
                raise _classify(response).error
            try:
                return response.json()
            except ValueError as exc:
                raise RemoteError(f"{printable(response.url)} answered with invalid JSON") from exc

    def download_dataset(self, dataset_id: str) -> Download:
        _check_id(dataset_id, "data-object")
        return self._open_download(f"{self._warehouse}/dataset/download/{dataset_id}", {})

    # --- publications -----------------------------------------------------------------------------

    def pubs(self) -> list[dict[str, Any]]:
        """Publications not removed; needs no token (API §3)."""
        return list(self._warehouse_pages("/pub", "pubs", {"find": {"removed": False}}, Auth.NONE))

    def release_datasets(
        self, release_id: str, find: dict[str, Any] | None = None, select: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every dataset of a release (no ACL, no removed filter server-side); needs no token."""
        _check_id(release_id, "release")
        params: dict[str, Any] = {"find": find or {}, "sort": "_id"}
        if select is not None:
            params["select"] = select
        return self._warehouse_pages(f"/pub/datasets/{release_id}", "datasets", params, Auth.NONE)

    # --- amaretti ---------------------------------------------------------------------------------

    def instances(self, group_id: int) -> list[dict[str, Any]]:
        """A project's processes, as the brainlife UI lists them (API §4)."""
        find = {
            "config.brainlife": True,
            "status": {"$ne": "removed"},
            "group_id": group_id,
            "config.removing": {"$exists": False},
        }
        return list(self._amaretti_pages("/instance", "instances", find))

    def tasks(self, instance_id: str) -> list[dict[str, Any]]:
        _check_id(instance_id, "process")
        find = {"instance_id": instance_id, "status": {"$ne": "removed"}}
        return list(self._amaretti_pages("/task", "tasks", find))

    def task(self, task_id: str) -> dict[str, Any]:
        _check_id(task_id, "task")
        return self._get_json(f"{self._amaretti}/task/{task_id}", {}, Auth.NONE)

    def task_ls(self, task_id: str, path: str = "") -> list[dict[str, Any]]:
        _check_id(task_id, "task")
        url = f"{self._amaretti}/task/ls/{task_id}"
        return self._get_json(url, {"p": path} if path else {}, Auth.REQUIRED)["files"]

    def download_task_file(self, task_id: str, path: str) -> Download:
        _check_id(task_id, "task")
        url = f"{self._amaretti}/task/download/{task_id}/{quote(path.strip('/'))}"
        return self._open_download(url, {})

    # --- auth -------------------------------------------------------------------------------------

    def login(self, username: str, password: str, ttl_days: float = 7) -> str:
        """A new token for a username (or email) and password, as `bl login` gets it. The caller
        stores it (TokenStore.save). Not retried: failed logins count towards a lockout."""
        body = {"username": username, "password": password, "ttl": int(ttl_days * 86_400_000)}
        try:
            response = self._attempt("POST", f"{self._auth}/local/auth", json=body)
        except _Failure as exc:
            raise exc.error from exc
        if not response.ok:
            message = _server_message(response)
            if response.status_code in (401, 403):
                raise AccessDenied(f"brainlife login failed: {message}")
            raise _classify(response).error
        return response.json()["jwt"]

    def accepted_agreements(self) -> list[str]:
        """The ids of the data-use agreements this user accepted: the auth service's own profile
        (`GET /auth/profile`, `profile.private.agreements`), which the warehouse reads before it
        lets a project's objects be downloaded (API §2, download check 5)."""
        body = self._get_json(f"{self._auth}/profile", {}, Auth.REQUIRED) or {}
        private = (body.get("profile") or {}).get("private") or {}
        agreements = private.get("agreements") or {}
        return sorted(str(key) for key, agreed in agreements.items() if agreed)

    # --- the mount's first question ------------------------------------------------------------

    def check(self) -> None:
        """Is this URL a brainlife API that takes our token? One health request (no token, not
        retried), then one small query with the token if there is one. Raises BlfsError for a
        server that is not brainlife or fails TLS, RemoteError when it cannot be reached or
        fails, AccessDenied when it refuses the token; every message is one line."""
        url = f"{self._warehouse}/health"
        try:
            response = self._attempt("GET", url)
        except _Failure as exc:
            raise self._final(exc.error) from None
        with response:
            if response.status_code >= 500:
                raise _classify(response).error
            if not _is_health(response):
                raise BlfsError(
                    f"{self.api_url} is not a brainlife API: GET {url} answered"
                    f" HTTP {response.status_code}, not brainlife's health record"
                    " (the API URL ends in /api, e.g. https://brainlife.io/api)"
                )
        if self.tokens is not None and self.tokens.get() is not None:
            query = {"limit": 1, "select": "_id"}
            self._get_json(f"{self._amaretti}/instance", query, Auth.REQUIRED)

    # --- requests ---------------------------------------------------------------------------------

    def _warehouse_pages(
        self, path: str, key: str, params: dict[str, Any], auth: Auth, expected: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Pages by `count`: a page may be short, even empty, when rows the user cannot read were
        dropped after the query (API §2), so a short page does not mean the end. Once one
        page gave the total, the pages left are asked for together; `expected` (a total known
        beforehand, such as a project's recorded object count) lets the first round span it."""
        url = self._warehouse + path
        skip = 0
        batch = self._pages_in(expected)
        while True:
            count = None
            skips = range(skip, skip + batch * self.page_size, self.page_size)
            for body in self._pages(url, params, auth, skips):
                yield from body[key]
                skip += self.page_size
                count = body.get("count")
                if count is None and len(body[key]) < self.page_size:
                    return
            if count is not None and skip >= count:
                return
            batch = 1 if count is None else self._pages_in(count - skip)

    def _pages_in(self, rows: int) -> int:
        """How many pages to ask for at once for `rows` more rows: all of them when listings'
        pages are asked in parallel, else one."""
        return max(1, -(-rows // self.page_size)) if self.parallel > 1 else 1

    def _pages(
        self, url: str, params: dict[str, Any], auth: Auth, skips: range
    ) -> Iterator[dict[str, Any]]:
        """The bodies of the pages at `skips`, in order, asked `parallel` at a time (each wait
        still bounded by one timeout). No more than `parallel` pages are asked for ahead of the
        one being read, so a project of any size is never all in memory at once."""

        def page(skip: int) -> dict[str, Any]:
            return self._get_json(url, {**params, "limit": self.page_size, "skip": skip}, auth)

        if len(skips) == 1:
            yield page(skips[0])
            return
        left = iter(skips)
        with ThreadPoolExecutor(min(self.parallel, len(skips)), "blfs-pages") as pool:
            pages = collections.deque(
                pool.submit(page, skip) for skip in itertools.islice(left, self.parallel)
            )
            try:
                while pages:
                    body = pages.popleft().result()
                    for skip in itertools.islice(left, 1):
                        pages.append(pool.submit(page, skip))
                    yield body
            finally:
                for future in pages:
                    future.cancel()

    def _amaretti_pages(self, path: str, key: str, find: dict[str, Any]) -> Iterator[dict]:
        """Amaretti has no `count`, and its ACL is part of the query: a short page is the last."""
        url = self._amaretti + path
        skip = 0
        while True:
            params = {"find": find, "sort": "_id", "limit": self.page_size, "skip": skip}
            rows = self._get_json(url, params, Auth.REQUIRED)[key]
            yield from rows
            if len(rows) < self.page_size:
                return
            skip += self.page_size

    def _get_json(self, url: str, params: dict[str, Any], auth: Auth) -> Any:
        headers = self._auth_headers(auth)
        response = self._with_retries(url, params, headers, stream=False)
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteError(f"{printable(response.url)} answered with invalid JSON") from exc

    def _open_download(self, url: str, params: dict[str, Any]) -> Download:
        """Opens a streaming body. Only the opening is retried: bytes already handed out cannot
        be taken back, so a failure mid-body is the reader's to handle (the fetch layer retries
        the whole download)."""
        headers = self._auth_headers(Auth.REQUIRED)
        headers["Accept-Encoding"] = "identity"
        response = self._with_retries(url, params, headers, stream=True)
        return Download(response, printable(response.url))

    def _with_retries(
        self, url: str, params: dict[str, Any], headers: dict[str, str], *, stream: bool
    ) -> requests.Response:
        """GETs, retrying with exponential backoff what fails fast (refused connections, 5xx).

        All attempts of one call share one timeout: a request that timed out is not tried again,
        and no retry starts past the first attempt's deadline, so a caller waits about one timeout
        at most. Once a call has failed this way the server counts as down for `DOWN_WINDOW`:
        calls then get one attempt each, so an offline mount answers from its cache at once.
        """
        query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
        self._refuse_while_unreachable()
        retries = 0 if time.monotonic() < self._down_until else self.retries
        deadline = time.monotonic() + self.timeout
        for attempt in range(retries + 1):
            timeout = self._attempt_timeout(deadline, stream)
            try:
                response = self._attempt(
                    "GET", url, params=query, headers=headers, stream=stream, timeout=timeout
                )
                if response.ok:
                    self._down_until = 0.0
                    self._unreachable = None
                    return response
                failure = _classify(response)
                response.close()
            except _Failure as exc:
                failure = exc
            if not failure.retryable:
                raise self._final(failure.error)
            delay = min(4.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
            if attempt == retries or time.monotonic() + delay >= deadline:
                self._down_until = time.monotonic() + DOWN_WINDOW
                raise self._final(failure.error)
            log.info("%s (retry %d of %d in %.1f s)", failure, attempt + 1, retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _refuse_while_unreachable(self) -> None:
        """Fails at once while the server counts as unreachable (see `_final`)."""
        spell = self._unreachable
        if spell is not None and time.monotonic() < spell.until:
            when = time.strftime("%H:%M:%S", time.localtime(spell.retry_at))
            raise Unreachable(
                f"cannot reach {self.api_url}, not tried again before {when} (last: {spell.error})"
            )

    def _final(self, error: BlfsError) -> BlfsError:
        """A call's error; one that found the server unreachable makes the calls of the next
        while fail at once (UNREACHABLE_FIRST, doubling with each spell in a row), so that an
        unreachable server costs one connect timeout per spell, not one per call."""
        if isinstance(error, Unreachable):
            spells = self._unreachable.spells + 1 if self._unreachable is not None else 1
            window = min(UNREACHABLE_FIRST * 2 ** (spells - 1), UNREACHABLE_MOST)
            until = time.monotonic() + window
            self._unreachable = _Unreachable(until, time.time() + window, spells, error)
        return error

    def _attempt_timeout(self, deadline: float, stream: bool) -> tuple[float, float]:
        """(connect, read) timeouts of one attempt: what is left of the call's timeout. A stream's
        read timeout stays whole, as it also bounds each wait for the next chunk of its body."""
        left = max(deadline - time.monotonic(), 0.1)
        return min(left, CONNECT_TIMEOUT), self.timeout if stream else left

    def _attempt(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request with connect and read timeouts; network failures become `_Failure`s."""
        shown = printable(url) + ("?" + urlencode(kwargs["params"]) if kwargs.get("params") else "")
        kwargs.setdefault("timeout", (min(self.timeout, CONNECT_TIMEOUT), self.timeout))
        try:
            response = self._session.request(method, url, **kwargs)
        except requests.ConnectTimeout as exc:
            # Not retried: a server that lets connections hang costs a connect timeout each.
            waited = kwargs["timeout"][0]
            error: BlfsError = Unreachable(
                f"{shown}: cannot reach the server (no connection within {waited:.3g} s)"
            )
            raise _Failure(error) from exc
        except requests.Timeout as exc:
            waited = kwargs["timeout"][1]
            error = RemoteTimeout(f"{shown}: no answer within {waited:.3g} s")
            raise _Failure(error, retryable=True) from exc
        except requests.exceptions.SSLError as exc:
            raise _Failure(BlfsError(_tls_failure(url, exc))) from exc
        except requests.RequestException as exc:
            kind = Unreachable if _refused(exc) else RemoteError
            error = kind(f"{shown}: cannot reach the server ({type(exc).__name__})")
            raise _Failure(error, retryable=True) from exc
        log.debug("%s %s → %d", method, printable(response.url), response.status_code)
        return response

    # --- tokens -----------------------------------------------------------------------------------

    def _auth_headers(self, auth: Auth) -> dict[str, str]:
        if auth is Auth.NONE:
            return {}
        token = self._valid_token(auth)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _valid_token(self, auth: Auth) -> str | None:
        """The stored token, refreshed first when near expiry; AccessDenied if it cannot serve."""
        token = self.tokens.get() if self.tokens else None
        if token is None:
            if auth is Auth.REQUIRED:
                raise AccessDenied(f"not logged in to brainlife: {LOGIN_HINT}")
            return None
        exp, lifetime = _expiry(token, self.tokens)
        left = exp - time.time()
        if left <= 0:
            raise AccessDenied(f"the brainlife token has expired: {LOGIN_HINT}")
        if left < lifetime * REFRESH_FRACTION:
            return self._refresh(token, lifetime)
        return token

    def _refresh(self, token: str, lifetime: float) -> str:
        """Swaps the token for a fresh one of the same lifetime; on failure keeps the old one
        (still valid) and tries again later. One thread refreshes, the others wait for it."""
        assert self.tokens is not None
        with self._refresh_lock:
            current = self.tokens.get() or token
            if current != token or time.monotonic() - self._refresh_failed_at < REFRESH_RETRY_AFTER:
                return current
            url = f"{self._auth}/refresh"
            headers = {"Authorization": f"Bearer {token}"}
            try:
                response = self._attempt(
                    "POST", url, json={"ttl": int(lifetime * 1000)}, headers=headers
                )
                if not response.ok:
                    raise _classify(response)
                fresh = response.json()["jwt"]
                claims(fresh)
            except (_Failure, ValueError, KeyError, TypeError) as exc:
                self._refresh_failed_at = time.monotonic()
                log.warning("could not refresh the brainlife token, still using it: %s", exc)
                return token
            try:
                self.tokens.save(fresh)
            except OSError as exc:
                self._refresh_failed_at = time.monotonic()
                log.warning("could not save the refreshed brainlife token: %s", exc)
            else:
                log.info("refreshed the brainlife token in %s", self.tokens.path)
            return fresh

    def close(self) -> None:
        self._session.close()


def _expiry(token: str, tokens: TokenStore | None) -> tuple[float, float]:
    """(expiry time, lifetime) in seconds from the token's claims; `exp` is a float (API §1)."""
    try:
        decoded = claims(token)
        exp = float(decoded["exp"])
        lifetime = exp - float(decoded["iat"]) if "iat" in decoded else DEFAULT_TTL
    except (ValueError, KeyError, TypeError) as exc:
        where = f" in {tokens.path}" if tokens else ""
        raise AccessDenied(f"the brainlife token{where} is unreadable: {LOGIN_HINT}") from exc
    return exp, lifetime


def _refused(exc: requests.RequestException) -> bool:
    """Whether no connection could be made at all (refused, no route, no such host), as
    against one that broke once made."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _is_health(response: requests.Response) -> bool:
    """brainlife services answer /health with `{"status": "ok"|"failed", …}` (API §2)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return response.ok and isinstance(body, dict) and "status" in body


def _tls_failure(url: str, exc: requests.exceptions.SSLError) -> str:
    """One line: what failed, and where a private CA's bundle goes."""
    reason = str(getattr(exc.args[0], "reason", exc) if exc.args else exc)
    detail = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)|\W+$", "", reason)
    variables = " or ".join(CA_BUNDLE_VARIABLES)
    return (
        f"TLS verification failed for {urlsplit(url).netloc} ({detail}); if it uses a private CA,"
        f" give its bundle in {variables}=/path/to/ca.pem"
    )


def _listing_page(page: Any, prefix: str) -> tuple[list[tuple[str, int]], list[str]]:
    """A files-API page's files (name, size) and folders, by name relative to the prefix
    listed; RemoteError for any other shape (a raw S3 answer, a name from elsewhere). The
    prefix's own entry (S3's directory marker, an empty object) is no file of it."""
    if not isinstance(page, dict):
        raise RemoteError(f"files listing of {prefix!r}: not a JSON object")
    objects, folders = page.get("objects"), page.get("folders")
    if not isinstance(objects, list) or not isinstance(folders, list):
        raise RemoteError(f"files listing of {prefix!r}: no `objects` and `folders` lists")
    files = []
    for row in objects:
        size = row.get("Size") if isinstance(row, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RemoteError(f"files listing of {prefix!r}: a file without a size: {row!r:.80}")
        name = _listed_name(row, prefix)
        if name is None and size:
            raise _not_under(row, prefix)
        if name is not None:
            files.append((name, size))
    subfolders = [_listed_name(row, prefix) for row in folders]
    return files, [name for name in subfolders if name is not None]


def _listed_name(row: Any, prefix: str) -> str | None:
    """A listed `Name` relative to `prefix`: as given, with the prefix, or a full key ending in
    the prefix; never one with a `/` left inside (the listing is delimited). None for the
    prefix itself."""
    name = row.get("Name") if isinstance(row, dict) else None
    if not isinstance(name, str):
        raise RemoteError(f"files listing of {prefix!r}: an entry without a name: {row!r:.80}")
    name, listed = name.rstrip("/"), prefix.rstrip("/")
    if name in ("", listed) or name.endswith(f"/{listed}"):
        return None
    if "/" in name:
        at = f"/{name}".rfind(f"/{prefix}")
        if at < 0:
            raise _not_under(row, prefix)
        name = f"/{name}"[at + 1 + len(prefix) :]
    if "/" in name or name in (".", ".."):
        raise _not_under(row, prefix)
    return name


def _not_under(row: dict[str, Any], prefix: str) -> RemoteError:
    return RemoteError(f"files listing of {prefix!r}: a name not under it: {row['Name']!r:.80}")


def _unusable(project_id: str, prefix: str, why: str) -> RemoteError:
    return RemoteError(f"files listing of {prefix!r} in project {project_id} is incomplete: {why}")


def _check_id(value: str, what: str) -> None:
    """A malformed id would only earn a server CastError (API §5): answer it locally."""
    if not is_object_id(value.lower()):
        raise NotFound(f"no {what} with id {value!r}")


def _dataset_select(select: str) -> str:
    """/dataset's ACL filter reads `project` (and `publications`): without them in the select
    the server hangs (API §2). Exclusion-only selects keep them unless they exclude them."""
    fields = select.split()
    if fields and all(f.startswith("-") for f in fields):
        return " ".join(f for f in fields if f not in ("-project", "-publications"))
    return " ".join(fields + [f for f in ("project", "publications") if f not in fields])
