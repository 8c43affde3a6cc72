"""Filename-safe, stable, collision-proof names for directories named after brainlife records.

DESIGN §1.1: a human name made safe for a filename and for glob patterns (tools glob the paths
they are given: nilearn, pybids, shell patterns); siblings sharing a name each get
` (<first 8 hex of id>)`, so adding a duplicate later never renames the other siblings; every
entry is also reachable by its full id (a lookup alias that is not listed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_NAME_BYTES = 255
UNNAMED = "unnamed"
# A path component that a glob pattern matches only as itself: `/` and NUL cannot be in a name,
# and the glob metacharacters become characters that are not (brackets keep their look).
_SAFE = str.maketrans({"/": "_", "\0": "_", "[": "(", "]": ")", "*": "_", "?": "_"})


def truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def safe_name(name: object, suffix: str = "") -> str:
    """`name` usable as one path component: no `/` or NUL, never empty, `.` or `..`, ≤255 bytes,
    and no glob metacharacter (`[`/`]` become `(`/`)`, `*`/`?` become `_`).

    `suffix` is kept whole; the name before it is shortened when the whole would be too long.
    """
    if isinstance(name, str) and name.isalnum() and name.isascii() and not suffix:
        return name[:MAX_NAME_BYTES]  # letters and digits (an id, most labels): safe as it is
    text = ("" if name is None else str(name)).translate(_SAFE)
    if text in ("", ".", ".."):
        text = text.replace(".", "_") or UNNAMED
    safe = truncate_utf8(text, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix
    # The name itself where it is safe already: a tree holds one string per object id, not two.
    return name if isinstance(name, str) and safe == name else safe


def id_suffix(hex_id: str) -> str:
    """What tells apart two things that would share a name: ` (<hex>)`, an id or its prefix."""
    return f" ({hex_id})"


def pattern_safe(names: Iterable[str], clash_suffix: str) -> dict[str, str]:
    """Shown name → listed name for files named by the server (task outputs), in the order
    given. A name that holds no glob metacharacter is shown as it is; one that does is shown as
    `safe_name` maps it, with `clash_suffix` when another file already has that name."""
    listed = list(names)
    shown = {name: name for name in listed if safe_name(name) == name}
    for name in listed:
        if safe_name(name) == name:
            continue
        mapped = safe_name(name)
        if mapped in shown:
            mapped = safe_name(name, clash_suffix)
        if mapped in shown:
            mapped = safe_name(name, f"{clash_suffix}{id_suffix(str(len(shown)))}")
        shown[mapped] = name
    return shown


@dataclass
class Named(Generic[T]):
    """The children of a directory of named records: listed names plus unlisted id aliases."""

    by_name: dict[str, T] = field(default_factory=dict)
    by_id: dict[str, T] = field(default_factory=dict)

    def get(self, name: str) -> T | None:
        """The record shown as `name`, or reached by its full id."""
        found = self.by_name.get(name)
        return found if found is not None else self.by_id.get(name)


def unique_names(items: Iterable[tuple[str, object, T]], reserved: Iterable[str] = ()) -> Named[T]:
    """Names for `(id, human name, record)` siblings, unique among themselves and `reserved`.

    A name shared by several siblings (or equal to a reserved one) gets ` (<id[:8]>)`. A clash
    that remains (equal id prefixes, or a human name that looks like another's suffixed one) gets
    the full id instead. A name depends only on its own record and on which siblings share its
    plain name, so siblings never change name when an unrelated one appears.
    """
    entries = [(str(item_id), safe_name(human), record) for item_id, human, record in items]
    taken = set(reserved)
    plain_count = Counter(plain for _, plain, _ in entries)
    chosen = [
        plain
        if plain_count[plain] == 1 and plain not in taken
        else safe_name(plain, id_suffix(item_id[:8]))
        for item_id, plain, _ in entries
    ]
    chosen_count = Counter(chosen)
    named: Named[T] = Named()
    for (item_id, plain, record), name in zip(entries, chosen, strict=True):
        if chosen_count[name] > 1 or name in taken:
            name = safe_name(plain, id_suffix(item_id))
        if name in named.by_name or name in taken:
            name = safe_name(item_id)
        named.by_name[name] = record
        named.by_id[item_id] = record
    return named
