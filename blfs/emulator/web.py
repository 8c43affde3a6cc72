"""Request/response values shared by the route handlers and the HTTP server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO

JSON_TYPE = "application/json; charset=utf-8"
COMPRESSIBLE = re.compile(
    r"^(text/|application/(json|javascript|xml|x-www-form-urlencoded))|\+(json|xml)"
)
NOCACHE = [
    ("Cache-Control", "no-store, no-cache, must-revalidate, proxy-revalidate"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    ("Surrogate-Control", "no-store"),
]


class ApiError(Exception):
    """Ends a request with `status` and a JSON body (default: Express's `{"message": ...}`)."""

    def __init__(self, message: str, status: int = 500, body: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else {"message": message}


class Hang(Exception):
    """The real server never answers this request (a handler bug); hold it, then drop it."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"  # as the server is reached: links it writes use it

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise ApiError(f"SyntaxError: {exc}", 400) from exc
        return value if isinstance(value, dict) else {}


Producer = Callable[[BinaryIO], None]


@dataclass
class Response:
    """One of: `body` bytes, `file` (sent with sendfile), `producer` (streamed, no length)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: Path | None = None
    file_size: int = 0
    producer: Producer | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def length(self) -> int | None:
        if self.producer is not None:
            return None
        return self.file_size if self.file is not None else len(self.body)

    @property
    def compressible(self) -> bool:
        kind = self.header("Content-Type")
        return bool(kind and COMPRESSIBLE.search(kind))


def json_response(value: object, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", JSON_TYPE)], body)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[Request], Response]


def route(method: str, pattern: str, handler: Callable[[Request], Response]) -> Route:
    """A route whose named groups become `request.params`; patterns are anchored and, as in
    Express (whose routing is not strict by default), a trailing slash matches too."""
    return Route(method, re.compile(pattern + r"/?\Z"), handler)
