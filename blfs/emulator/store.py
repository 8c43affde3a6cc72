"""The emulator's database: DIR/db/*.json loaded into mongomock, so queries get Mongo semantics.

Also owns the archive files (DIR/archives) and task dirs (DIR/tasks). Writes made through the
admin endpoints go back to DIR/db so that tests reading the JSON files see what the server serves.

mongomock evaluates a query by scanning every document (about 2 µs each), which at 10,000 objects
makes each by-id request cost tens of milliseconds. So the store also keeps every record in a
dict by `_id`, plus a few single-field indexes: a query that pins `_id` (or an indexed field) to
strings is run by mongomock over just those candidates, with unchanged semantics.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import mongomock
from mongomock.collection import Collection

from .generate import COLLECTIONS
from .s3files import File, archive_files, recorded_size

GZIP_MAGIC = b"\x1f\x8b"
CACHE_ENTRIES = 64
# Fields (besides `_id`) looked up by exact value on the hot path.
INDEXED: dict[str, tuple[str, ...]] = {"products": ("dataset_id",)}
# Pending counter updates beyond which reloading a collection beats updating each record.
RELOAD_AFTER = 16
T = TypeVar("T")


def _exact_strings(condition: object) -> list[str] | None:
    """The values a top-level condition pins its field to (`"x"` or `{"$in": ["x", ...]}`)."""
    if isinstance(condition, str):
        return [condition]
    if isinstance(condition, dict) and list(condition) == ["$in"]:
        values = condition["$in"]
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            return values
    return None


class _Table:
    """One collection's records by `_id` in natural order, and its INDEXED fields' values."""

    def __init__(self, fields: tuple[str, ...], records: Iterable[dict]) -> None:
        self.fields = fields
        self.records: dict[str, dict] = {r["_id"]: r for r in records}
        self.reindex()

    def reindex(self) -> None:
        self.order = {record_id: n for n, record_id in enumerate(self.records)}
        self.index: dict[str, dict[str, list[str]]] = {f: defaultdict(list) for f in self.fields}
        for record_id, record in self.records.items():
            for field in self.fields:
                value = record.get(field)
                for key in value if isinstance(value, list) else [value]:
                    if isinstance(key, str):
                        self.index[field][key].append(record_id)

    def candidates(self, query: dict) -> list[dict] | None:
        """The records that can match `query`, in natural order; None when every record can."""
        for field in ("_id", *self.fields):
            wanted = _exact_strings(query.get(field))
            if wanted is None:
                continue
            if field == "_id":
                ids = {i for i in wanted if i in self.records}
            else:
                ids = {i for value in wanted for i in self.index[field].get(value, ())}
            return [self.records[i] for i in sorted(ids, key=self.order.__getitem__)]
        return None


class Store:
    """Thread-safe access to the collections (mongomock is not) and the files on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._db = mongomock.MongoClient().blfs
        self._scratch = mongomock.MongoClient().scratch.candidates
        self._versions: dict[str, int] = dict.fromkeys(COLLECTIONS, 0)
        self._cache: OrderedDict[str, tuple[str, int, object, dict[str, dict]]] = OrderedDict()
        self._tables: dict[str, _Table] = {}
        self._pending: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for name in COLLECTIONS:
            path = root / "db" / f"{name}.json"
            records = json.loads(path.read_text()) if path.exists() else []
            if records:
                self._db[name].insert_many(records)
            self._tables[name] = _Table(INDEXED.get(name, ()), records)

    def _engine(self, collection: str, query: dict) -> Collection:
        """Where to run `query` (call with the lock held)."""
        narrowed = self._narrowed(collection, query)
        return self._table(collection) if narrowed is None else narrowed

    def _narrowed(self, collection: str, query: dict) -> Collection | None:
        """A scratch collection holding only the candidates of a query that pins `_id` or an
        indexed field; None for other queries. Call with the lock held."""
        candidates = self._tables[collection].candidates(query)
        if candidates is None:
            return None
        self._scratch.drop()
        if candidates:
            self._scratch.insert_many(candidates)
        return self._scratch

    def _table(self, collection: str) -> Collection:
        """The whole mongomock collection, with pending counter increments applied."""
        self._flush(collection)
        return self._db[collection]

    def find(
        self,
        collection: str,
        query: dict,
        projection: dict | None = None,
        sort: list[tuple[str, int]] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict]:
        """One page of a query; rows are shallow copies (handlers may add top-level keys)."""
        rows = self._results(collection, query, projection or None, sort or None)
        page = rows[skip : skip + limit] if limit else rows[skip:]
        return [dict(row) for row in page]

    def _results(
        self, collection: str, query: dict, projection: dict | None, sort: list | None
    ) -> list[dict]:
        """Narrowed queries are cheap and rarely repeated, so only full scans are memoized."""

        def run(table: Collection) -> list[dict]:
            cursor = table.find(query, projection)
            return list(cursor.sort(sort) if sort else cursor)

        with self._lock:
            narrowed = self._narrowed(collection, query)
            if narrowed is not None:
                return run(narrowed)
        return self._memo(
            collection, ["find", query, projection, sort], lambda: run(self._table(collection))
        )

    def _memo(self, collection: str, key: list, compute: Callable[[], T]) -> T:
        """Query results memoized until the collection changes: clients page through the same
        query (skip += limit) and list the same folders again, and mongomock scans every time."""
        kind = f"{key[0]}:{collection}"
        text = json.dumps([collection, *key], sort_keys=True, default=str)
        with self._lock:
            version = self._versions[collection]
            cached = self._cache.get(text)
            if cached and cached[1] == version:
                self._cache.move_to_end(text)
                return cached[2]
            result = compute()
            rows = result if kind.startswith("find:") else []
            by_id = {row["_id"]: row for row in rows if "_id" in row}
            self._cache[text] = (kind, version, result, by_id)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return result

    def one(self, collection: str, query: dict) -> dict | None:
        with self._lock:
            return self._engine(collection, query).find_one(query)

    def count(self, collection: str, query: dict) -> int:
        with self._lock:
            return self._engine(collection, query).count_documents(query)

    def distinct(self, collection: str, key: str, query: dict) -> list:
        return list(
            self._memo(
                collection,
                ["distinct", key, query],
                lambda: self._table(collection).distinct(key, query),
            )
        )

    def aggregate(self, collection: str, pipeline: list[dict]) -> list[dict]:
        rows = self._memo(
            collection,
            ["aggregate", pipeline],
            lambda: list(self._table(collection).aggregate(pipeline)),
        )
        return copy.deepcopy(rows)

    def increment(self, collection: str, record_id: str, key: str) -> None:
        """A counter (download_count) bumped by every download. An update in mongomock is a
        scan, so the increment lands in the record dict and memoized rows at once and reaches
        mongomock only before the next query that scans the collection."""
        with self._lock:
            record = self._tables[collection].records.get(record_id)
            if record is None:
                return
            record[key] = record.get(key, 0) + 1
            self._pending[collection].add((record_id, key))
            for kind, _, _, by_id in self._cache.values():
                row = by_id.get(record_id)
                if kind == f"find:{collection}" and row is not None and key in row:
                    row[key] += 1

    def _flush(self, collection: str) -> None:
        """Copies pending counters into mongomock: one update (a scan) per changed field, or,
        when that would cost more, a reload of the whole collection (about 15 scans' worth)."""
        pending = self._pending.pop(collection, None)
        if not pending:
            return
        table = self._db[collection]
        records = self._tables[collection].records
        if len(pending) < RELOAD_AFTER:
            for record_id, key in pending:
                table.update_one({"_id": record_id}, {"$set": {key: records[record_id][key]}})
        else:
            table.drop()
            table.insert_many(list(records.values()))

    def upsert(self, collection: str, records: list[dict]) -> None:
        """Inserts or replaces records by `_id`, then rewrites DIR/db/<collection>.json."""
        with self._lock:
            table = self._table(collection)
            stored = self._tables[collection]
            for record in records:
                table.replace_one({"_id": record["_id"]}, record, upsert=True)
                stored.records[record["_id"]] = copy.deepcopy(record)
            stored.reindex()
            self._versions[collection] += 1
            self._save(collection)

    def _save(self, collection: str) -> None:
        path = self.root / "db" / f"{collection}.json"
        temporary = path.with_suffix(".json.tmp")
        records = list(self._tables[collection].records.values())
        temporary.write_text(json.dumps(records, indent=1))
        os.replace(temporary, path)

    def archive(self, dataset_id: str) -> Path | None:
        for suffix in (".tar", ".tar.gz"):
            path = self.root / "archives" / f"{dataset_id}{suffix}"
            if path.exists():
                return path
        return None

    def stored_files(self, dataset_id: str) -> dict[str, File]:
        """The files of an `s3fs` object: its archive's regular members."""
        path = self.archive(dataset_id)
        return {} if path is None else archive_files(path)

    def replace_archive(self, dataset_id: str, data: bytes) -> None:
        """Stores `data` as the dataset's archive (gzip sniffed for the name) and sets `size`:
        the archive's length, or for an `s3fs` object the sum of its files' sizes (API §2)."""
        with self._lock:
            old = self.archive(dataset_id)
            suffix = ".tar.gz" if data[:2] == GZIP_MAGIC else ".tar"
            path = self.root / "archives" / f"{dataset_id}{suffix}"
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
            if old and old != path:
                old.unlink()
            record = self._tables["datasets"].records.get(dataset_id)
            if record is not None:
                self.upsert("datasets", [{**record, "size": recorded_size(record, path)}])

    def task_dir(self, task: dict) -> Path:
        return self.root / "tasks" / task["instance_id"] / task["_id"]
