"""Publications, releases and task outputs through a real mount (issue: publications and tasks)."""

from __future__ import annotations

import errno
import glob
import os
import time
from pathlib import Path

import pytest
from test_fetch import DOWNLOAD
from test_mount import archive_members, datatype_id, project, run

PRODUCT = "/api/warehouse/dataset/product/"
TASK_DOWNLOAD = "/api/amaretti/task/download/"


def live_releases(emulator, project_name: str) -> list[tuple[dict, dict]]:
    project_id = project(emulator, project_name)["_id"]
    return [
        (pub, release)
        for pub in emulator.db("pubs")
        if pub["project"] == project_id and not pub.get("removed")
        for release in pub["releases"]
        if not release.get("removed")
    ]


def release_objects(emulator, release_id: str) -> list[dict]:
    return [
        d
        for d in emulator.db("datasets")
        if release_id in (d.get("publications") or []) and d["status"] == "stored"
    ]


def task_dir(emulator, task: dict) -> Path:
    return emulator.data / "tasks" / task["instance_id"] / task["_id"]


def lab_tasks(emulator, status: str) -> list[dict]:
    group = project(emulator, "Lab Private")["group_id"]
    instances = {i["_id"] for i in emulator.db("instances") if i.get("group_id") == group}
    return [
        t
        for t in emulator.db("tasks")
        if t["instance_id"] in instances
        and t["status"] == status
        and task_dir(emulator, t).is_dir()
    ]


def mounted_task(mount, emulator, task: dict) -> Path:
    """A task reached through its project's processes, by the id aliases of DESIGN §1.1."""
    return mount.path / "projects" / "Lab Private" / "processes" / task["instance_id"] / task["_id"]


def test_a_guest_browses_publications_without_a_token(mount_factory, tmp_path):
    guest = tmp_path / "guest"
    guest.mkdir()
    mount = mount_factory(home=guest)
    publications = os.listdir(mount.path / "publications")
    assert publications
    pub = mount.path / "publications" / sorted(publications)[0]
    assert (pub / "publication.json").read_bytes().startswith(b"{")
    releases = [p for p in os.listdir(pub) if p != "publication.json"]
    assert releases
    assert any(name.startswith("sub-") for name in os.listdir(pub / releases[0]))


def test_removed_releases_are_hidden(mount, emulator):
    for pub in (p for p in emulator.db("pubs") if not p.get("removed")):
        shown = set(os.listdir(mount.path / "publications" / pub["_id"]))
        for release in pub["releases"]:
            assert (release["_id"] in shown) is False
            alias = mount.path / "publications" / pub["_id"] / release["_id"]
            assert alias.exists() is not bool(release.get("removed"))


def test_a_non_member_reads_a_published_object(mount, emulator):
    pub, release = live_releases(emulator, "Hidden Lab")[0]
    t1w = datatype_id(emulator, "neuro/anat/t1w")
    obj = next(d for d in release_objects(emulator, release["_id"]) if d["datatype"] == t1w)
    root = mount.path / "publications" / pub["_id"] / release["_id"]
    (found,) = glob.glob(f"{glob.escape(str(root))}/sub-*/**/{obj['_id']}", recursive=True)
    assert (Path(found) / "t1.nii.gz").read_bytes() == archive_members(emulator, obj["_id"])[
        "t1.nii.gz"
    ]
    assert "Hidden Lab" not in os.listdir(mount.path / "projects")


def test_task_file_read_byte_exact(mount, emulator):
    task = lab_tasks(emulator, "finished")[0]
    local = task_dir(emulator, task)
    files = [p for p in local.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files
    for path in files:
        through = mounted_task(mount, emulator, task) / path.relative_to(local)
        assert through.read_bytes() == path.read_bytes(), path
    assert (mount.path / "tasks" / task["_id"]).is_dir()


def test_ls_l_of_a_task_tree_downloads_nothing(mount, emulator):
    task = lab_tasks(emulator, "finished")[0]
    listing = run("ls", "-lR", str(mounted_task(mount, emulator, task)))
    assert listing.returncode == 0, listing.stderr
    local = task_dir(emulator, task)
    for path in local.rglob("*"):
        if path.is_file() and not path.is_symlink():
            through = mounted_task(mount, emulator, task) / path.relative_to(local)
            assert os.stat(through).st_size == path.stat().st_size
            assert int(os.stat(through).st_mtime) == int(path.stat().st_mtime)
    # /task/ls sizes a symlink by the link itself, so only a symlinked file's size is asked for
    # (its download is opened for the Content-Length and closed): never a regular file's bytes.
    links = {p.name for p in local.rglob("*") if p.is_symlink()}
    asked = [r["path"] for r in emulator.requests() if r["path"].startswith(TASK_DOWNLOAD)]
    assert all(Path(path).name in links for path in asked), asked


def test_a_running_tasks_new_output_appears_after_the_ttl(mount_factory, emulator):
    task = lab_tasks(emulator, "running")[0]
    mount = mount_factory(ttl=1.0)
    through = mounted_task(mount, emulator, task)
    before = set(os.listdir(through))
    new = task_dir(emulator, task) / "appeared-later.txt"
    new.write_text("late output\n")
    try:
        deadline = time.monotonic() + 10
        while "appeared-later.txt" not in os.listdir(through):
            assert time.monotonic() < deadline, "new output never appeared"
            time.sleep(0.3)
        assert "appeared-later.txt" not in before
        assert (through / "appeared-later.txt").read_text() == "late output\n"
    finally:
        new.unlink()


def test_removed_tasks_are_not_shown(mount, emulator):
    removed = [t for t in emulator.db("tasks") if t["status"] == "removed"]
    assert removed
    for task in removed:
        with pytest.raises(OSError) as caught:
            os.stat(mount.path / "tasks" / task["_id"])
        assert caught.value.errno == errno.ENOENT


def _products_once(mount, emulator, root: Path, objects: list[dict]) -> None:
    emulator.clear_requests()

    def products() -> list[str]:
        base = glob.escape(str(root))
        return sorted(
            glob.glob(f"{base}/sub-*/neuro-tractprofile/*/*/_product.json")
            + glob.glob(f"{base}/sub-*/ses-*/neuro-tractprofile/*/*/_product.json")
        )

    first, again = products(), products()
    assert len(first) == len(objects) > 0
    for path in first + again:
        assert Path(path).read_bytes().startswith(b"{")
    log = emulator.requests()
    # Each asked for once at most (the walk asks ahead for those of every object it lists).
    asked = [r["path"] for r in log if r["path"].startswith(PRODUCT)]
    assert {f"{PRODUCT}{o['_id']}" for o in objects} <= set(asked)
    assert len(asked) == len(set(asked))
    assert not any(r["path"].startswith(DOWNLOAD) for r in log)


def test_group_analysis_reads_products_without_archives(mount, emulator):
    tractprofile = datatype_id(emulator, "neuro/tractprofile")
    lab = project(emulator, "Lab Private")["_id"]
    objects = [
        d
        for d in emulator.db("datasets")
        if d["project"] == lab
        and d["datatype"] == tractprofile
        and d["status"] == "stored"
        and not d.get("removed")
    ]
    _products_once(mount, emulator, mount.path / "projects" / "Lab Private", objects)


def test_group_analysis_under_a_release(mount, emulator):
    tractprofile = datatype_id(emulator, "neuro/tractprofile")
    # Open Diffusion is public: the warehouse refuses products of unreadable projects.
    for pub, release in live_releases(emulator, "Open Diffusion"):
        objects = [
            d for d in release_objects(emulator, release["_id"]) if d["datatype"] == tractprofile
        ]
        if objects:
            root = mount.path / "publications" / pub["_id"] / release["_id"]
            _products_once(mount, emulator, root, objects)
            return
    pytest.fail("no release holds a tractprofile object")
