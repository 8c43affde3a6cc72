"""Memory that does not grow with the project (DESIGN §3): a project's records are kept in the
metadata store row by row and held in memory by a few fields; single answers beyond a bounded
number are read back from disk. Real emulator, real client, real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blfs import metacache
from blfs.api import Client
from blfs.auth import TokenStore
from blfs.catalog import Catalog
from blfs.errors import RemoteError
from blfs.metacache import MetaCache
from blfs.metastore import MetaStore
from blfs.stored_record import StoredRecord, whole
from blfs.tree import records

LISTING = "/api/warehouse/dataset"


def catalog(emulator, tmp_path: Path, page_size: int = 1000) -> Catalog:
    """A catalog as a mount makes it, over the metadata store of `tmp_path`."""
    tokens = TokenStore(emulator.url, home=tmp_path / "home")
    if tokens.get() is None:
        tokens.save(emulator.token())
    store = MetaStore(tmp_path / "metadata.sqlite3", emulator.url)
    return Catalog(Client(emulator.url, tokens, page_size=page_size), store=store)


def lab_private(emulator) -> tuple[str, dict[str, dict]]:
    """The project with the most objects, and its stored objects by id as the server has them."""
    project = next(p for p in emulator.db("projects") if p["name"] == "Lab Private")
    stored = {
        d["_id"]: d
        for d in emulator.db("datasets")
        if d["project"] == project["_id"] and d["status"] == "stored" and not d.get("removed")
    }
    return project["_id"], stored


def listings_asked(emulator) -> int:
    return sum(r["path"] == LISTING for r in emulator.requests())


def test_a_project_read_back_after_a_remount_shows_every_record_whole(emulator, tmp_path):
    project_id, stored = lab_private(emulator)
    first = catalog(emulator, tmp_path, page_size=3).project_tree(project_id)
    asked = listings_asked(emulator)
    again = catalog(emulator, tmp_path).project_tree(project_id)
    assert listings_asked(emulator) == asked  # read back from disk, not asked again
    for tree in (first, again):
        held = list(records(tree))
        assert sorted(r["_id"] for r in held) == sorted(stored)
        assert all(isinstance(r, StoredRecord) for r in held)
        for record in held:
            shown = whole(record)
            assert shown["meta"] == stored[record["_id"]]["meta"]
            assert shown.get("prov") == stored[record["_id"]].get("prov")
            assert record["storage"] == shown["storage"] and record["size"] == shown["size"]
            assert dict(record) == shown
    assert tree.objects == len(stored)


def test_a_listing_cut_off_part_way_leaves_the_known_one_whole(tmp_path):
    store = MetaStore(tmp_path / "metadata.sqlite3", "scope")
    rows = [{"_id": f"{i:024x}", "status": "stored", "prov": {"n": i}} for i in range(2500)]

    def whole_listing():
        return iter(rows)

    def cut_off():
        yield from rows[:1500]
        raise RemoteError("the server went away after two pages")

    def ids(pairs):
        return [(head["_id"], record["prov"]["n"]) for head, record in pairs]

    cache = MetaCache(ttl=0.0, store=store)
    expected = [(r["_id"], r["prov"]["n"]) for r in rows]
    assert cache.listing("objects", whole_listing, ids) == expected
    # Expired: refreshed, but the refresh fails after two pages were saved.
    assert cache.listing("objects", cut_off, ids) == expected
    remounted = MetaCache(ttl=3600.0, store=store)
    assert remounted.listing("objects", cut_off, ids) == expected


def test_records_of_a_store_that_failed_are_asked_for_again_and_held_whole(emulator, tmp_path):
    project_id, stored = lab_private(emulator)
    mount = catalog(emulator, tmp_path)
    mount.project_tree(project_id)
    asked = listings_asked(emulator)
    mount._cache._store.close()  # what a failing disk leaves: the store is dropped
    held = list(records(mount.project_tree(project_id)))
    assert listings_asked(emulator) > asked
    assert all(isinstance(r, dict) for r in held)
    assert {r["_id"]: r["meta"] for r in held} == {i: d["meta"] for i, d in stored.items()}


def test_single_answers_beyond_the_kept_number_are_read_back_from_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(metacache, "KNOWN_KEPT", 4)
    store = MetaStore(tmp_path / "metadata.sqlite3", "scope")
    cache = MetaCache(ttl=3600.0, store=store)
    fetched: list[int] = []

    def answer(n: int) -> dict:
        fetched.append(n)
        return {"n": n, "text": "x" * n}

    for n in range(10):
        assert cache.get(("product", n), lambda n=n: answer(n)) == {"n": n, "text": "x" * n}
    assert len(cache._known) == 4
    for n in range(10):
        assert cache.get(("product", n), lambda n=n: answer(n)) == {"n": n, "text": "x" * n}
    assert fetched == list(range(10))  # each asked once; the rest read back from disk
    assert json.loads(json.dumps(cache.get(("product", 0), lambda: answer(0))))["n"] == 0


@pytest.mark.parametrize("records_per_page", [1, 1000])
def test_a_release_is_kept_row_by_row_too(emulator, tmp_path, records_per_page):
    pub = next(p for p in emulator.db("pubs") if p.get("releases"))
    release = pub["releases"][0]
    first = list(
        records(catalog(emulator, tmp_path, records_per_page).release_tree(release["_id"]))
    )
    again = list(records(catalog(emulator, tmp_path).release_tree(release["_id"])))
    assert [whole(r) for r in first] == [whole(r) for r in again]
    assert first and all(isinstance(r, StoredRecord) for r in again)
