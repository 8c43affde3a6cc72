"""One cache directory shared by several mounts, as a cluster shares one on NFS: one download per
object and no failed reader, a dead downloader taken over, a filesystem that refuses locks
named, and a failed fsync that never commits. Real mounts against a real emulator; the faulty
filesystems are real FUSE filesystems (tests/faultfs.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator_fixtures import generate_data, start_emulator
from faultfs import fault_filesystem
from mount_fixtures import mounted, save_token, user_env
from test_cache_mount import sized_objects, staged
from test_fetch import downloads
from test_mount import archive_members, shown_objects
from test_pubs_tasks_mount import lab_tasks, mounted_task, task_dir

from blfs import mountinfo
from blfs.cache import object_key, settled, task_key
from blfs.locks import host_only

MiB = 1 << 20
MOUNTS = 4
OBJECTS = 20
ROUNDS = 10


@pytest.fixture(scope="module")
def many_objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """An emulator whose Lab Private holds enough small objects for ten rounds of twenty."""
    data = generate_data(
        tmp_path_factory.mktemp("many") / "data", subjects=20, objects_per_subject=12,
        object_size=20_000,
    )  # fmt: skip
    with start_emulator(data) as emulator:
        yield emulator


def read_twice(paths: list[Path], committed: list[Path]) -> list[bytes | OSError]:
    """Every path read at once, each in a thread of its own, then again as soon as its object's
    commit (`committed[i]` appearing) is seen, which is when an open once found the file gone:
    its bytes (b"(changed)" if the two reads differ), or its first error."""
    results: list[bytes | OSError] = [b""] * len(paths)

    def read(index: int) -> None:
        try:
            results[index] = paths[index].read_bytes()
            wait_for(committed[index].exists, 60, f"the commit of {committed[index]}")
            if paths[index].read_bytes() != results[index]:
                results[index] = b"(changed)"
        except OSError as exc:
            results[index] = exc

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_four_mounts_reading_the_same_objects_download_each_once_and_never_fail(
    many_objects, tmp_path
):
    emulator = many_objects
    home = tmp_path / "home"
    save_token(home, emulator.url, emulator.token("demo"))
    chosen = shown_objects(emulator, "Lab Private")[: OBJECTS * ROUNDS]
    assert len(chosen) == OBJECTS * ROUNDS
    expected = {}
    for obj in chosen:
        name, data = next(iter(sorted(archive_members(emulator, obj["_id"]).items())))
        expected[obj["_id"]] = (name, data)
    emulator.set(bandwidth=100_000)  # a download lasts long enough to be followed
    failures: list[str] = []
    reads = 0
    cache = tmp_path / "shared-cache"
    with shared_mounts(emulator.url, home, cache) as mounts:
        for round_index in range(ROUNDS):
            batch = chosen[round_index * OBJECTS : (round_index + 1) * OBJECTS]
            wanted = [(mount, obj["_id"]) for obj in batch for mount in mounts]
            paths = [mount.path / "objects" / oid / expected[oid][0] for mount, oid in wanted]
            commits = [cache / "objects" / oid / "index.json" for _, oid in wanted]
            for (_, oid), path, result in zip(
                wanted, paths, read_twice(paths, commits), strict=True
            ):
                reads += 2
                if isinstance(result, OSError):
                    failures.append(f"{path}: {result}")
                elif result != expected[oid][1]:
                    failures.append(f"{path}: {len(result)} bytes differ from the archive's")
        logs = "".join(mount.log() for mount in mounts)
    counts = {obj["_id"]: downloads(emulator, obj["_id"]) for obj in chosen}
    followed = logs.count("another process downloads it")
    print(f"\n{reads} reads ({followed} following another mount's download),", end=" ")
    print(f"{len(failures)} failed ({100 * len(failures) / reads:.2f} %)")
    trouble = [line for line in logs.splitlines() if " WARNING " in line or " ERROR " in line]
    assert failures == [], "\n".join(
        [f"{len(failures)} of {reads} failed:", *failures[:5], *trouble[:9]]
    )
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert "vanished" not in logs


@contextlib.contextmanager
def shared_mounts(url: str, home: Path, cache_dir: Path, count: int = MOUNTS) -> Iterator[list]:
    """`count` mounts of one server over one cache directory, all taken down at the end."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(mounted(url, home, cache_dir=cache_dir, name=f"mnt{index}"))
            for index in range(count)
        ]


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds until `predicate()`; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_downloader_killed_mid_download_is_taken_over_by_a_follower_within_seconds(
    replace_archive, mount_factory, emulator
):
    (obj,) = sized_objects(replace_archive, emulator, 1, 6 * MiB)
    expected = archive_members(emulator, obj["_id"])["blob.bin"]
    owner = mount_factory()
    followers = [mount_factory(cache_dir=owner.cache_dir) for _ in range(2)]
    emulator.set(bandwidth=MiB)
    reader = subprocess.Popen(
        ["cat", str(owner.path / "objects" / obj["_id"] / "blob.bin")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staged = owner.cache_dir / "tmp"
    wait_for(lambda: any(p.stat().st_size for p in staged.glob("*/data/blob.bin")), 20, "bytes")
    results: list[tuple[bytes | OSError, float]] = []

    def read(mount) -> None:
        try:
            data: bytes | OSError = (mount.path / "objects" / obj["_id"] / "blob.bin").read_bytes()
        except OSError as exc:
            data = exc
        results.append((data, time.monotonic()))

    threads = [threading.Thread(target=read, args=(mount,)) for mount in followers]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: all("another process downloads it" in mount.log() for mount in followers),
        20,
        "the followers",
    )
    emulator.set(bandwidth=None)
    killed = time.monotonic()
    owner.process.send_signal(signal.SIGKILL)
    owner.process.wait(10)
    for thread in threads:
        thread.join(60)
    reader.wait(10)
    took = max(ended for _, ended in results) - killed
    print(f"\nfollowers read the object {took:.2f} s after its downloader was killed")
    assert [data for data, _ in results] == [expected, expected]
    assert took < 5
    assert downloads(emulator, obj["_id"]) == 2
    assert sum(mount.log().count("taking over the download") for mount in followers) == 1
    assert (owner.cache_dir / "objects" / obj["_id"] / "index.json").is_file()


def test_a_cache_dir_whose_filesystem_refuses_locks_is_refused_with_one_clear_line(
    emulator, user_home, tmp_path
):
    point = tmp_path / "mnt"
    point.mkdir()
    with fault_filesystem(tmp_path / "nolocks", "--refuse-locks") as shared:
        cache = shared / "cache"
        command = [sys.executable, "-m", "blfs", "mount", str(point), "--api", emulator.url]
        try:
            done = subprocess.run(
                [*command, "--cache-dir", str(cache)],
                env=user_env(user_home),
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            if mountinfo.is_mounted(point):
                mountinfo.unmount(point)
    (line,) = done.stderr.strip().splitlines()
    print(f"\n{line}")
    assert done.returncode != 0
    assert line.startswith("blfs: ") and f"cannot use the cache dir {cache}: " in line
    assert "refuses file locks" in line and "No locks available" in line
    assert "--cache-dir" in line and "nolock" in line


@pytest.mark.parametrize("error", ["ENOSPC", "EDQUOT", "EIO"])
def test_a_failed_fsync_is_never_retried_into_a_commit(
    error, replace_archive, emulator, user_home, tmp_path
):
    (obj,) = sized_objects(replace_archive, emulator, 1, MiB)
    expected = archive_members(emulator, obj["_id"])["blob.bin"]
    options = ("--fail-fsync", error, "--under", "cache/tmp")
    with (
        fault_filesystem(tmp_path / "faulty", *options) as shared,
        mounted(emulator.url, user_home, cache_dir=shared / "cache") as mount,
    ):
        data = (mount.path / "objects" / obj["_id"] / "blob.bin").read_bytes()
        key = object_key(obj["_id"])
        wait_for(lambda: settled(mount.cache_dir, key) and not staged(mount), 20, "its end")
        committed = (mount.cache_dir / "objects" / obj["_id"]).exists()
        log = mount.log()
    assert data == expected  # every byte was there before the commit was tried
    assert not committed
    assert f"could not keep object {obj['_id']}" in log


def test_a_failed_fsync_of_a_task_file_is_never_retried_into_a_commit(
    emulator, user_home, tmp_path
):
    task = lab_tasks(emulator, "finished")[0]
    local = task_dir(emulator, task)
    source = next(p for p in sorted(local.rglob("*")) if p.is_file() and not p.is_symlink())
    name = str(source.relative_to(local))
    options = ("--fail-fsync", "ENOSPC", "--under", "cache/tmp")
    with (
        fault_filesystem(tmp_path / "faulty", *options) as shared,
        mounted(emulator.url, user_home, cache_dir=shared / "cache") as mount,
    ):
        data = (mounted_task(mount, emulator, task) / name).read_bytes()
        key = task_key(task["_id"], name)
        wait_for(lambda: "could not keep" in mount.log() and not staged(mount), 20, "its end")
        committed = (mount.cache_dir / key).exists()
    assert data == source.read_bytes()  # its readers were served before the commit was tried
    assert not committed


def test_a_cache_dir_on_a_shared_filesystem_keeps_its_metadata_in_a_rollback_journal(
    emulator, user_home, tmp_path
):
    with fault_filesystem(tmp_path / "shared") as shared:
        for name in ("first", "second"):  # the second lists from what the first stored
            with mounted(emulator.url, user_home, cache_dir=shared / "cache", name=name) as mount:
                assert "Lab Private" in os.listdir(mount.path / "projects")
                log = mount.log()
            assert "metadata cache" not in log, log
        store = shared / "cache" / "metadata.sqlite3"
        with contextlib.closing(sqlite3.connect(store)) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            answers = db.execute("SELECT count(*) FROM answers").fetchone()[0]
        leftovers = sorted(p.name for p in store.parent.glob("metadata.sqlite3-*"))
    assert mode == "delete"
    assert answers > 0
    assert leftovers == []  # no -wal, no -shm: nothing mapped in memory shared across hosts


def test_network_filesystems_whose_locks_hold_on_one_host_only_are_named(tmp_path):
    """As the kernel lists them in /proc/self/mountinfo: NFS mounted with `nolock` (then
    `local_lock=all`) or local flocks, Lustre with `localflock`, against their shared forms."""
    mounts = {
        "nolock": "nfs4 srv:/export rw,vers=4.2,nolock,local_lock=all,addr=10.0.0.1",
        "flocks": "nfs srv:/export rw,vers=3,local_lock=flock,addr=10.0.0.1",
        "shared": "nfs4 srv:/export rw,vers=4.2,local_lock=none,addr=10.0.0.1",
        "lustre": "lustre 10.0.0.1@tcp:/scratch rw,localflock,lazystatfs",
        "coherent": "lustre 10.0.0.1@tcp:/scratch rw,flock,lazystatfs",
    }
    lines = ["22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"]
    for n, (name, source) in enumerate(mounts.items(), start=40):
        (tmp_path / name / "cache").mkdir(parents=True)
        lines.append(f"{n} 22 0:{n} / {tmp_path / name} rw,relatime shared:{n} - {source}")
    table = tmp_path / "mountinfo"
    table.write_text("\n".join(lines) + "\n")
    named = {name: host_only(tmp_path / name / "cache", str(table)) for name in mounts}
    assert named == {
        "nolock": "nfs4 mounted with local_lock=all",
        "flocks": "nfs mounted with local_lock=flock",
        "shared": None,
        "lustre": "lustre mounted with localflock",
        "coherent": None,
    }
    assert host_only(tmp_path, str(table)) is None  # ext4
