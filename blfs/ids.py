"""The one home of brainlife ids: data-objects, tasks and the other records are 24-hex ObjectIds."""

from __future__ import annotations

import re
from collections.abc import Iterable

OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def is_object_id(text: str) -> bool:
    """A 24-hex lower-case id, as brainlife shows them in paths and `bl data query`."""
    return OBJECT_ID.fullmatch(text) is not None


def last_object_id(parts: Iterable[str]) -> str | None:
    """The innermost id among a path's components (an object directory or anything inside it)."""
    ids = [part for part in parts if is_object_id(part)]
    return ids[-1] if ids else None
