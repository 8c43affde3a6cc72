"""Listings the kernel keeps, through a real mount: paged in linear time however long, and
dropped by a metadata change only where the change shows (issue 19, item 3)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

from mount_fixtures import mounted, save_token
from test_mount import shown_objects
from test_walks import PROJECT, walk

from blfs.fuse_kernel import page
from blfs.metastore import FILENAME, MetaStore
from blfs.stored_record import head

SMALL, LARGE = 10_000, 30_000


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def many_objects(template: dict, count: int, tag: str, first: int) -> list[dict]:
    """`count` stored objects of one subject, datatype and tags: one directory of `count`."""
    return [
        {**template, "_id": f"{first + i:024x}", "tags": [tag], "datatype_tags": [],
         "meta": {**template.get("meta", {}), "subject": "many", "session": None}}
        for i in range(count)
    ]  # fmt: skip


def listed_with_cpu(pid: int, directory: Path) -> tuple[int, float]:
    """How many entries `ls -l` finds in `directory`, and the mount's CPU for them."""
    before = cpu_seconds(pid)
    with os.scandir(directory) as entries:
        count = sum(1 for entry in entries if entry.stat().st_nlink)
    return count, cpu_seconds(pid) - before


def add_rows(store: MetaStore, key: str, listing: dict, records: list[dict]) -> None:
    """Adds `records` to a listing kept row by row, whose answer is `listing`."""
    rows = [(r["_id"], json.dumps(head(r)), json.dumps(r)) for r in records]
    assert store.save_rows(key, listing["generation"], rows)
    store.save(key, json.dumps({**listing, "rows": listing["rows"] + len(records)}))


def with_objects(cache: Path, project_id: str, records: list[dict]) -> None:
    """Adds `records` to the project's listing kept in the metadata store, as if the server had
    answered with them (tens of thousands served by the emulator take it minutes)."""
    key = json.dumps(["project", project_id])
    with sqlite3.connect(cache / FILENAME) as db:
        (scope,) = db.execute("SELECT scope FROM answers WHERE key = ?", (key,)).fetchone()
    store = MetaStore(cache / FILENAME, scope)
    kept = store.load(key)
    assert kept is not None
    add_rows(store, key, kept.body, records)
    store.close()


def test_a_listing_is_paged_in_linear_time(emulator, user_home, tmp_path):
    """Each page continues where the last ended: 3x the entries cost about 3x, not 9x (the
    pages sliced from the start cost 0.33 s of CPU for 10,000 entries, 2.9 s for 30,000)."""
    template = shown_objects(emulator, "Lab Private")[0]
    cache = tmp_path / "cache"
    with mounted(emulator.url, user_home, cache_dir=cache, ttl=3600) as first:
        os.listdir(first.path / PROJECT)
    records = many_objects(template, SMALL, "small", 0xA0 << 88)
    records += many_objects(template, LARGE, "large", 0xB0 << 88)
    with_objects(cache, template["project"], records)
    with mounted(emulator.url, user_home, cache_dir=cache, ttl=3600, name="again") as mount:
        pid = mount.process.pid
        datatype = next((mount.path / PROJECT / "sub-many").iterdir())  # the tree, built once
        small_count, small = listed_with_cpu(pid, datatype / "small")
        large_count, large = listed_with_cpu(pid, datatype / "large")
    print(f"listing CPU: {SMALL} entries {small:.2f} s, {LARGE} entries {large:.2f} s")
    assert (small_count, large_count) == (SMALL, LARGE)
    assert large < 5 * max(small, 0.05), (small, large)
    assert large < 2.5, large


def paged(entries: list, size: int, plus: bool) -> list[bytes]:
    """Every name of a listing as the kernel reads it: page after page until an empty one."""
    names: list[bytes] = []
    while True:
        more, used = page(entries, len(names), size, plus)
        if not more:
            return names
        assert used <= size
        names += more


def test_a_listing_read_in_small_pages_costs_its_length_once():
    """Kernels before 6.x read listings in 4 KiB pages: 30,000 entries are then some 1,300
    pages, each of which looked at every entry after its start."""
    entries = [(f"{i:024x}", {"st_mode": stat.S_IFDIR}) for i in range(LARGE)]
    started = time.process_time()
    names = paged(entries, 4096, plus=True)
    spent = time.process_time() - started
    assert names == [os.fsencode(name) for name, _ in entries]
    assert paged(entries, 4096, plus=False) == names
    assert spent < 0.5, spent


UNKNOWN_INO = 0xFFFFFFFF  # what a listing gives a file it hands by name and type only
QUIET = ("--ahead", "0")  # a mount that asks for nothing before the kernel does


def product_ino(directory: Path) -> int:
    """The number the kept listing of an object directory gives `_product.json`: unknown while
    the listing was made before the product was (its size unknown then), else a real one."""
    with os.scandir(directory) as entries:
        numbers = {entry.name: entry.inode() for entry in entries}  # read to its end: kept
    return numbers["_product.json"]


def object_dir(root: Path, object_id: str) -> Path:
    return root / next(line for line in walk(root).splitlines() if line.endswith(object_id))


def test_a_metadata_change_drops_only_the_listings_showing_it(
    scratch_emulator, user_home, tmp_path
):
    """A project's objects change: the listings of that project are made again, and those of
    another project stay kept (dropping every kept listing at each change made a walk of a
    large tree start over)."""
    server = scratch_emulator
    save_token(user_home, server.url, server.token())
    cache = tmp_path / "cache"
    changed, other = Path("projects") / "Lab Private", Path("projects") / "Open Diffusion"
    here, there = (
        shown_objects(server, "Lab Private")[0],
        shown_objects(server, "Open Diffusion")[0],
    )
    # Nothing asked ahead, so that a product's size is unknown until it is read.
    with mounted(server.url, user_home, cache_dir=cache, ttl=600, extra=QUIET) as first:
        relative = object_dir(first.path / changed, here["_id"]).relative_to(first.path)
        object_dir(first.path / other, there["_id"])
    with sqlite3.connect(cache / FILENAME) as db:  # the changed project's answer is an hour old
        key = json.dumps(["project", here["project"]])
        db.execute("UPDATE answers SET fetched = fetched - 3600 WHERE key = ?", (key,))
    added = {**here, "_id": "fedcba987654321000000031"}
    server.put_records("datasets", [added])
    # Its refresh (in the background: the answer on disk is served first) comes in a while.
    server.set(stall=[{"path": "/warehouse/dataset$", "after": 0, "seconds": 5, "times": 1}])
    with mounted(
        server.url, user_home, cache_dir=cache, ttl=600, extra=QUIET, name="again"
    ) as mount:
        mine = mount.path / relative
        theirs = object_dir(mount.path / other, there["_id"])
        kept = {mine: product_ino(mine), theirs: product_ino(theirs)}
        assert set(kept.values()) == {UNKNOWN_INO}
        for directory in kept:
            (directory / "_product.json").read_bytes()  # its size is known from now on
        deadline = time.monotonic() + 60
        while added["_id"] not in os.listdir(mine.parent):
            assert time.monotonic() < deadline, "the changed listing was never dropped"
            time.sleep(0.1)
        assert product_ino(mine) != UNKNOWN_INO  # listed again, as it shows that project
        assert product_ino(theirs) == UNKNOWN_INO  # still the listing kept before
