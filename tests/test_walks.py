"""Directory walks through a real mount: listings the kernel keeps and drops at the right time,
attributes handed with listings only when true, and metadata that survives a restart (issue 10)."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from mount_fixtures import mounted, save_token, unavailable
from test_mount import an_object, archive_members, run, shown_objects
from test_pubs_tasks_mount import lab_tasks, mounted_task, task_dir

from blfs.emulator.control import EmulatorProcess
from blfs.metastore import FILENAME

PROJECT = Path("projects") / "Lab Private"


def walk(root: Path) -> str:
    """What `find` prints for `root`, not entering object directories (listing one fetches it)."""
    found = run("find", ".", "-regextype", "posix-extended", "-regex", ".*/[0-9a-f]{24}", "-print",
                "-prune", "-o", "-print", cwd=root)  # fmt: skip
    assert found.returncode == 0, found.stderr
    return found.stdout


def ls_l_sizes(directory: Path) -> dict[str, int]:
    """Sizes as `ls -l` shows them for the files of `directory`."""
    listing = run("ls", "-l", str(directory))
    assert listing.returncode == 0, listing.stderr
    rows = [line.split(maxsplit=8) for line in listing.stdout.splitlines()[1:]]
    return {row[8]: int(row[4]) for row in rows if row[0].startswith("-")}


def wait_for_line(mount, text: str) -> None:
    """Waits for the one log line containing `text` (background refreshes log when they end)."""
    deadline = time.monotonic() + 60
    while text not in mount.log().lower():
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.1)
    assert mount.log().lower().count(text) == 1


def new_object(template: dict, object_id: str, **changes) -> dict:
    return {**template, "_id": object_id, **changes}


def test_listed_sizes_are_the_true_sizes_before_anything_asked_for_them(mount, emulator):
    directory = mount.path / "objects" / an_object(emulator)["_id"]
    sizes = ls_l_sizes(directory)
    assert sizes["_product.json"] == len((directory / "_product.json").read_bytes())
    for name, data in archive_members(emulator, directory.name).items():
        assert sizes[name] == len(data)
    task = next(t for t in lab_tasks(emulator, "finished") if any(task_dir(emulator, t).rglob("*")))
    local = task_dir(emulator, task)
    link = next(p for p in local.rglob("*") if p.is_symlink() and p.is_file())
    through = mounted_task(mount, emulator, task) / link.relative_to(local)
    assert ls_l_sizes(through.parent)[link.name] == len(through.read_bytes())


def test_new_and_removed_objects_show_in_kept_listings_after_the_ttl(
    scratch_emulator, user_home, tmp_path
):
    server = scratch_emulator
    save_token(user_home, server.url, server.token())
    shown = shown_objects(server, "Lab Private")
    with mounted(server.url, user_home, ttl=1.0) as mount:
        root = mount.path / PROJECT
        before = walk(root)
        removed, neighbour = shown[0], shown[1]
        (path,) = [line for line in before.splitlines() if line.endswith(f"/{removed['_id']}")]
        assert (root / path / "_info.json").stat().st_size
        beside = new_object(neighbour, "fedcba987654321000000011")
        elsewhere = new_object(neighbour, "fedcba987654321000000012", meta={"subject": "zz-new"})
        server.put_records("datasets", [beside, elsewhere, {**removed, "removed": True}])
        time.sleep(1.5)
        with pytest.raises(FileNotFoundError):  # a path looked up, not listed, is gone too
            (root / path / "_info.json").stat()
        after = walk(root)
    assert f"/{beside['_id']}\n" in after and f"/{elsewhere['_id']}\n" in after
    assert "/sub-zz-new\n" in after
    assert f"/{removed['_id']}\n" in before and f"/{removed['_id']}\n" not in after


def test_a_remount_lists_from_disk_without_asking_the_server(emulator, user_home, tmp_path):
    cache = tmp_path / "cache"
    with mounted(emulator.url, user_home, cache_dir=cache) as first:
        listed = walk(first.path / PROJECT)
    with mounted(emulator.url, user_home, cache_dir=cache, name="again") as second:
        emulator.clear_requests()  # after the mount's own check of the API
        assert walk(second.path / PROJECT) == listed
        assert [r["path"] for r in emulator.requests()] == []


def test_a_restart_with_the_server_stopped_shows_what_was_known(emulator_data, user_home, tmp_path):
    process = EmulatorProcess(emulator_data)
    server = process.emulator
    cache = tmp_path / "cache"
    cached, uncached = shown_objects(server, "Lab Private")[:2]
    try:
        save_token(user_home, server.url, server.token())
        with mounted(server.url, user_home, cache_dir=cache, ttl=0.5) as first:
            listed = walk(first.path / PROJECT)
            data = {name: (first.path / "objects" / cached["_id"] / name).read_bytes()
                    for name in os.listdir(first.path / "objects" / cached["_id"])}  # fmt: skip
            path = next(line for line in listed.splitlines() if line.endswith(cached["_id"]))
        process.stop()
        with mounted(server.url, user_home, cache_dir=cache, ttl=0.5, name="offline") as second:
            assert walk(second.path / PROJECT) == listed
            for name, content in data.items():
                assert (second.path / PROJECT / path / name).read_bytes() == content
                assert (second.path / "objects" / cached["_id"] / name).read_bytes() == content
            with pytest.raises(OSError) as caught:
                os.listdir(second.path / "objects" / uncached["_id"])
            assert caught.value.errno in (errno.EIO, errno.ETIMEDOUT)
            wait_for_line(second, "mounted for offline use")  # said once, at mount
            assert second.log().lower().count("unreachable") <= 1  # not once per refresh
    finally:
        process.stop()


def ls_lr(root: Path) -> str:
    listed = run("ls", "-lR", "--time-style=full-iso", ".", cwd=root, timeout=300)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_a_remount_lists_cached_objects_as_before_with_the_server_stopped_too(
    emulator_data, user_home, tmp_path
):
    process = EmulatorProcess(emulator_data)
    server = process.emulator
    cache = tmp_path / "cache"
    try:
        save_token(user_home, server.url, server.token())
        with mounted(server.url, user_home, cache_dir=cache) as first:
            ls_lr(first.path / PROJECT)  # fetches every object
            online = ls_lr(first.path / PROJECT)
        assert "_product.json" in online and "bids" in online
        with mounted(server.url, user_home, cache_dir=cache, name="again") as second:
            server.clear_requests()
            assert ls_lr(second.path / PROJECT) == online
            assert [r["path"] for r in server.requests()] == []
        process.stop()
        with mounted(server.url, user_home, cache_dir=cache, name="offline") as third:
            assert ls_lr(third.path / PROJECT) == online
    finally:
        process.stop()


def test_answers_from_disk_older_than_the_ttl_are_refreshed_in_the_background(
    scratch_emulator, user_home, tmp_path
):
    server = scratch_emulator
    save_token(user_home, server.url, server.token())
    cache = tmp_path / "cache"
    with mounted(server.url, user_home, cache_dir=cache) as first:
        listed = walk(first.path / PROJECT)
    template = shown_objects(server, "Lab Private")[0]
    server.put_records("datasets", [new_object(template, "fedcba987654321000000021",
                                               meta={"subject": "zz-late"})])  # fmt: skip
    with sqlite3.connect(cache / FILENAME) as db:  # as if last fetched an hour ago
        db.execute("UPDATE answers SET fetched = fetched - 3600")
    with mounted(server.url, user_home, cache_dir=cache, ttl=600, name="again") as second:
        root = second.path / PROJECT
        assert set(listed.splitlines()) <= set(walk(root).splitlines())
        deadline = time.monotonic() + 60  # far within the TTL: only a background refresh helps
        while "sub-zz-late" not in os.listdir(root):
            assert time.monotonic() < deadline, "the stale listing was never refreshed"
            time.sleep(0.2)


def test_a_damaged_metadata_store_never_stops_a_mount(emulator, user_home, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / FILENAME).write_bytes(b"not a database " * 1000)
    with mounted(emulator.url, user_home, cache_dir=cache) as mount:
        assert "Lab Private" in os.listdir(mount.path / "projects")
        assert walk(mount.path / PROJECT)
        assert mount.log().count("metadata cache") == 1


def test_the_metadata_store_is_for_its_owner_only(mount):
    os.listdir(mount.path / PROJECT)
    for path in mount.cache_dir.glob(FILENAME + "*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_mounts_sharing_a_cache_dir_share_its_metadata_store(emulator, user_home, tmp_path):
    cache = tmp_path / "cache"
    with (
        mounted(emulator.url, user_home, cache_dir=cache, name="one") as one,
        mounted(emulator.url, user_home, cache_dir=cache, name="two") as two,
    ):
        assert walk(one.path / PROJECT) == walk(two.path / PROJECT)
        assert "metadata cache" not in one.log() + two.log()


def drop_kernel_caches() -> None:
    """Makes the kernel forget every unused dentry and inode (root only): a mount then hears a
    FORGET for each number it handed out, and may hand the numbers out again."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
    except OSError as exc:
        unavailable(f"cannot drop the kernel's caches: {exc}")


def test_a_walk_after_the_kernel_forgot_every_inode_shows_the_same_tree(mount):
    """Inode numbers forgotten by the kernel are handed out again: a path must never come back
    under another's number (a listing, a size or a file's bytes from somewhere else)."""
    root = mount.path / PROJECT
    files = sorted(p for p in root.rglob("*") if p.is_file() and "bids" not in p.parts)
    contents = {p: p.read_bytes() for p in files}  # every object fetched: the tree is final
    before = ls_lr(root)
    for _ in range(3):
        drop_kernel_caches()
        assert ls_lr(root) == before
        assert {p: p.read_bytes() for p in files} == contents
