"""The cache through real mounts: bound, sharing, offline, crashes, full disks, commands."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mount_fixtures import small_tmpfs
from test_fetch import downloads, tar_bytes, wait_until
from test_mount import an_object, archive_members, run, shown_objects

from blfs import mountinfo

MiB = 2**20


def object_dirs(mount) -> set[str]:
    return {p.name for p in (mount.cache_dir / "objects").iterdir()}


def sized_objects(replace_archive, emulator, count: int, size: int) -> list[dict]:
    """`count` objects of Lab Private whose archives are replaced by one random member each."""
    chosen = shown_objects(emulator, "Lab Private")[:count]
    for obj in chosen:
        replace_archive(obj["_id"], tar_bytes({"blob.bin": os.urandom(size)}))
    return chosen


def read_object(mount, obj: dict) -> bytes:
    """Reads the object's one member, then waits until the object is committed (its listing is
    answered before: the commit is off the reader's path)."""
    data = (mount.path / "objects" / obj["_id"] / "blob.bin").read_bytes()
    os.listdir(mount.path / "objects" / obj["_id"])
    wait_until(lambda: not staged(mount), what="the commit")
    return data


def staged(mount) -> list[Path]:
    """Entries being written (or removed) in the cache's staging area."""
    return [p for p in (mount.cache_dir / "tmp").iterdir() if not p.name.endswith(".lock")]


def test_least_recently_used_objects_are_evicted_whole(replace_archive, mount_factory, emulator):
    a, b, c, d = sized_objects(replace_archive, emulator, 4, MiB)
    mount = mount_factory(extra=("--cache-size", str(int(3.5 * MiB))))
    for obj in (a, b, c):
        read_object(mount, obj)
    assert object_dirs(mount) == {a["_id"], b["_id"], c["_id"]}
    for age, obj in enumerate((a, b, c)):  # last uses in this order, long ago
        os.utime(mount.cache_dir / "objects" / obj["_id"] / "index.json", (1e9 + age,) * 2)
    read_object(mount, a)
    read_object(mount, d)
    assert object_dirs(mount) == {a["_id"], c["_id"], d["_id"]}


def test_an_open_object_is_never_evicted(replace_archive, mount_factory, emulator):
    a, b, c = sized_objects(replace_archive, emulator, 3, MiB)
    mount = mount_factory(extra=("--cache-size", str(int(1.5 * MiB))))
    with open(mount.path / "objects" / a["_id"] / "blob.bin", "rb") as held:
        first = held.read(1000)
        read_object(mount, b)
        read_object(mount, c)
        assert a["_id"] in object_dirs(mount)
        assert first + held.read() == read_object(mount, a)


def test_an_object_larger_than_the_bound_is_still_readable(
    replace_archive, mount_factory, emulator
):
    (big,) = sized_objects(replace_archive, emulator, 1, 3 * MiB)
    mount = mount_factory(extra=("--cache-size", str(MiB)))
    data = read_object(mount, big)
    assert len(data) == 3 * MiB
    assert read_object(mount, big) == data


def test_two_mounts_on_one_cache_download_once(mount_factory, emulator):
    obj = an_object(emulator, "neuro/dwi")
    first = mount_factory()
    second = mount_factory(cache_dir=first.cache_dir)
    emulator.set(bandwidth=1 * MiB)
    outputs: list[bytes] = []
    readers = [
        threading.Thread(
            target=lambda m=m: outputs.append(
                (m.path / "objects" / obj["_id"] / "dwi.nii.gz").read_bytes()
            )
        )
        for m in (first, second)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    expected = archive_members(emulator, obj["_id"])["dwi.nii.gz"]
    assert outputs == [expected, expected]
    assert downloads(emulator, obj["_id"]) == 1


def test_an_unmount_right_after_a_read_keeps_the_object(replace_archive, mount_factory, emulator):
    (obj,) = sized_objects(replace_archive, emulator, 1, 16 * MiB)
    first = mount_factory()
    data = (first.path / "objects" / obj["_id"] / "blob.bin").read_bytes()
    mountinfo.unmount(first.path)
    first.process.wait(60)
    second = mount_factory(cache_dir=first.cache_dir)
    assert (second.path / "objects" / obj["_id"] / "blob.bin").read_bytes() == data
    assert downloads(emulator, obj["_id"]) == 1


def test_offline_cached_content_stays_readable(tmp_path, emulator_data, user_home):
    from mount_fixtures import mounted, save_token

    from blfs.emulator.control import EmulatorProcess

    process = EmulatorProcess(emulator_data)
    server = process.emulator
    try:
        save_token(user_home, server.url, server.token("demo"))
        with mounted(server.url, user_home, ttl=0.5) as mount:
            lab = mount.path / "projects" / "Lab Private"
            subjects = sorted(os.listdir(lab))
            obj = an_object(server)
            cached = (mount.path / "objects" / obj["_id"] / "t1.nii.gz").read_bytes()
            uncached = next(
                d for d in shown_objects(server, "Lab Private") if d["_id"] != obj["_id"]
            )
            process.stop()
            time.sleep(1)
            assert sorted(os.listdir(lab)) == subjects
            assert (mount.path / "objects" / obj["_id"] / "t1.nii.gz").read_bytes() == cached
            start = time.monotonic()
            with pytest.raises(OSError) as caught:
                os.listdir(mount.path / "objects" / uncached["_id"])
            assert caught.value.errno in (errno.EIO, errno.ETIMEDOUT, errno.ENOENT)
            assert time.monotonic() - start < 30
            assert mount.log().lower().count("unreachable") == 1
    finally:
        process.stop()


def test_kill_9_mid_download_then_a_new_mount_recovers(replace_archive, mount_factory, emulator):
    (obj,) = sized_objects(replace_archive, emulator, 1, 4 * MiB)
    emulator.set(bandwidth=MiB)
    first = mount_factory()
    reader = subprocess.Popen(
        ["cat", str(first.path / "objects" / obj["_id"] / "blob.bin")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not any((first.cache_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    reader.wait(10)
    assert mountinfo.is_stale(first.path)
    run(mountinfo.fusermount(), "-u", str(first.path))
    assert not (first.cache_dir / "objects" / obj["_id"]).exists()
    emulator.set(bandwidth=None)
    second = mount_factory(cache_dir=first.cache_dir)
    assert len(read_object(second, obj)) == 4 * MiB
    leftovers = [p for p in (first.cache_dir / "tmp").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A 6 MiB tmpfs to fill up."""
    with small_tmpfs(tmp_path / "small", "6m") as point:
        yield point


def test_disk_full_gives_enospc_and_no_corrupt_entry(
    replace_archive, mount_factory, emulator, small_filesystem
):
    small, big = sized_objects(replace_archive, emulator, 2, MiB)
    replace_archive(
        big["_id"],
        tar_bytes({"blob.bin": os.urandom(12 * MiB)}),
    )
    mount = mount_factory(cache_dir=small_filesystem / "cache", extra=("--cache-size", "1G"))
    with pytest.raises(OSError) as caught:
        read_object(mount, big)
    assert caught.value.errno in (errno.ENOSPC, errno.EIO)
    assert not (mount.cache_dir / "objects" / big["_id"]).exists()
    assert len(read_object(mount, small)) == MiB


def test_prefetch_a_subject_then_reads_cost_no_request(mount, emulator):
    lab = mount.path / "projects" / "Lab Private"
    subject = sorted(p for p in os.listdir(lab) if p.startswith("sub-"))[0]
    done = mount.blfs("prefetch", str(lab / subject), timeout=120)
    assert done.returncode == 0, done.stderr
    emulator.clear_requests()
    found = run("find", str(lab / subject), "-type", "f").stdout.split("\n")
    files = [f for f in found if f and "/_" not in f]
    assert files
    for name in files:
        Path(name).read_bytes()
    assert not any(
        r["path"].startswith("/api/warehouse/dataset/download/") for r in emulator.requests()
    )


def test_status_shows_the_mount_and_a_download_in_progress(replace_archive, mount, emulator):
    (obj,) = sized_objects(replace_archive, emulator, 1, 4 * MiB)
    emulator.set(bandwidth=MiB)
    reader = subprocess.Popen(
        ["cat", str(mount.path / "objects" / obj["_id"] / "blob.bin")], stdout=subprocess.DEVNULL
    )
    try:
        shown = mount.blfs("status")
        while obj["_id"] not in shown.stdout:  # published about every second
            assert reader.poll() is None, "the download ended before status showed it"
            shown = mount.blfs("status")
        assert shown.returncode == 0, shown.stderr
        assert str(mount.path) in shown.stdout
        assert obj["_id"] in shown.stdout
        assert "MiB" in shown.stdout and "/s" in shown.stdout
    finally:
        reader.kill()
        reader.wait(10)


def test_cache_command_lists_and_clears(mount, emulator):
    obj = an_object(emulator)
    (mount.path / "objects" / obj["_id"] / "t1.nii.gz").read_bytes()
    listing = mount.blfs("cache", "ls", "--cache-dir", str(mount.cache_dir))
    assert obj["_id"] in listing.stdout
    usage = mount.blfs("cache", "du", "--cache-dir", str(mount.cache_dir))
    assert "of" in usage.stdout
    cleared = mount.blfs("cache", "clear", obj["_id"], "--cache-dir", str(mount.cache_dir))
    assert cleared.returncode == 0, cleared.stderr
    assert not (mount.cache_dir / "objects" / obj["_id"]).exists()
