"""The on-disk cache: LRU eviction, pins, a full disk, staging left by killed processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_fetch
from mount_fixtures import small_tmpfs
from test_fetch import (
    CHILD,
    ROOT,
    MiB,
    assert_nothing_complete,
    downloads,
    new_fetcher,
    read_all,
    tar_bytes,
    wait_until,
)

from blfs.archive import JournalReader
from blfs.cache import JOURNAL, Cache, object_key
from blfs.errors import CacheFull
from blfs.item import GrowingFile, Item

# The fixtures of test_fetch, shared by name.
home, client, objects = test_fetch.home, test_fetch.client, test_fetch.objects


def fill(emulator, objects: list[str], size: int) -> dict[str, bytes]:
    """Gives each object an archive with one member of `size` bytes."""
    members = {}
    for object_id in objects:
        members[object_id] = os.urandom(size)
        emulator.put_archive(object_id, tar_bytes({"data.bin": members[object_id]}))
    return members


def fetch(fetcher, object_id: str) -> bytes:
    data = read_all(fetcher.contents(object_id), "data.bin")
    wait_until(lambda: fetcher.cached(object_id), what="commit")
    return data


def test_least_recently_used_objects_are_evicted_whole(client, emulator, objects, tmp_path):
    a, b, c, d = objects[:4]
    members = fill(emulator, [a, b, c, d], MiB)
    root = tmp_path / "cache"
    fetcher = new_fetcher(client, root, max_bytes=3 * MiB + 100_000)
    for object_id in (a, b, c):
        fetch(fetcher, object_id)
    read_all(fetcher.contents(a), "data.bin")  # a is now more recent than b
    fetch(fetcher, d)
    cached = {entry.key for entry in fetcher._cache.entries()}
    assert cached == {object_key(a), object_key(c), object_key(d)}
    assert not (root / "objects" / b).exists()
    assert fetch(fetcher, b) == members[b]  # fetched again, evicting c
    assert not (root / "objects" / c).exists()
    assert downloads(emulator, b) == 2
    used, bound = fetcher._cache.usage()
    assert used <= bound == 3 * MiB + 100_000


def test_an_open_object_is_never_evicted(client, emulator, objects, tmp_path):
    a, b, c = objects[:3]
    members = fill(emulator, [a, b, c], MiB)
    root = tmp_path / "cache"
    fetcher = new_fetcher(client, root, max_bytes=2 * MiB)
    fetch(fetcher, a)
    handle = fetcher.contents(a).open("data.bin")
    other_process = Cache(root, 2 * MiB)  # another mount sharing the cache
    assert other_process.clear() == []
    fetch(fetcher, b)
    fetch(fetcher, c)
    assert (root / "objects" / a).exists()
    assert handle.read(0, MiB) == members[a]
    assert not (root / "objects" / b).exists()
    handle.release()
    other_process.trim()
    assert len(other_process.entries()) <= 2


def test_an_object_larger_than_the_bound_is_readable_while_open(
    client, emulator, objects, tmp_path
):
    (big,) = objects[:1]
    members = fill(emulator, [big], 3 * MiB)
    root = tmp_path / "cache"
    fetcher = new_fetcher(client, root, max_bytes=MiB)
    handle = fetcher.contents(big).open("data.bin")
    assert handle.read(0, 3 * MiB) == members[big]
    wait_until(lambda: fetcher.cached(big), what="commit")
    assert handle.read(MiB, 10) == members[big][MiB : MiB + 10]
    handle.release()
    assert not fetcher.cached(big)
    assert fetcher._cache.usage()[0] == 0


def test_usage_entries_and_clear(client, emulator, objects, tmp_path):
    a, b = objects[:2]
    fill(emulator, [a, b], 100_000)
    fetcher = new_fetcher(client, tmp_path / "cache")
    fetch(fetcher, a)
    fetch(fetcher, b)
    cache = fetcher._cache
    entries = cache.entries()
    assert [e.key for e in entries] == [object_key(a), object_key(b)]
    assert all(e.size == 100_000 and e.last_use > time.time() - 60 for e in entries)
    assert cache.usage() == (200_000, 1 << 40)
    assert cache.clear([object_key(a)]) == [object_key(a)]
    assert cache.clear() == [object_key(b)]
    assert cache.usage()[0] == 0 and not fetcher.cached(b)


def test_a_full_disk_gives_cachefull_and_no_corrupt_entry(client, emulator, objects, tmp_path):
    big = objects[0]
    emulator.put_archive(big, tar_bytes({"a.bin": os.urandom(3 * MiB), "b.bin": os.urandom(MiB)}))
    with small_tmpfs(tmp_path / "small", "4m") as root:
        fetcher = new_fetcher(client, root, max_bytes=1 << 40)
        contents = fetcher.contents(big)
        with pytest.raises(CacheFull):
            contents.listdir("")
        assert_nothing_complete(root, big)


def test_a_full_disk_evicts_older_objects_first(client, emulator, objects, tmp_path):
    old, new = objects[:2]
    members = fill(emulator, [old, new], int(2.5 * MiB))
    with small_tmpfs(tmp_path / "small", "4m") as root:
        fetcher = new_fetcher(client, root, max_bytes=1 << 40)
        fetch(fetcher, old)
        assert fetch(fetcher, new) == members[new]
        assert not fetcher.cached(old)
        assert [e.key for e in fetcher._cache.entries()] == [object_key(new)]


def served_slowly(emulator, object_id: str, size: int, bandwidth: int) -> bytes:
    """A new random `data.bin` of `size` bytes as the object's archive, served at `bandwidth`
    bytes per second (so that a download lasts long enough to be killed part-way)."""
    data = os.urandom(size)
    emulator.put_archive(object_id, tar_bytes({"data.bin": data}))
    emulator.set(bandwidth=bandwidth)
    return data


@contextlib.contextmanager
def child_downloading(
    emulator, home: Path, root: Path, object_id: str
) -> Iterator[subprocess.Popen]:
    """Another process downloading `object_id` into the cache at `root`, from when it has
    `data.bin` open; killed on leaving, whatever happened."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, emulator.url, str(home), str(root), object_id, "data.bin"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout.readline().strip() == "open"
        yield child
    finally:
        child.kill()
        child.wait(10)


def test_staging_of_a_killed_downloader_is_removed_and_the_download_restarts(
    client, emulator, objects, tmp_path, home
):
    object_id = objects[0]
    data = served_slowly(emulator, object_id, 4 * MiB, MiB)
    root = tmp_path / "cache"
    with child_downloading(emulator, home, root, object_id) as child:
        staged = root / "tmp"
        wait_until(lambda: any(staged.glob("*/data/data.bin")), what="staging")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert any(p.is_dir() for p in staged.iterdir())
    emulator.set(bandwidth=None)
    fetcher = new_fetcher(client, root)
    assert list(staged.iterdir()) == []
    assert fetch(fetcher, object_id) == data
    assert downloads(emulator, object_id) == 2


def test_live_staging_is_kept_by_a_new_cache_instance(tmp_path):
    root = tmp_path / "cache"
    staging = Cache(root, 1 << 30).stage(object_key("a" * 24), 10, directory=True)
    (staging.path / "x").write_bytes(b"partial")
    assert Cache(root, 1 << 30).usage() == (10, 1 << 30)
    assert (staging.path / "x").exists()
    Cache(root, 1 << 30).discard(staging)
    assert list((root / "tmp").iterdir()) == []


# -- the shared accounting: several Cache instances (and processes) on one root ------------------
def put(cache: Cache, object_id: str, size: int) -> None:
    """Commits an object of `size` bytes the way the fetcher does: staged, indexed, renamed."""
    staging = cache.stage(object_key(object_id), size, directory=True)
    (staging.path / "data").mkdir()
    (staging.path / "data" / "f").write_bytes(b"x" * size)
    cache.reserve(staging, size)
    index = {"version": 1, "bytes": size, "members": [["f", size, 0o100444, 0.0]]}
    (staging.path / "index.json").write_text(json.dumps(index))
    with cache.locked():
        cache.commit(staging, size)
    cache.touch(staging.key)


def on_disk(root: Path) -> set[str]:
    return {f"objects/{p.name}" for p in (root / "objects").iterdir()}


def test_commits_and_evictions_of_another_instance_are_counted(tmp_path):
    root = tmp_path / "cache"
    first, second = Cache(root, 1 << 30), Cache(root, 1 << 30)
    put(first, "a", 100)
    put(second, "b", 200)
    assert first.usage() == second.usage() == (300, 1 << 30)
    assert second.clear([object_key("a")]) == [object_key("a")]
    assert first.usage()[0] == 200
    assert [e.key for e in first.entries()] == [object_key("b")]


def test_a_commit_by_another_process_is_counted(tmp_path):
    root = tmp_path / "cache"
    cache = Cache(root, 1 << 30)
    put(cache, "a", 100)
    child = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from pathlib import Path
from blfs.cache import Cache
from test_cache import put
put(Cache(Path({str(root)!r}), 1 << 30), "b", 1000)
"""
    subprocess.run([sys.executable, "-c", child], check=True, cwd=ROOT, timeout=60)
    assert cache.usage()[0] == 1100
    cache.clear([object_key("b")])
    assert Cache(root, 1 << 30).usage()[0] == 100


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether `thread` is inside a Python function of that name now."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_readers_of_an_item_open_its_files_while_its_commit_waits_for_another_cache_lock(
    tmp_path,
):
    root = tmp_path / "cache"
    cache, other = Cache(root, 1 << 30), Cache(root, 1 << 30)
    item = Item(cache, object_key("c" * 24), "object c", stall_timeout=60.0)
    staged = item.stage(4, directory=True)
    (staged / "f").write_bytes(b"data")
    file = GrowingFile(staged / "f", 4, 4)
    moved = lambda final: setattr(file, "path", final / "f")  # noqa: E731
    committing = threading.Thread(target=item.commit, args=(4, moved), daemon=True)
    with other.locked():
        committing.start()
        wait_until(lambda: waiting_in(committing, "acquire"), what="the commit to wait")
        opened: list[int] = []
        opener = threading.Thread(target=lambda: opened.append(item.open(file)), daemon=True)
        opener.start()
        opener.join(timeout=20)
        assert opened, "a reader waited for the cache lock another instance held"
        assert committing.is_alive()
        assert os.read(opened[0], 10) == b"data"
        os.close(opened[0])
    committing.join(timeout=60)
    assert file.path == root / object_key("c" * 24) / "f"
    assert file.path.read_bytes() == b"data"


def test_the_bound_holds_with_two_instances_committing_in_turn(tmp_path):
    root = tmp_path / "cache"
    caches = [Cache(root, 1000), Cache(root, 1000)]
    for n in range(12):
        put(caches[n % 2], f"o{n:02d}", 300)
        assert len(on_disk(root)) <= 3
        assert all(cache.usage()[0] <= 1000 for cache in caches)
    assert on_disk(root) == {object_key(f"o{n:02d}") for n in (9, 10, 11)}


def test_eviction_follows_uses_seen_by_another_instance(tmp_path):
    root = tmp_path / "cache"
    first, second = Cache(root, 1000), Cache(root, 1000)
    for age, name in enumerate("abc"):
        put(first, name, 300)
        os.utime(root / object_key(name) / "index.json", (1e9 + age, 1e9 + age))  # last uses
    second.pin(object_key("a"), time.monotonic() + 5).release()  # a is now the most recent
    put(first, "d", 300)
    assert on_disk(root) == {object_key(k) for k in "acd"}


def test_a_pinned_entry_of_another_instance_is_skipped(tmp_path):
    root = tmp_path / "cache"
    first, second = Cache(root, 700), Cache(root, 700)
    put(first, "a", 300)
    put(first, "b", 300)
    pin = second.pin(object_key("a"), time.monotonic() + 5)
    put(first, "c", 300)
    assert on_disk(root) == {object_key("a"), object_key("c")}
    pin.release()  # the last release trims: a is older than c
    assert on_disk(root) == {object_key("a"), object_key("c")}
    put(second, "d", 300)
    assert on_disk(root) == {object_key("c"), object_key("d")}


def test_a_lost_or_torn_ledger_and_entries_removed_by_hand_are_recounted(tmp_path):
    root = tmp_path / "cache"
    cache = Cache(root, 1000)
    for name in "abc":
        put(cache, name, 300)
    (root / "ledger").unlink()
    assert cache.usage()[0] == 900
    with open(root / "ledger", "ab") as ledger:
        ledger.write(b'["+","objects/zz",5')  # a writer killed mid-line
    assert Cache(root, 1000).usage()[0] == 900
    shutil.rmtree(root / "objects" / "b")
    assert Cache(root, 1000).usage()[0] == 600  # a new process recounts at start
    shutil.rmtree(root / "objects" / "c")
    put(cache, "d", 300)  # eviction finds c gone and drops it instead of a
    put(cache, "e", 300)
    assert on_disk(root) == {object_key(k) for k in "ade"}
    assert cache.usage()[0] == 900


def test_a_compacted_ledger_is_reread_by_the_others(tmp_path):
    root = tmp_path / "cache"
    first, second = Cache(root, 1 << 30), Cache(root, 1 << 30)
    first._ledger.compact_after = 5
    for n in range(20):
        put(first, f"o{n:02d}", 10)
        if n % 2:
            first.clear([object_key(f"o{n:02d}")])
    assert len((root / "ledger").read_bytes().splitlines()) < 30
    assert second.usage()[0] == first.usage()[0] == 100
    assert {e.key for e in second.entries()} == on_disk(root)


# -- a cache that heals itself, and stays private ------------------------------------------------
def test_stray_files_and_objects_without_index_are_discarded_at_start(tmp_path):
    root = tmp_path / "cache"
    cache = Cache(root, 1 << 30)
    put(cache, "a", 100)
    put(cache, "b", 100)
    (root / "objects" / "stray.txt").write_text("foreign")
    (root / "objects" / "b" / "index.json").unlink()
    (root / "ledger").write_bytes(b"\x00not a ledger\n")
    healed = Cache(root, 1 << 30)
    assert on_disk(root) == {object_key("a")}
    assert healed.usage()[0] == 100
    assert [e.key for e in healed.entries()] == [object_key("a")]


def test_clear_removes_a_damaged_entry_and_its_failure(tmp_path):
    root = tmp_path / "cache"
    cache = Cache(root, 1 << 30)
    put(cache, "a", 100)
    (root / "objects" / "a" / "index.json").unlink()
    cache.failures.record(object_key("a"), CacheFull("x"), 60, 60)
    assert cache.clear([object_key("a")]) == [object_key("a")]
    assert on_disk(root) == set() and cache.failures.get(object_key("a")) is None


def test_a_truncated_cached_file_is_never_served_but_fetched_again(
    client, emulator, objects, tmp_path
):
    (object_id,) = objects[:1]
    members = fill(emulator, [object_id], MiB)
    root = tmp_path / "cache"
    fetch(new_fetcher(client, root), object_id)
    os.truncate(root / "objects" / object_id / "data" / "data.bin", 1000)
    assert fetch(new_fetcher(client, root), object_id) == members[object_id]
    assert downloads(emulator, object_id) == 2


def test_everything_created_is_owner_only_whatever_the_umask(client, emulator, objects, tmp_path):
    (object_id,) = objects[:1]
    fill(emulator, [object_id], 1000)
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    old = os.umask(0)
    try:
        fetch(new_fetcher(client, root), object_id)
        Cache(root, 1 << 30).failures.record("objects/x", CacheFull("x"), 60, 60)
    finally:
        os.umask(old)
    loose = [p for p in [root, *root.rglob("*")] if p.lstat().st_mode & 0o077]
    assert loose == []


def test_an_evicted_entry_is_deleted_after_the_cache_lock_is_let_go(tmp_path):
    root = tmp_path / "cache"
    first, second = Cache(root, 1 << 30), Cache(root, 1 << 30)
    key = object_key("many")
    staging = first.stage(key, 0, directory=True)
    (staging.path / "data").mkdir()
    names = [f"f{n}" for n in range(20_000)]  # an entry whose deletion takes a while
    for name in names:
        (staging.path / "data" / name).touch()
    index = {"version": 1, "bytes": 0, "members": [[name, 0, 0o100444, 0.0] for name in names]}
    (staging.path / "index.json").write_text(json.dumps(index))
    with first.locked():
        first.commit(staging, 0)
    evicting = threading.Thread(target=first.clear, args=([key],))
    evicting.start()
    doomed = root / "tmp"
    wait_until(lambda: any(p.name.startswith("evict-") for p in doomed.iterdir()), what="rename")
    started = time.monotonic()
    with second.locked():  # what a lookup of another object needs to stage it
        waited = time.monotonic() - started
        deleting = any(p.name.startswith("evict-") for p in doomed.iterdir())
    evicting.join(60)
    print(f"\nthe cache lock came after {waited:.3f} s of the eviction's deletion")
    assert deleting, "the cache lock was held until the evicted entry was deleted"
    assert not (root / key).exists() and list(doomed.glob("evict-*")) == []


def test_a_dead_downloaders_staging_is_kept_while_followed_and_adopted_by_a_follower(tmp_path):
    root = tmp_path / "cache"
    key = object_key("d" * 24)
    followed, alone = (Cache(root, 1 << 30).stage(key, 10, directory=True) for _ in range(2))
    for staging in (followed, alone):
        (staging.path / JOURNAL).write_bytes(b'["member","x",1,33188,0]\n')
        staging.lock.release()  # as its process died: the lock went with it
    reader = JournalReader(followed.path / JOURNAL)
    try:
        other = Cache(root, 1 << 30)
        assert other.usage() == (10, 1 << 30)  # the followed one is kept, and still counted
        assert not alone.path.exists()
        adopted = other.adopt(key, followed.path)
        assert adopted is not None and adopted.path == followed.path and adopted.reserved == 10
        assert Cache(root, 1 << 30).adopt(key, followed.path) is None  # one adopter only
        assert reader.new_lines() == [["member", "x", 1, 33188, 0]]
        other.discard(adopted)
    finally:
        reader.close()
    assert list((root / "tmp").iterdir()) == []


def test_followers_of_a_killed_downloader_read_on_while_the_one_taking_over_checks_its_bytes(
    client, emulator, objects, tmp_path, home
):
    object_id = objects[0]
    data = served_slowly(emulator, object_id, 16 * MiB, 8 * MiB)
    root = tmp_path / "cache"
    with child_downloading(emulator, home, root, object_id) as child:
        staged = root / "tmp"
        half = lambda: any(p.stat().st_size >= 8 * MiB for p in staged.glob("*/data/data.bin"))  # noqa: E731
        wait_until(half, what="half the object")
        # Stall timeouts far below the time the takeover needs to check the bytes there.
        followers = [new_fetcher(client, root, timeout=2.0) for _ in range(2)]
        handles = [follower.contents(object_id).open("data.bin") for follower in followers]
        emulator.set(bandwidth=2 * MiB)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    started = time.monotonic()
    results = read_all_of(handles, len(data))
    print(f"\nboth followers read the object {time.monotonic() - started:.1f} s after the kill")
    assert results == [data, data]
    assert downloads(emulator, object_id) == 2


def read_all_of(handles: list, size: int) -> list[bytes | Exception]:
    """Each handle read whole at once, in threads of their own."""
    results: list[bytes | Exception] = [b""] * len(handles)

    def read(index: int) -> None:
        try:
            results[index] = handles[index].read(0, size)
        except Exception as exc:  # noqa: BLE001 - the error is the result
            results[index] = exc

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_new_reader_takes_over_a_dead_download_that_another_process_follows(
    client, emulator, objects, tmp_path, home
):
    object_id = objects[0]
    data = served_slowly(emulator, object_id, 4 * MiB, MiB)
    root = tmp_path / "cache"
    with child_downloading(emulator, home, root, object_id) as child:
        wait_until(lambda: any((root / "tmp").glob("*/data/data.bin")), what="staging")
        (journal,) = (root / "tmp").glob(f"*/{JOURNAL}")
        follower = JournalReader(journal)  # as another process reading along holds it
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    emulator.set(bandwidth=None)
    try:
        assert fetch(new_fetcher(client, root), object_id) == data
        lines = follower.new_lines()
    finally:
        follower.close()
    kinds = [line[0] for line in lines if line[0] != "checked"]
    assert kinds == ["member", "end"]  # the follower read on to the end
    assert downloads(emulator, object_id) == 2
    assert not journal.parent.exists() and (root / object_key(object_id) / JOURNAL).is_file()
