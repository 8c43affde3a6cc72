"""BIDS views through a real mount (issue: BIDS views; DESIGN §1.2): judged by the real tools,
pybids and the BIDS validator, and by the warehouse's own download script run with bash.

One mount serves the whole module. Tests that need a cold object say so by reading the request
log only for objects they have not touched; the order below keeps walking tests first.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import bids
import nibabel as nib
import pytest
from mount_fixtures import Mount, mounted, save_token, unavailable
from test_fetch import DOWNLOAD
from test_mount import archive_members, project, run

STUDY = "BIDS Study"
FILES = "/api/warehouse/files/"
META_MAP = "_meta_"


@pytest.fixture(scope="module")
def view_mount(emulator_server, tmp_path_factory) -> Iterator[Mount]:
    home = tmp_path_factory.mktemp("bids-home")
    save_token(home, emulator_server.url, emulator_server.token("demo"))
    with mounted(emulator_server.url, home) as mount:
        yield mount


@pytest.fixture
def mount(view_mount, emulator) -> Mount:
    """The module's mount, with the emulator's request log cleared."""
    return view_mount


def downloads(emulator) -> list[str]:
    return [
        r["path"].rsplit("/", 1)[1] for r in emulator.requests() if r["path"].startswith(DOWNLOAD)
    ]


def listings(emulator) -> list[dict]:
    return [r for r in emulator.requests() if r["path"].startswith(FILES)]


def study_objects(emulator, name: str = STUDY) -> list[dict]:
    project_id = next(p["_id"] for p in emulator.db("projects") if name in (p["name"], p["_id"]))
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == project_id and d["status"] == "stored" and not d["removed"]
    ]


def datatypes(emulator) -> dict[str, dict]:
    return {d["_id"]: d for d in emulator.db("datatypes")}


def mapped(emulator, objects: list[dict]) -> list[tuple[dict, dict]]:
    """(object, map) for every map of every object whose datatype has a BIDS spec."""
    types = datatypes(emulator)
    return [
        (obj, entry)
        for obj in objects
        if obj["meta"].get("subject")
        for entry in (types[obj["datatype"]].get("bids") or {}).get("maps", [])
    ]


def in_archive(emulator, pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """The maps whose source the object's archive holds (a glob `src` matching a member)."""
    return [
        (obj, entry)
        for obj, entry in pairs
        if entry["src"] == META_MAP
        or fnmatch.filter(archive_members(emulator, obj["_id"]), entry["src"])
    ]


def is_app(obj: dict) -> bool:
    task = (obj.get("prov") or {}).get("task") or {}
    return bool(task.get("deps_config")) and "validator-" not in task.get("service", "")


def view(mount: Mount, name: str = STUDY) -> Path:
    return mount.path / "projects" / name / "bids"


def data_files(root: Path) -> list[Path]:
    """The view's archive-member files (everything below a subject but the JSON sidecars)."""
    return sorted(
        p for p in root.rglob("*") if "/sub-" in str(p) and p.suffix != ".json" and not p.is_dir()
    )


def object_of(path: Path) -> str:
    """The object a data file belongs to, as its sidecar (same name stem) says."""
    stem, suffix = path.name.rsplit("_", 1)
    sidecar = path.parent / f"{stem}_{suffix.split('.')[0]}.json"
    if not sidecar.exists():  # events.tsv beside its bold.json
        (sidecar,) = path.parent.glob(f"{glob.escape(stem)}_*.json")
    return json.loads(sidecar.read_text())["BrainlifeObjectId"]


def test_walking_a_view_downloads_nothing(mount, emulator):
    root = view(mount)
    walked = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    found = run("find", str(root), "-type", "f")
    globbed = glob.glob(f"{glob.escape(str(root))}/sub-*/ses-*/*/*_T1w.nii.gz")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == len(walked)
    assert globbed
    assert downloads(emulator) == []
    expected = in_archive(emulator, mapped(emulator, study_objects(emulator)))
    assert len([p for p in walked if "/sub-" in p]) == len(expected)


def test_top_level_files_describe_the_project(mount, emulator):
    root = view(mount)
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["Name"] == STUDY and description["DatasetType"] == "raw"
    assert description["BIDSVersion"].startswith("1.")
    assert project(emulator, STUDY)["_id"] in description["ReferencesAndLinks"][0]
    assert project(emulator, STUDY)["desc"] in (root / "README").read_text()
    rows = [line.split("\t") for line in (root / "participants.tsv").read_text().splitlines()]
    raw_subjects = {o["meta"]["subject"] for o in study_objects(emulator) if not is_app(o)}
    assert [r[0] for r in rows[1:]] == [f"sub-{s}" for s in sorted(raw_subjects)]
    (table,) = [
        p for p in emulator.db("participants") if p["project"] == project(emulator, STUDY)["_id"]
    ]
    assert rows[0] == ["participant_id", *table["columns"]]
    assert json.loads((root / "participants.json").read_text()) == table["columns"]
    for pipeline in (root / "derivatives").iterdir():
        derived = json.loads((pipeline / "dataset_description.json").read_text())
        assert derived["DatasetType"] == "derivative"
        (generated,) = derived["GeneratedBy"]
        assert generated["Name"].replace("/", ".") == pipeline.name and generated["Version"]


def test_sidecars_carry_bids_meta_and_the_object_id(mount, emulator):
    root = view(mount)
    for obj in study_objects(emulator):
        if not obj["meta"].get("TaskName"):
            continue
        (sidecar,) = [
            p
            for p in root.rglob("*_bold.json")
            if json.loads(p.read_text())["BrainlifeObjectId"] == obj["_id"]
        ]
        body = json.loads(sidecar.read_text())
        assert body["TaskName"] == obj["meta"]["TaskName"]
        assert body["RepetitionTime"] == obj["meta"]["RepetitionTime"]
        assert obj["_id"] in body["BrainlifeURL"]
        assert f"task-{obj['meta']['TaskName']}" in sidecar.name


def test_pybids_indexes_every_mapped_file(mount, emulator):
    objects = study_objects(emulator)
    layout = bids.BIDSLayout(str(view(mount)), derivatives=True)
    indexed = [f for f in layout.get(return_type="filename") if "/sub-" in f]
    assert len(indexed) == len(in_archive(emulator, mapped(emulator, objects)))
    raw = [o for o in objects if not is_app(o) and datatypes(emulator)[o["datatype"]].get("bids")]
    assert layout.get_subjects() == sorted({o["meta"]["subject"] for o in raw})
    assert layout.get_sessions() == sorted({o["meta"]["session"] for o in raw})
    t1w = datatypes_named(emulator, "neuro/anat/t1w")
    raw_t1 = [o for o in raw if o["datatype"] == t1w]
    found = layout.get(suffix="T1w", extension=".nii.gz", scope="raw")
    assert len(found) == len(raw_t1)
    # pybids stats every file: the study is stored on S3, so each size is its object's listed
    # one, equal to the archive member's, and indexing downloads no archive.
    assert downloads(emulator) == []
    data = [Path(p) for p in indexed if not p.endswith(".json")]
    members = [member_of(emulator, path) for path in data]
    for path, (object_id, member) in zip(data, members, strict=True):
        assert path.stat().st_size == len(archive_members(emulator, object_id)[member])
    # One listing per object at most (an earlier listing of the view may have asked already).
    listed = [r["path"].rsplit("/", 1)[1] for r in listings(emulator)]
    assert len(listed) == len(set(listed)) and set(listed) <= {i for i, _ in members}
    emulator.clear_requests()
    bids.BIDSLayout(str(view(mount)), derivatives=True)
    assert downloads(emulator) == [] and listings(emulator) == []
    image = nib.load(found[0].path)
    assert image.shape == image.get_fdata().shape
    object_id = object_of(Path(found[0].path))
    assert Path(found[0].path).read_bytes() == archive_members(emulator, object_id)["t1.nii.gz"]


def member_of(emulator, path: Path) -> tuple[str, str]:
    """(object id, archive member) of a data file: its map's source, a glob matched."""
    object_id = object_of(path)
    (obj,) = [o for o in emulator.db("datasets") if o["_id"] == object_id]
    dest = path.name.rsplit("_", 1)[1]
    (src,) = [m["src"] for _, m in mapped(emulator, [obj]) if m["dest"] == dest]
    (member,) = fnmatch.filter(archive_members(emulator, object_id), src)
    return object_id, member


def datatypes_named(emulator, name: str) -> str:
    return next(d["_id"] for d in emulator.db("datatypes") if d["name"] == name)


def test_colliding_objects_both_appear(mount, emulator):
    t1w = datatypes_named(emulator, "neuro/anat/t1w")
    groups = Counter(
        (o["meta"]["subject"], o["meta"].get("session"), o["meta"].get("acq"))
        for o in study_objects(emulator)
        if o["datatype"] == t1w and not is_app(o)
    )
    (clash,) = [key for key, count in groups.items() if count == 2]
    directory = view(mount) / f"sub-{clash[0]}" / f"ses-{clash[1]}" / "anat"
    images = sorted(directory.glob("*_T1w.nii.gz"))
    assert len(images) == 2 and all("_acq-" in p.name for p in images)
    assert len({object_of(image) for image in images}) == 2
    for image in images:
        assert image.read_bytes() == archive_members(emulator, object_of(image))["t1.nii.gz"]


def test_an_optional_file_its_object_lacks_is_never_listed_and_is_enoent(mount, emulator):
    func = datatypes_named(emulator, "neuro/func/task")
    lacking = [
        o
        for o in study_objects(emulator)
        if o["datatype"] == func and "events.tsv" not in archive_members(emulator, o["_id"])
    ]
    (obj,) = lacking
    meta = obj["meta"]
    directory = view(mount) / f"sub-{meta['subject']}" / f"ses-{meta['session']}" / "func"
    entities = f"sub-{meta['subject']}_ses-{meta['session']}_task-{meta['TaskName']}"
    name = f"{entities}_run-{meta['run']}_events.tsv"
    assert name not in os.listdir(directory)
    assert name.replace("_run-2_", "_run-1_") in os.listdir(directory)
    with pytest.raises(FileNotFoundError):
        (directory / name).read_bytes()
    assert (directory / name.replace("events.tsv", "bold.nii.gz")).read_bytes()[:2] == b"\x1f\x8b"
    assert name not in os.listdir(directory)
    with pytest.raises(OSError) as caught:
        os.lstat(directory / name)
    assert caught.value.errno == errno.ENOENT


def tool(name: str, installed_by: str) -> str:
    """A tool the tests call: on PATH, or beside this Python (a virtualenv's, not activated)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        unavailable(f"no {name} ({installed_by})")
    return str(found)


def validate(root: Path) -> list[dict]:
    validator = tool("bids-validator-deno", "pip install -e '.[test]'")
    result = run(validator, "--json", str(root), timeout=300)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)["issues"]["issues"]


def errors(issues: list[dict]) -> list[tuple[str, str]]:
    return [(i["code"], i.get("location", "")) for i in issues if i["severity"] == "error"]


def demo_projects_with_mapped_data(emulator) -> list[str]:
    """Ids of the projects demo reads and may download from (Agreement Study needs an
    agreement demo never gave) that have objects with BIDS maps."""
    demo = "1"
    ids = []
    for record in emulator.db("projects"):
        roles = [*record["members"], *record["admins"], *record["guests"]]
        readable = record["access"] == "public" or demo in roles
        usable = readable and not record["removed"] and not record["agreements"]
        if usable and mapped(emulator, study_objects(emulator, record["name"])):
            ids.append(record["_id"])
    return ids


def test_the_validator_finds_no_error_in_any_view(mount, emulator):
    warnings: Counter = Counter()
    for project_id in demo_projects_with_mapped_data(emulator):
        issues = validate(view(mount, project_id))
        assert errors(issues) == [], (project_id, errors(issues))
        warnings.update(i["code"] for i in issues if i["severity"] == "warning")
    print("validator warnings:", dict(warnings))


def test_a_release_is_a_valid_dataset_with_licence_and_doi(mount, emulator):
    pub = next(p for p in emulator.db("pubs") if p["project"] == project(emulator, STUDY)["_id"])
    release = pub["releases"][0]
    root = mount.path / "publications" / pub["_id"] / release["_id"] / "bids"
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["License"] == "CC-BY-4.0" and pub["doi"] in description["DatasetDOI"]
    released = [d for d in emulator.db("datasets") if release["_id"] in d["publications"]]
    sidecars = [p for p in root.rglob("*.json") if "/sub-" in str(p)]
    assert len(data_files(root)) + len(sidecars) == len(
        in_archive(emulator, mapped(emulator, released))
    )
    assert errors(validate(root)) == []


def test_open_diffusion_t1w_files_are_found_by_pybids(mount, emulator):
    layout = bids.BIDSLayout(str(view(mount, "Open Diffusion")), derivatives=True)
    t1w = datatypes_named(emulator, "neuro/anat/t1w")
    expected = [o for o in study_objects(emulator, "Open Diffusion") if o["datatype"] == t1w]
    assert len(layout.get(suffix="T1w", extension=".nii.gz")) == len(expected) > 0


def test_the_warehouse_download_script_links_the_same_bytes(mount, emulator, tmp_path):
    """`bl bids download`'s script, run with bash against the emulator: every symlink it makes
    for a map has a target with the bytes of the view's file for the same object and map."""
    project_id = project(emulator, STUDY)["_id"]
    token = emulator.token("demo")
    reply = emulator.http.post(
        f"{emulator.url}/warehouse/dataset/downscript",
        json={"find": {"project": project_id, "removed": False}, "limit": 0},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 200
    (tmp_path / "download.sh").write_text(reply.text)
    tool("curl", "apt install curl")  # what the script downloads with
    ran = subprocess.run(
        ["bash", "download.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    view_files = view_files_by_object_and_dest(view(mount))
    scripted = {}
    for link in (tmp_path / f"proj-{project_id}" / "bids").rglob("*"):
        if link.is_symlink():
            object_id = link.name.split("_desc-")[1].split("_")[0]
            scripted[(object_id, link.name.split("_desc-")[1].split("_", 1)[1])] = link
    assert scripted
    for key, link in scripted.items():
        target = link.resolve()
        if target.is_dir():  # the script quotes a glob `src` inside $(ls -d "…"): not expanded
            glob_maps = {
                m["dest"] for _, m in mapped(emulator, study_objects(emulator)) if "*" in m["src"]
            }
            assert key[1] in glob_maps
            continue
        assert target.read_bytes() == view_files[key].read_bytes(), key
    present = {key for key, path in view_files.items() if path.exists()}  # not missing sources
    unscripted = present - set(scripted)
    assert unscripted == set(), unscripted


def view_files_by_object_and_dest(root: Path) -> dict[tuple[str, str], Path]:
    """The view's data files by (object id, the map's dest)."""
    return {(object_of(p), p.name.rsplit("_", 1)[1]): p for p in data_files(root)}
