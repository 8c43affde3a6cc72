"""A record of a large listing (a project's data-objects) held in memory by the few fields that
paths, listings and downloads need; the rest is read from the metadata store when asked for.

A project of 40,000 objects took some 130 MB as parsed records, mostly provenance nobody reads
while walking; held this way it takes a few MB, and memory stays flat however big the project
(DESIGN §3). A record reads as the whole record it stands for (a `Mapping`).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from blfs.errors import NotFound
from blfs.metastore import MetaStore

# The fields held in memory: what a listing, `stat`, a download and asking ahead read of every
# object. Anything else (meta, provenance, tags) costs one read of the store.
HELD = ("_id", "project", "datatype", "storage", "size", "create_date")  # `_held`, in order
# What a listing is built from (its tree, its filter on state), kept in the store beside each
# whole record so that reading a listing back parses only these: `head`.
HEAD = (*HELD, "status", "removed", "tags", "datatype_tags")
HEAD_META = ("subject", "session")
# Whole records kept in memory after a read of the store: those of the objects in use.
RECENT = 512
_ABSENT = object()


class Rows:
    """Where the whole records of one listing are: its rows in the store, the recently read
    ones in memory."""

    def __init__(self, store: MetaStore, listing: str) -> None:
        self._store = store
        self.listing = listing
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def load(self, object_id: str) -> dict[str, Any]:
        with self._lock:
            record = self._recent.get(object_id)
            if record is not None:
                self._recent.move_to_end(object_id)
                return record
        text = self._store.row(self.listing, object_id)
        if text is None:
            raise NotFound(f"data-object {object_id} is no longer in its listing")
        record = json.loads(text)
        with self._lock:
            self._recent[object_id] = record
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        return record


class StoredRecord(Mapping[str, Any]):
    """One record of a listing kept in the store (`rows`), as `HELD` fields and a way to the
    rest."""

    __slots__ = ("_held", "_rows")

    def __init__(self, record: Mapping[str, Any], rows: Rows) -> None:
        get = record.get
        self._held = (
            get("_id", _ABSENT),
            _shared(get("project", _ABSENT)),
            _shared(get("datatype", _ABSENT)),
            _shared(get("storage", _ABSENT)),
            get("size", _ABSENT),
            get("create_date", _ABSENT),
        )
        self._rows = rows

    def whole(self) -> dict[str, Any]:
        """The record as the server gave it."""
        return self._rows.load(self._held[0])

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._held[HELD.index(key)]
        except ValueError:
            return self.whole()[key]
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.whole())

    def __len__(self) -> int:
        return len(self.whole())

    def __repr__(self) -> str:
        return f"StoredRecord({self._held[0]!r})"


def head(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a record that its listing is built from, shaped as the record is."""
    fields = {name: record[name] for name in HEAD if name in record}
    meta = record.get("meta")
    if isinstance(meta, Mapping):
        fields["meta"] = {name: meta[name] for name in HEAD_META if name in meta}
    return fields


def whole(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as a plain dict, as a file that shows it needs."""
    if isinstance(record, StoredRecord):
        return record.whole()
    return record if isinstance(record, dict) else dict(record)


def _shared(value: Any) -> Any:
    """Values many records share (a project's, a datatype's id, a storage kind) once only."""
    return sys.intern(value) if isinstance(value, str) else value
