"""The projects tree and lazy fetch through a real FUSE mount over the emulator."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from test_fetch import DOWNLOAD, downloads, hostile_tar, tar_bytes, wait_for_commit

from blfs import mountinfo


def run(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("text", True)
    return subprocess.run(args, capture_output=True, timeout=timeout, **kwargs)


def project(emulator, name: str) -> dict:
    return next(p for p in emulator.db("projects") if p["name"] == name)


def datatype_id(emulator, name: str) -> str:
    return next(d["_id"] for d in emulator.db("datatypes") if d["name"] == name)


def shown_objects(emulator, project_name: str) -> list[dict]:
    """The data-objects DESIGN §1 says a project shows: stored and not removed."""
    project_id = project(emulator, project_name)["_id"]
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == project_id and d["status"] == "stored" and not d.get("removed")
    ]


def an_object(emulator, datatype: str = "neuro/anat/t1w", project_name: str = "Lab Private"):
    wanted = datatype_id(emulator, datatype)
    return next(d for d in shown_objects(emulator, project_name) if d["datatype"] == wanted)


def archive_members(emulator, dataset_id: str) -> dict[str, bytes]:
    """Regular files of the stored archive, read straight from the emulator's data dir."""
    (path,) = (emulator.data / "archives").glob(f"{dataset_id}.*")
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def test_projects_listed_as_readable(mount, emulator):
    names = set(os.listdir(mount.path / "projects"))
    assert {"Lab Private", "Open Diffusion", "Guest Study", "Agreement Study"} <= names
    assert not {"Hidden Lab", "Listed Lab", "Old Project", "Twin Study"} & names
    twins = sorted(n for n in names if n.startswith("Twin Study ("))
    ids = sorted(p["_id"][:8] for p in emulator.db("projects") if p["name"] == "Twin Study")
    assert twins == [f"Twin Study ({i})" for i in ids]


def test_every_shown_object_appears_once_under_its_project(mount, emulator):
    root = mount.path / "projects" / "Lab Private"
    # -prune: find must not descend into (and so fetch) the object directories it finds.
    found = run(
        "find", str(root), "-regextype", "posix-extended", "-regex", ".*/[0-9a-f]{24}", "-prune"
    ).stdout
    ids = [Path(line).name for line in found.splitlines()]
    expected = sorted(d["_id"] for d in shown_objects(emulator, "Lab Private"))
    assert sorted(ids) == expected
    assert not any(r["path"].startswith(DOWNLOAD) for r in emulator.requests())


def test_ls_l_stat_cat_cp_behave_like_a_local_tree(mount, emulator, tmp_path):
    obj = an_object(emulator, "neuro/dwi")
    directory = mount.path / "objects" / obj["_id"]
    members = archive_members(emulator, obj["_id"])

    listing = run("ls", "-l", str(directory))
    assert listing.returncode == 0, listing.stderr
    for name in ("_info.json", "_product.json", *members):
        assert name.split("/")[0] in listing.stdout

    for name, data in members.items():
        assert os.stat(directory / name).st_size == len(data)
        assert (directory / name).read_bytes() == data

    copy = tmp_path / "copy"
    assert run("cp", "-r", str(directory), str(copy)).returncode == 0
    for name, data in members.items():
        assert (copy / name).read_bytes() == data
    assert downloads(emulator, obj["_id"]) == 1


def test_writes_are_refused_with_erofs(mount, emulator):
    obj = an_object(emulator)
    directory = mount.path / "objects" / obj["_id"]
    attempts = [
        lambda: (directory / "new.txt").write_text("x"),
        lambda: os.mkdir(mount.path / "projects" / "new"),
        lambda: os.unlink(directory / "_info.json"),
        lambda: os.rename(directory / "_info.json", directory / "moved.json"),
        lambda: os.chmod(directory / "_info.json", 0o777),
        lambda: open(directory / "_info.json", "r+b").close(),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS


def test_nibabel_reads_the_same_array_through_the_mount(mount, emulator, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    obj = an_object(emulator)
    local = tmp_path / "t1.nii.gz"
    local.write_bytes(archive_members(emulator, obj["_id"])["t1.nii.gz"])
    mounted_image = nibabel.load(mount.path / "objects" / obj["_id"] / "t1.nii.gz")
    assert (mounted_image.get_fdata() == nibabel.load(local).get_fdata()).all()
    assert mounted_image.header.get_data_shape() == nibabel.load(local).header.get_data_shape()


def test_two_processes_reading_one_object_cause_one_download(mount, emulator):
    obj = an_object(emulator, "neuro/anat/t2w")
    emulator.set(bandwidth=2_000_000)
    path = mount.path / "objects" / obj["_id"] / "t2.nii.gz"
    readers = [subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [reader.communicate(timeout=60)[0] for reader in readers]
    expected = archive_members(emulator, obj["_id"])["t2.nii.gz"]
    assert outputs == [expected, expected]
    assert downloads(emulator, obj["_id"]) == 1


def test_first_member_readable_long_before_the_download_ends(replace_archive, mount, emulator):
    obj = an_object(emulator, "neuro/anat/t1w", "Open Diffusion")
    first, second = os.urandom(256 * 1024), os.urandom(8 * 2**20)
    replace_archive(
        obj["_id"],
        tar_bytes({"t1.nii.gz": first, "rest.bin": second}),
    )
    emulator.set(bandwidth=4 * 2**20)
    directory = mount.path / "objects" / obj["_id"]
    start = time.monotonic()
    assert (directory / "t1.nii.gz").read_bytes() == first
    first_done = time.monotonic() - start
    assert (directory / "rest.bin").read_bytes() == second
    all_done = time.monotonic() - start
    assert all_done > 1.5
    assert first_done < all_done / 4, (first_done, all_done)


def test_truncated_download_gives_eio_until_cleared_then_succeeds(mount, emulator):
    obj = an_object(emulator, "neuro/anat/t1w", "Guest Study")
    expected = archive_members(emulator, obj["_id"])["t1.nii.gz"]
    emulator.set(truncate=[{"path": obj["_id"], "at": obj["size"] // 2, "times": 1}])
    directory = mount.path / "objects" / obj["_id"]
    for _ in range(2):  # the second one within the backoff: the same errno, no download
        with pytest.raises(OSError) as caught:
            os.listdir(directory)  # waits for the end of the archive, which never comes
        assert caught.value.errno == errno.EIO
    assert downloads(emulator, obj["_id"]) == 1
    assert not (mount.cache_dir / "objects" / obj["_id"]).exists()
    cleared = mount.blfs("cache", "clear", obj["_id"], "--cache-dir", str(mount.cache_dir))
    assert cleared.returncode == 0, cleared.stderr
    assert "t1.nii.gz" in os.listdir(directory)
    assert (directory / "t1.nii.gz").read_bytes() == expected
    assert downloads(emulator, obj["_id"]) == 2


def test_hostile_archive_writes_nothing_outside(replace_archive, mount, emulator, tmp_path):
    obj = an_object(emulator, "neuro/anat/t1w", "Guest Study")
    outside = tmp_path / "evil-target"
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, str(outside)
    device = tarfile.TarInfo("device")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    replace_archive(
        obj["_id"],
        hostile_tar(
            (tarfile.TarInfo("t1.nii.gz"), b"fine"),
            (tarfile.TarInfo("../escape.txt"), b"evil"),
            (tarfile.TarInfo(str(outside / "absolute.txt")), b"evil"),
            (link, None),
            (device, None),
        ),
    )
    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / "objects" / obj["_id"])
    assert caught.value.errno == errno.EIO
    assert not outside.exists()
    # os.walk, unlike rglob, tolerates staging dirs vanishing while it walks.
    assert not [f for _, _, files in os.walk(mount.cache_dir) for f in files if f == "escape.txt"]
    assert not (mount.home / "escape.txt").exists()
    assert not (mount.cache_dir / "objects" / obj["_id"]).exists()
    assert "refus" in mount.log().lower() or "hostile" in mount.log().lower()


def test_expired_token_gives_eacces_and_one_clear_line(mount, emulator):
    emulator.set(expire_tokens=True)
    token = (mount.home / ".config").rglob(".jwt").__next__().read_text()
    for _ in range(3):
        with pytest.raises(OSError) as caught:
            # Not the project list: it was asked for at mount, and what is known stays served.
            os.listdir(mount.path / "projects" / "Lab Private")
        assert caught.value.errno == errno.EACCES
    log = mount.log()
    assert sum("blfs login" in line for line in log.splitlines()) == 1
    assert token not in log


def test_cache_survives_unmount(mount_factory, emulator):
    obj = an_object(emulator, "neuro/func/task")
    first = mount_factory()
    data = (first.path / "objects" / obj["_id"] / "events.tsv").read_bytes()
    wait_for_commit(first.cache_dir, obj["_id"])
    assert run("fusermount3", "-u", str(first.path)).returncode == 0
    first.process.wait(10)
    emulator.clear_requests()
    second = mount_factory(cache_dir=first.cache_dir)
    assert (second.path / "objects" / obj["_id"] / "events.tsv").read_bytes() == data
    assert downloads(emulator, obj["_id"]) == 0


def test_background_mount_and_umount_leave_nothing_behind(emulator, user_home):
    from mount_fixtures import require_fuse, user_env

    require_fuse()
    path = user_home / "bg"
    path.mkdir()
    env = user_env(user_home)
    blfs = [sys.executable, "-m", "blfs"]
    try:
        started = run(*blfs, "mount", str(path), "--api", emulator.url, env=env)
        assert started.returncode == 0, started.stderr
        assert mountinfo.is_mounted(path)
        assert "Lab Private" in os.listdir(path / "projects")
        stale = run(*blfs, "mount", str(path), "--api", emulator.url, env=env)
        assert stale.returncode != 0 and "already mounted" in stale.stderr
        stopped = run(*blfs, "umount", str(path), env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert not mountinfo.is_mounted(path)
        leftovers = run("pgrep", "-f", f"blfs mount {path}").stdout.split()
        assert leftovers == []
    finally:
        if mountinfo.is_mounted(path):
            run(mountinfo.fusermount(), "-uz", str(path))


def test_concurrent_lookups_are_not_blocked_by_a_slow_download(mount, emulator):
    slow = an_object(emulator, "neuro/anat/t1w", "Open Diffusion")
    emulator.set(stall=[{"path": slow["_id"], "after": 0, "seconds": 8}])
    reader = threading.Thread(
        target=lambda: run(
            "cat", str(mount.path / "objects" / slow["_id"] / "t1.nii.gz"), text=False
        )
    )
    reader.start()
    time.sleep(0.3)
    start = time.monotonic()
    assert "Lab Private" in os.listdir(mount.path / "projects")
    assert time.monotonic() - start < 3
    reader.join(30)
