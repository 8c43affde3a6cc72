"""What a fresh mount with an empty cache lists is what tools can read (DESIGN §1.1, §1.2): the
first run of each tool succeeds, every listed entry answers `lstat`, no name holds a glob
metacharacter, a directory the user may not read refuses its listing and says why beside it.

Every test mounts anew with a cache of its own, so each sees the mount as a new user would.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_fixtures import Mount, mounted, save_token
from test_bids_mount import downloads
from test_mount import archive_members, project, run

GLOB_METACHARACTERS = re.compile(r"[][*?]")
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
AGREEMENT = "Agreement Study"


@pytest.fixture
def cold(emulator, tmp_path) -> Iterator[Mount]:
    """A fresh mount as demo, with an empty cache of its own."""
    home = tmp_path / "home"
    save_token(home, emulator.url, emulator.token("demo"))
    with mounted(emulator.url, home, cache_dir=tmp_path / "cache") as mount:
        yield mount


def refused(path: Path) -> bool:
    """Whether the directory refuses its own listing (EACCES)."""
    try:
        os.listdir(path)
    except PermissionError:
        return True
    return False


def views(mount: Mount) -> Iterator[Path]:
    """Every project's and release's bids/ directory."""
    for project_dir in sorted((mount.path / "projects").iterdir()):
        yield project_dir / "bids"
    for release in releases(mount):
        yield release / "bids"


def releases(mount: Mount) -> list[Path]:
    return sorted(
        release
        for pub in (mount.path / "publications").iterdir()
        for release in pub.iterdir()
        if release.is_dir()
    )


def walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry below `root` with its lstat, object directories' own members aside; a
    directory that refuses its listing is yielded but not entered."""
    for entry in sorted(os.listdir(root)):
        path = root / entry
        info = os.lstat(path)
        yield path, info
        if not stat.S_ISDIR(info.st_mode) or OBJECT_ID.match(entry):
            continue
        if refused(path):
            continue
        yield from walk(path)


def test_the_first_validator_run_passes_on_every_readable_view(cold, emulator):
    checked = []
    for root in views(cold):
        if refused(root):
            continue
        result = run("bids-validator-deno", "--json", str(root), timeout=300)
        issues = json.loads(result.stdout)["issues"]["issues"] if result.stdout else []
        errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
        assert result.returncode == 0 and errors == [], (root, errors, result.stderr[-2000:])
        checked.append(root)
    assert len(checked) >= 8, checked


def test_the_first_copy_of_every_readable_view_and_release_succeeds(cold, emulator, tmp_path):
    readable = [root for root in views(cold) if not refused(root)]
    for n, source in enumerate([*readable, *releases(cold)]):
        target = tmp_path / f"copy{n}"
        for command in (
            ("rsync", "-a", f"{source}/", f"{target}-rsync/"),
            ("tar", "-cf", "/dev/null", "-C", str(source.parent), source.name),
            ("cp", "-r", str(source), f"{target}-cp"),
        ):
            result = run(*command, timeout=300)
            assert result.returncode == 0, (command, result.stderr[-2000:])
    assert len(readable) >= 8


def test_a_walk_meets_no_refused_entry_and_no_glob_metacharacter(cold, emulator):
    nifti = []
    for path, _ in walk(cold.path):
        assert not GLOB_METACHARACTERS.search(path.name), path
        if path.name.endswith(".nii.gz") and "/bids/" in str(path):
            nifti.append(path)
    assert any("Twin Study (" in str(path) for path in nifti)
    for path in nifti:
        assert glob.glob(glob.escape(str(path))) == [str(path)]


def test_nilearn_loads_every_listed_image_of_a_view(cold, emulator):
    from nilearn.image import load_img

    roots = [cold.path / "projects" / name / "bids" for name in ("BIDS Study", "Open Diffusion")]
    twins = [p for p in (cold.path / "projects").iterdir() if p.name.startswith("Twin Study (")]
    images = [p for root in [*roots, *(t / "bids" for t in twins)] for p in root.rglob("*.nii.gz")]
    assert len(images) > 10
    for path in images:
        image = load_img(str(path))
        assert len(image.shape) >= 3 and image.affine.shape == (4, 4)


def test_an_unaccepted_agreement_refuses_the_view_and_says_why(scratch_emulator, tmp_path):
    home = tmp_path / "home"
    save_token(home, scratch_emulator.url, scratch_emulator.token("demo"))
    record = project(scratch_emulator, AGREEMENT)
    (agreement,) = record["agreements"]
    with mounted(scratch_emulator.url, home, cache_dir=tmp_path / "cache", ttl=1.0) as mount:
        root = mount.path / "projects" / AGREEMENT
        assert "ACCESS.txt" in os.listdir(root)
        text = (root / "ACCESS.txt").read_text()
        page = f"/project/{record['_id']}"
        assert page in text.splitlines()[0] and agreement["agreement"] in text
        shown = json.loads((root / "project.json").read_text())
        assert shown["blfs_access"] == text.splitlines()[0]
        assert shown["agreements"] == record["agreements"]
        assert stat.S_ISDIR(os.stat(root / "bids").st_mode)
        with pytest.raises(PermissionError):
            os.listdir(root / "bids")
        with pytest.raises(PermissionError):
            os.stat(root / "bids" / "dataset_description.json")
        assert all(not GLOB_METACHARACTERS.search(p.name) for p, _ in walk(root))
        assert downloads(scratch_emulator) == []

        (demo,) = [u for u in scratch_emulator.db("users") if u["username"] == "demo"]
        scratch_emulator.put_records("users", [{**demo, "agreements": {agreement["_id"]: True}}])
        deadline = time.monotonic() + 30
        while refused(root / "bids") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not refused(root / "bids")
        assert "ACCESS.txt" not in os.listdir(root)
        assert "blfs_access" not in json.loads((root / "project.json").read_text())
        (image,) = (root / "bids").rglob("*_T1w.nii.gz")
        assert image.read_bytes()[:2] == b"\x1f\x8b"


def test_a_release_of_an_unreadable_project_lists_only_what_it_can_read(cold, emulator, tmp_path):
    hidden = project(emulator, "Hidden Lab")
    (pub,) = [p for p in emulator.db("pubs") if p["project"] == hidden["_id"]]
    release = cold.path / "publications" / pub["name"] / "1"
    objects = [p for p in release.rglob("*") if OBJECT_ID.match(p.name)]
    assert objects
    for directory in objects:
        names = os.listdir(directory)
        assert "_info.json" in names and "_product.json" not in names
        with pytest.raises(FileNotFoundError):
            os.stat(directory / "_product.json")
        members = archive_members(emulator, directory.name)
        assert set(members) <= set(names)
    result = run("cp", "-r", str(release), str(tmp_path / "copy"))
    assert result.returncode == 0, result.stderr
    assert "ACCESS.txt" not in os.listdir(release)
    open_pub = next(p for p in emulator.db("pubs") if p["name"].startswith("Open Diffusion"))
    open_release = cold.path / "publications" / open_pub["name"] / "1"
    (one, *_) = [p for p in open_release.rglob("*") if OBJECT_ID.match(p.name)]
    assert "_product.json" in os.listdir(one)


def test_an_optional_file_appears_once_its_archive_shows_it(cold, emulator):
    """Guest Study's objects are stored as archives: events.tsv, optional for the datatype, is
    unknown until the object is downloaded, so it is listed from then on, never before."""
    func = cold.path / "projects" / "Guest Study" / "bids" / "sub-0001" / "func"
    before = os.listdir(func)
    assert not [n for n in before if n.endswith("_events.tsv")]
    assert downloads(emulator) == []
    (bold,) = [n for n in before if n.endswith("_bold.nii.gz")]
    (func / bold).read_bytes()
    deadline = time.monotonic() + 30  # listed once the download is committed
    while not (events := [n for n in os.listdir(func) if n.endswith("_events.tsv")]):
        assert time.monotonic() < deadline, os.listdir(func)
        time.sleep(0.05)
    (events,) = events
    object_id = downloads(emulator)[0]
    assert (func / events).read_bytes() == archive_members(emulator, object_id)["events.tsv"]
    assert downloads(emulator) == [object_id]


def test_a_guest_sees_why_the_data_is_refused(emulator, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with mounted(emulator.url, home, cache_dir=tmp_path / "cache") as mount:
        open_pub = next(p for p in emulator.db("pubs") if p["name"].startswith("Open Diffusion"))
        release = mount.path / "publications" / open_pub["name"] / "1"
        assert "blfs login" in (release / "ACCESS.txt").read_text()
        with pytest.raises(OSError) as caught:
            os.listdir(release / "bids")
        assert caught.value.errno == errno.EACCES
        (one, *_) = [p for p in release.rglob("*") if OBJECT_ID.match(p.name)]
        assert refused(one) and os.lstat(one / "_info.json").st_size > 0


def test_task_outputs_named_with_glob_metacharacters_are_shown_so_patterns_find_them(
    scratch_emulator, tmp_path
):
    from test_user_views import lab_task

    home = tmp_path / "home"
    save_token(home, scratch_emulator.url, scratch_emulator.token("demo"))
    task = lab_task(scratch_emulator, "finished")
    output = scratch_emulator.data / "tasks" / task["instance_id"] / task["_id"] / "output"
    written = {"roi[1].csv": b"bracketed\n", "roi(1).csv": b"plain\n", "all*.txt": b"star\n"}
    (output / "run[2]").mkdir()
    (output / "run[2]" / "fa?.csv").write_bytes(b"nested\n")
    for name, data in written.items():
        (output / name).write_bytes(data)
    with mounted(scratch_emulator.url, home, cache_dir=tmp_path / "cache") as mount:
        shown = mount.path / "tasks" / task["_id"] / "output"
        names = os.listdir(shown)
        assert not [n for n in names if GLOB_METACHARACTERS.search(n)], names
        suffix = f" ({task['_id'][:8]})"
        assert (shown / "roi(1).csv").read_bytes() == b"plain\n"
        assert (shown / f"roi(1).csv{suffix}").read_bytes() == b"bracketed\n"
        assert (shown / "all_.txt").read_bytes() == b"star\n"
        assert (shown / "run(2)" / "fa_.csv").read_bytes() == b"nested\n"
        for name in names:
            assert glob.glob(glob.escape(str(shown / name))) == [str(shown / name)]
