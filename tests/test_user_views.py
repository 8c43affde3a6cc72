"""What a brainlife user's recipes look for, through a real mount: task and process records,
datatype ids in paths, participant tables, objects in other states, and metadata files that never
hide an archive member or a task output of the same name."""

from __future__ import annotations

import csv
import errno
import glob
import json
import os
from pathlib import Path

import pytest
from mount_fixtures import save_token
from test_fetch import tar_bytes
from test_mount import an_object, datatype_id, project, shown_objects

from blfs.redact import without_secrets

LAB = "Lab Private"


def process_dir(mount, emulator, task: dict) -> Path:
    instance = next(i for i in emulator.db("instances") if i["_id"] == task["instance_id"])
    return mount.path / "projects" / LAB / "processes" / instance["name"]


def lab_task(emulator, status: str) -> dict:
    group = project(emulator, LAB)["group_id"]
    return next(
        t for t in emulator.db("tasks") if t["_group_id"] == group and t["status"] == status
    )


def metadata_requests_only(emulator) -> bool:
    return not any("/download" in r["path"] for r in emulator.requests())


@pytest.mark.parametrize("status", ["finished", "running", "failed"])
def test_a_task_directory_holds_its_record(mount, emulator, status):
    task = lab_task(emulator, status)
    shown = process_dir(mount, emulator, task) / task["name"]
    emulator.clear_requests()
    assert "_task.json" in os.listdir(shown)
    record = json.loads((shown / "_task.json").read_bytes())
    by_id = json.loads((mount.path / "tasks" / task["_id"] / "_task.json").read_bytes())
    for field in ("_id", "name", "service", "service_branch", "status", "create_date"):
        assert record[field] == by_id[field] == task[field]
    (given,) = record["config"]["_inputs"]
    assert given["meta"]["subject"] == task["config"]["_inputs"][0]["meta"]["subject"]
    assert given["dataset_id"] in {d["_id"] for d in shown_objects(emulator, LAB)}
    assert metadata_requests_only(emulator)


def test_a_process_directory_holds_its_record(mount, emulator):
    task = lab_task(emulator, "finished")
    shown = process_dir(mount, emulator, task)
    record = json.loads((shown / "_instance.json").read_bytes())
    assert record["_id"] == task["instance_id"] and record["name"] == shown.name


def test_records_are_shown_without_anything_secret():
    task = {
        "_id": "0123456789abcdef01234567",
        "name": "tractography",
        "envs": {"BRAINLIFE_TOKEN": "eyJ.x.y"},
        "config": {
            "_inputs": [{"id": "t1", "keys": ["t1"], "meta": {"subject": "0001"}}],
            "access_token": "eyJ.x.y",
            "db_password": "hunter2",
            "iterations": 3,
            "nested": {"aws_secret_access_key": "s3cr3t", "api_key": "k", "seed": 7},
        },
    }
    assert without_secrets(task) == {
        "_id": "0123456789abcdef01234567",
        "name": "tractography",
        "config": {
            "_inputs": [{"id": "t1", "keys": ["t1"], "meta": {"subject": "0001"}}],
            "iterations": 3,
            "nested": {"seed": 7},
        },
    }


def test_a_per_subject_loop_over_task_outputs_with_glob_and_json(mount, emulator):
    """The README's recipe: every finished task's stats, keyed by its input's subject."""
    stats = {}
    pattern = str(mount.path / "projects" / LAB / "processes" / "*" / "*" / "_task.json")
    for record_path in sorted(glob.glob(pattern)):
        task = json.loads(Path(record_path).read_bytes())
        if task["status"] == "finished":
            subject = task["config"]["_inputs"][0]["meta"]["subject"]
            with open(Path(record_path).parent / "output" / "stats.csv", newline="") as table:
                stats[subject] = list(csv.DictReader(table))
    finished = [t for t in emulator.db("tasks") if t["status"] == "finished"]
    lab = lab_task(emulator, "finished")
    assert lab in finished and list(stats) == [lab["config"]["_inputs"][0]["meta"]["subject"]]
    assert stats[list(stats)[0]][1] == {"roi": "roi1", "volume": "37"}


def test_a_datatype_id_reaches_its_directory(mount, emulator):
    subject = mount.path / "projects" / LAB / "sub-0001"
    t1w = datatype_id(emulator, "neuro/anat/t1w")
    assert t1w not in os.listdir(subject)
    assert sorted(os.listdir(subject / t1w)) == sorted(os.listdir(subject / "neuro-anat-t1w"))
    obj = next(iter(os.listdir(subject / t1w / "acpc_aligned")))
    assert (subject / t1w / "acpc_aligned" / obj / "_info.json").exists()
    with pytest.raises(FileNotFoundError):
        os.listdir(subject / datatype_id(emulator, "neuro/dwi") / "no-such-tags")


def participants_rows(emulator, name: str) -> dict[str, dict]:
    table = next(
        r for r in emulator.db("participants") if r["project"] == project(emulator, name)["_id"]
    )
    return {f"sub-{row['subject']}": row for row in table["subjects"]}


def test_participants_of_a_project_that_publishes_them(mount, emulator):
    shown = mount.path / "projects" / "BIDS Study"
    emulator.clear_requests()
    assert {"participants.tsv", "participants.json"} <= set(os.listdir(shown))
    # Listed only once the server gave it, so that what is listed can be read: one request at
    # most (it may have been asked ahead already).
    assert len([r for r in emulator.requests() if "/participant/" in r["path"]]) <= 1
    with open(shown / "participants.tsv", newline="") as table:
        rows = {row["participant_id"]: row for row in csv.DictReader(table, delimiter="\t")}
    expected = participants_rows(emulator, "BIDS Study")
    assert set(rows) == set(expected)
    for subject, row in rows.items():
        assert (
            row["age"] == str(expected[subject]["age"]) and row["sex"] == expected[subject]["sex"]
        )
    described = json.loads((shown / "participants.json").read_bytes())
    assert set(described) == set(next(iter(rows.values()))) - {"participant_id"}
    # Asked for ahead when the project was looked up, then never again.
    assert len([r for r in emulator.requests() if "/participant/" in r["path"]]) == 1


def test_no_participants_where_the_project_does_not_publish_them(mount, emulator):
    shown = mount.path / "projects" / "Open Diffusion"
    assert not {"participants.tsv", "participants.json"} & set(os.listdir(shown))
    with pytest.raises(FileNotFoundError):
        (shown / "participants.tsv").read_bytes()


def test_objects_in_other_states_are_counted_not_shown(mount, emulator):
    lab = project(emulator, LAB)
    summary = json.loads((mount.path / "projects" / LAB / "object-states.json").read_bytes())
    others = [
        d
        for d in emulator.db("datasets")
        if d["project"] == lab["_id"] and not d.get("removed") and d["status"] != "stored"
    ]
    assert {d["status"] for d in others} == {"failed", "storing"}
    assert summary["counts"] == {
        "failed": 1,
        "storing": 1,
        "stored": len(shown_objects(emulator, LAB)),
    }
    assert {(o["_id"], o["status"]) for o in summary["not_shown"]} == {
        (d["_id"], d["status"]) for d in others
    }
    failed = next(o for o in summary["not_shown"] if o["status"] == "failed")
    assert "tar exited" in failed["status_msg"] and failed["datatype"] == "neuro/dwi"
    for other in others:
        with pytest.raises(OSError) as caught:
            os.listdir(mount.path / "objects" / other["_id"])
        assert caught.value.errno == errno.ENOENT


def test_archive_members_named_like_metadata_files_stay_reachable(replace_archive, mount, emulator):
    obj = an_object(emulator)
    members = {
        "_info.json": b'{"from": "the archive"}\n',
        "_product.json": b"[1]\n",
        "t1.txt": b"x",
    }
    replace_archive(obj["_id"], tar_bytes(members))
    shown = mount.path / "objects" / obj["_id"]
    suffix = f" ({obj['_id'][:8]})"
    assert sorted(os.listdir(shown)) == sorted(
        ["_info.json", "_product.json", f"_info.json{suffix}", f"_product.json{suffix}", "t1.txt"]
    )
    assert json.loads((shown / "_info.json").read_bytes())["_id"] == obj["_id"]
    assert "product" in json.loads((shown / "_product.json").read_bytes())
    assert (shown / f"_info.json{suffix}").read_bytes() == members["_info.json"]
    assert (shown / f"_product.json{suffix}").read_bytes() == members["_product.json"]


def test_a_task_output_named_like_its_record_stays_reachable(
    scratch_emulator, user_home, mount_factory
):
    save_token(user_home, scratch_emulator.url, scratch_emulator.token("demo"))
    task = lab_task(scratch_emulator, "finished")
    own = b'{"written": "by the app"}\n'
    (
        scratch_emulator.data / "tasks" / task["instance_id"] / task["_id"] / "_task.json"
    ).write_bytes(own)
    mount = mount_factory(api_url=scratch_emulator.url)
    shown = mount.path / "tasks" / task["_id"]
    assert {"_task.json", f"_task.json ({task['_id'][:8]})"} <= set(os.listdir(shown))
    assert json.loads((shown / "_task.json").read_bytes())["_id"] == task["_id"]
    assert (shown / f"_task.json ({task['_id'][:8]})").read_bytes() == own
