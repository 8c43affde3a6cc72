"""Mongoose-style list parameters (find/select/sort/limit/skip) parsed as brainlife does."""

from __future__ import annotations

import json
import re

from .web import ApiError, Request

OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}\Z")


def parse_find(request: Request, name: str = "find") -> dict:
    """`find` is JSON.parse'd by the server: bad JSON is a 500 SyntaxError."""
    text = request.arg(name)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApiError(f"SyntaxError: {exc.args[0]}") from exc
    if not isinstance(value, dict):
        raise ApiError('ObjectParameterError: Parameter "filter" to find() must be an object')
    return value


def parse_select(request: Request) -> dict | None:
    """`"meta datatype -prov"` → a Mongo projection (None = every field)."""
    text = request.arg("select")
    if not text:
        return None
    projection: dict[str, int] = {}
    for token in text.split():
        if token.startswith("-"):
            projection[token[1:]] = 0
        else:
            projection[token.lstrip("+")] = 1
    kinds = {v for k, v in projection.items() if k != "_id"}
    if len(kinds) > 1:
        raise ApiError("MongoError: Projection cannot have a mix of inclusion and exclusion.")
    return projection


def is_inclusion(projection: dict | None) -> bool:
    return bool(projection) and any(v == 1 for k, v in projection.items() if k != "_id")


def parse_sort(request: Request, default: str | None = None) -> list[tuple[str, int]]:
    """`"meta.subject -create_date"`; a JSON text is not parsed (it names one odd field)."""
    text = request.arg("sort", default) or ""
    return [(t[1:], -1) if t.startswith("-") else (t, 1) for t in text.split()]


def _int(text: str | None) -> int | None:
    match = re.match(r"\s*[-+]?\d+", text or "")
    return int(match.group()) if match else None


def warehouse_limit(request: Request) -> int:
    """Default 100; `limit=0` means no limit (the string "0" is truthy in JavaScript)."""
    value = _int(request.arg("limit"))
    return 100 if value is None else max(value, 0)


def amaretti_limit(request: Request) -> int:
    """`parseInt(limit) || 100`: `limit=0` falls back to 100."""
    return _int(request.arg("limit")) or 100


def parse_skip(request: Request) -> int:
    return max(_int(request.arg("skip")) or 0, 0)


def check_object_id(value: str, path: str, model: str) -> str:
    if not OBJECT_ID.match(value):
        raise ApiError(
            f'CastError: Cast to ObjectId failed for value "{value}" at path "{path}" '
            f'for model "{model}"'
        )
    return value
