"""The emulator's fast paths answer exactly as a full mongomock scan would.

Queries that pin `_id` (or a product's `dataset_id`) run over their candidates only, download
counters reach mongomock lazily, and verified tokens are remembered: each is checked here against
the slow path it replaces.
"""

from __future__ import annotations

import time
import uuid

import pytest

DATASETS = "/warehouse/dataset"
DOWNLOAD = "/warehouse/dataset/download/"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


def lab_ids(emulator) -> list[str]:
    lab = next(p["_id"] for p in emulator.db("projects") if p["name"] == "Lab Private")
    return [
        d["_id"]
        for d in emulator.db("datasets")
        if d["project"] == lab and d["status"] == "stored" and not d["removed"]
    ]


def rows(emulator, token: str, find: dict, **params: object) -> list[dict]:
    reply = emulator.get(DATASETS, token, params={"find": find, "limit": 0, **params})
    reply.raise_for_status()
    return reply.json()["datasets"]


def test_by_id_queries_answer_as_a_full_scan(emulator, token):
    ids = lab_ids(emulator)
    first, second, third = ids[0], ids[5], ids[9]
    queries = [
        {"_id": first},
        {"_id": {"$in": [third, first, second]}},
        {"_id": {"$in": [third, "0" * 24]}},
        {"_id": first, "status": "failed"},
        {"_id": second, "$or": [{"removed": True}, {"meta.subject": {"$exists": True}}]},
        {"_id": "0" * 24},
    ]
    for find in queries:
        for params in ({}, {"select": "project meta"}, {"sort": "-_id"}, {"skip": 1}):
            narrowed = rows(emulator, token, find, **params)
            scanned = rows(emulator, token, {"$and": [find]}, **params)
            assert narrowed == scanned, (find, params)
    in_order = rows(emulator, token, {"_id": {"$in": [third, first, second]}})
    assert [r["_id"] for r in in_order] == [first, second, third]


def test_single_by_id_returns_the_record(emulator, token):
    dataset_id = lab_ids(emulator)[3]
    reply = emulator.get(DATASETS, token, params={"find": {"_id": dataset_id}, "single": "true"})
    assert reply.json()["_id"] == dataset_id
    assert reply.json()["_canedit"] is True


@pytest.mark.parametrize("objects", [1, 20])
def test_download_counts_reach_queries_that_scan(emulator, token, objects):
    """Few pending counters are updated one by one, many by a reload: both must show."""
    ids = lab_ids(emulator)[:objects]

    def counts() -> dict[str, int]:
        fresh = {"_id": {"$in": ids}, "desc": {"$ne": uuid.uuid4().hex}}
        found = rows(emulator, token, {"$and": [fresh]}, select="project download_count")
        return {r["_id"]: r["download_count"] for r in found}

    before = counts()
    for dataset_id in ids:
        assert emulator.get(DOWNLOAD + dataset_id, token).status_code == 200
    assert counts() == {i: n + 1 for i, n in before.items()}


def test_products_follow_upserts(scratch_emulator):
    token = scratch_emulator.token()
    with_product = {p["dataset_id"] for p in scratch_emulator.db("products")}
    dataset_id = next(i for i in lab_ids(scratch_emulator) if i not in with_product)
    path = f"/warehouse/dataset/product/{dataset_id}"
    assert scratch_emulator.get(path, token).json() == {"product": None}
    record = {"_id": uuid.uuid4().hex[:24], "dataset_id": dataset_id, "product": {"k": 1}}
    scratch_emulator.put_records("products", [record])
    assert scratch_emulator.get(path, token).json() == {"product": {"k": 1}}
    scratch_emulator.put_records("products", [{**record, "dataset_id": "1" * 24}])
    assert scratch_emulator.get(path, token).json() == {"product": None}


def test_a_token_that_verified_still_expires(emulator):
    token = emulator.token(ttl_ms=1500)
    assert emulator.get(DATASETS, token).status_code == 200
    time.sleep(1.6)
    reply = emulator.get(DATASETS, token)
    assert reply.status_code == 500
    assert reply.json() == {"message": "UnauthorizedError: jwt expired"}
