"""The metadata → BIDS mapping (blfs/bids.py) on the generated records: names, provenance and
collisions, without a mount (the mount tests judge the view with the real tools)."""

from __future__ import annotations

from blfs import bids

SITE = "https://brainlife.io"


def records_of(emulator, name: str) -> list[dict]:
    project_id = next(p["_id"] for p in emulator.db("projects") if p["name"] == name)
    return [d for d in emulator.db("datasets") if d["project"] == project_id]


def datatypes(emulator) -> dict[str, dict]:
    return {d["_id"]: d for d in emulator.db("datatypes")}


def test_imports_validators_and_uploads_are_raw_and_apps_derivatives(emulator):
    for record in records_of(emulator, "BIDS Study"):
        task = (record.get("prov") or {}).get("task")
        app = bids.app_of(record)
        if task is None or "validator-" in task["service"] or not task.get("deps_config"):
            assert app is None
        else:
            assert app is task


def test_every_name_is_distinct_and_a_derivative_has_a_desc(emulator):
    files = bids.object_files(records_of(emulator, "BIDS Study"), datatypes(emulator), SITE)
    derived = [p for p in files if p.startswith("derivatives/")]
    assert derived and all("_desc-" in p for p in derived)
    assert all("_desc-" not in p for p in files if p not in derived)


def test_a_clash_keeps_both_objects_under_id_labels_and_others_unchanged(emulator):
    records = records_of(emulator, "BIDS Study")
    t1 = next(r for r in records if not bids.app_of(r) and r["meta"]["subject"] == "01")
    twin = {**t1, "_id": "f" * 24}
    before = bids.object_files(records, datatypes(emulator), SITE)
    after = bids.object_files([*records, twin], datatypes(emulator), SITE)
    moved = set(before) - set(after)
    assert moved and all("sub-01/ses-1/anat/" in p for p in moved)
    clashing = [p for p in after if p not in before or p in moved]
    assert {p for p in after if "acq-ffffffff" in p} and len(clashing) == 2 * len(moved)


def test_a_glob_source_is_the_datatypes_declared_file(emulator):
    dwi = next(d for d in emulator.db("datatypes") if d["name"] == "neuro/dwi")
    assert bids.resolve_source("*.bvals", dwi) == "dwi.bvals"
    assert bids.resolve_source("*.nothing", dwi) is None


def test_participants_keep_published_columns_for_the_views_subjects():
    table = {
        "subjects": [{"subject": "01", "age": 30}, {"subject": "09", "age": 40}],
        "columns": {"age": {"LongName": "age"}},
    }
    tsv, described = bids.participants(["02", "01"], table)
    assert tsv.decode().splitlines() == ["participant_id\tage", "sub-01\t30", "sub-02\tn/a"]
    assert b"LongName" in described
    assert bids.participants(["01"], None) == (b"participant_id\nsub-01\n", None)
