"""S3 listings in the catalog (DESIGN §2): a listing is a hint, accepted only when it adds up
to its object's record; an accepted one is kept for good, a doubt only for the failure backoff,
in memory and in the metadata store. Real client, real emulator, real SQLite store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_api import members_of

from blfs.api import Client
from blfs.auth import TokenStore
from blfs.catalog import Catalog, archive_length
from blfs.metastore import MetaStore

FILES = "/api/warehouse/files/"


def catalog(emulator, tmp_path: Path) -> Catalog:
    """A catalog as a mount makes it, over the metadata store of `tmp_path`."""
    tokens = TokenStore(emulator.url, home=tmp_path / "home")
    if tokens.get() is None:
        tokens.save(emulator.token())
    store = MetaStore(tmp_path / "metadata.sqlite3", emulator.url)
    return Catalog(Client(emulator.url, tokens), store=store)


def an_s3_object(emulator) -> dict:
    study = next(p["_id"] for p in emulator.db("projects") if p["name"] == "BIDS Study")
    return next(
        d
        for d in emulator.db("datasets")
        if d["project"] == study and d["storage"] == "s3fs" and d["status"] == "stored"
    )


def asked(emulator) -> int:
    return sum(r["path"].startswith(FILES) for r in emulator.requests())


def test_an_accepted_listing_is_kept_for_good_across_catalogs(emulator, tmp_path):
    record = an_s3_object(emulator)
    assert catalog(emulator, tmp_path).member_sizes(record) == members_of(emulator, record["_id"])
    assert asked(emulator) == 1
    again = catalog(emulator, tmp_path)
    assert again.known_member_sizes(record) == members_of(emulator, record["_id"])
    assert again.member_sizes(record) == members_of(emulator, record["_id"])
    assert asked(emulator) == 1


@pytest.mark.parametrize("variant", ["empty", "absent"])
def test_a_doubt_is_no_listing_and_is_not_asked_again_within_its_backoff(
    emulator, tmp_path, variant
):
    record = an_s3_object(emulator)
    emulator.set(variants={"files": variant})
    first = catalog(emulator, tmp_path)
    assert first.member_sizes(record) is None
    assert first.member_sizes(record) is None
    assert first.known_member_sizes(record) is None
    assert asked(emulator) == 1
    emulator.reset()
    second = catalog(emulator, tmp_path)  # a remount within the backoff: kept on disk too
    assert second.member_sizes(record) is None
    assert asked(emulator) == 1


def test_a_listing_that_does_not_add_up_to_the_record_is_not_used(emulator, tmp_path):
    record = {**an_s3_object(emulator)}
    record["size"] += 1
    assert catalog(emulator, tmp_path).member_sizes(record) is None


def test_size_is_an_archive_length_only_for_tar_kinds_and_unknown_kinds_are_said_once(caplog):
    assert archive_length({"storage": "local", "size": 10240}) == 10240
    assert archive_length({"storage": "s3fs", "size": 10240}) is None
    assert archive_length({"storage": "s3fs-embargo", "size": 10240}) is None
    assert archive_length({"storage": "url", "size": 10240}) is None
    with caplog.at_level(logging.WARNING, logger="blfs"):
        for _ in range(3):
            assert archive_length({"storage": "tape-robot-7", "size": 10240}) is None
    assert sum("tape-robot-7" in r.getMessage() for r in caplog.records) == 1
