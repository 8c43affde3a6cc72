"""The emulator's database: DIR/db/*.json loaded into mongomock, so queries get Mongo semantics.

Also owns the archive files (DIR/archives) and task dirs (DIR/tasks). Writes made through the
admin endpoints go back to DIR/db so that tests reading the JSON files see what the server serves.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import mongomock

from .generate import COLLECTIONS

GZIP_MAGIC = b"\x1f\x8b"
CACHE_ENTRIES = 64
T = TypeVar("T")


class Store:
    """Thread-safe access to the collections (mongomock is not) and the files on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._db = mongomock.MongoClient().blfs
        self._versions: dict[str, int] = dict.fromkeys(COLLECTIONS, 0)
        self._cache: OrderedDict[str, tuple[str, int, object]] = OrderedDict()
        for name in COLLECTIONS:
            path = root / "db" / f"{name}.json"
            records = json.loads(path.read_text()) if path.exists() else []
            if records:
                self._db[name].insert_many(records)

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
        def run() -> list[dict]:
            cursor = self._db[collection].find(query, projection)
            return list(cursor.sort(sort) if sort else cursor)

        return self._memo(collection, ["find", query, projection, sort], run)

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
            self._cache[text] = (kind, version, result)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return result

    def one(self, collection: str, query: dict) -> dict | None:
        with self._lock:
            return self._db[collection].find_one(query)

    def count(self, collection: str, query: dict) -> int:
        with self._lock:
            return self._db[collection].count_documents(query)

    def distinct(self, collection: str, key: str, query: dict) -> list:
        table = self._db[collection]
        return list(
            self._memo(collection, ["distinct", key, query], lambda: table.distinct(key, query))
        )

    def aggregate(self, collection: str, pipeline: list[dict]) -> list[dict]:
        table = self._db[collection]
        rows = self._memo(
            collection, ["aggregate", pipeline], lambda: list(table.aggregate(pipeline))
        )
        return copy.deepcopy(rows)

    def increment(self, collection: str, record_id: str, key: str) -> None:
        """A counter (download_count) bumped by every download: memoized rows are patched in
        place rather than every memoized query of the collection being dropped."""
        with self._lock:
            self._db[collection].update_one({"_id": record_id}, {"$inc": {key: 1}})
            for kind, _, rows in self._cache.values():
                if kind == f"find:{collection}":
                    for row in rows:
                        if row.get("_id") == record_id and key in row:
                            row[key] += 1

    def upsert(self, collection: str, records: list[dict]) -> None:
        """Inserts or replaces records by `_id`, then rewrites DIR/db/<collection>.json."""
        with self._lock:
            table = self._db[collection]
            for record in records:
                table.replace_one({"_id": record["_id"]}, record, upsert=True)
            self._versions[collection] += 1
            self._save(collection)

    def _save(self, collection: str) -> None:
        path = self.root / "db" / f"{collection}.json"
        temporary = path.with_suffix(".json.tmp")
        records = list(self._db[collection].find({}))
        temporary.write_text(json.dumps(records, indent=1))
        os.replace(temporary, path)

    def archive(self, dataset_id: str) -> Path | None:
        for suffix in (".tar", ".tar.gz"):
            path = self.root / "archives" / f"{dataset_id}{suffix}"
            if path.exists():
                return path
        return None

    def replace_archive(self, dataset_id: str, data: bytes) -> None:
        """Stores `data` as the dataset's archive (gzip sniffed for the name) and sets `size`."""
        with self._lock:
            old = self.archive(dataset_id)
            suffix = ".tar.gz" if data[:2] == GZIP_MAGIC else ".tar"
            path = self.root / "archives" / f"{dataset_id}{suffix}"
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
            if old and old != path:
                old.unlink()
            self._db["datasets"].update_one({"_id": dataset_id}, {"$set": {"size": len(data)}})
            self._versions["datasets"] += 1
            self._save("datasets")

    def task_dir(self, task: dict) -> Path:
        return self.root / "tasks" / task["instance_id"] / task["_id"]
