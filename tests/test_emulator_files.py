"""The emulator's S3 "files" API (brainlife-api.md §2): the files of `s3fs` objects, with sizes."""

from __future__ import annotations

import io
import tarfile

import pytest
from test_fetch import tar_bytes

FILES = "/warehouse/files"
DOWNLOAD = "/warehouse/dataset/download/"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


def project_id(emulator, name: str) -> str:
    return next(p["_id"] for p in emulator.db("projects") if p["name"] == name)


def on_s3(emulator, project: str) -> list[dict]:
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == project and d["storage"] == "s3fs" and d["status"] == "stored"
    ]


def listed(emulator, token: str, project: str, prefix: str, limit: int = 1000) -> dict:
    """Every page of one folder, merged: {name: size or None for a folder}."""
    entries: dict = {}
    params: dict = {"limit": limit}
    while True:
        reply = emulator.get(f"{FILES}/{project}/{prefix}", token, params=params)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert len(page["objects"]) + len(page["folders"]) <= limit
        entries |= {o["Name"]: o["Size"] for o in page["objects"]}
        entries |= {f["Name"]: None for f in page["folders"]}
        if not page["isTruncated"]:
            assert page["nextContinuationToken"] is None
            return entries
        params["continuationToken"] = page["nextContinuationToken"]


def object_files(emulator, token: str, project: str, object_id: str) -> dict[str, int]:
    """An object's files by path, folders listed in turn."""
    found, folders = {}, [""]
    while folders:
        folder = folders.pop()
        for name, size in listed(emulator, token, project, f"{object_id}/{folder}").items():
            if size is None:
                folders.append(f"{folder}{name}/")
            else:
                found[folder + name] = size
    return found


def downloaded_files(emulator, token: str, object_id: str) -> dict[str, int]:
    reply = emulator.get(DOWNLOAD + object_id, token)
    assert reply.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
        return {m.name: m.size for m in tar if m.isfile()}


def test_an_s3_objects_listing_is_exactly_its_downloads_files_and_sizes(emulator, token):
    project = project_id(emulator, "BIDS Study")
    objects = on_s3(emulator, project)
    assert objects
    for obj in objects:
        files = object_files(emulator, token, project, obj["_id"])
        assert files == downloaded_files(emulator, token, obj["_id"])
        assert obj["size"] == sum(files.values())


def test_subfolders_are_listed_as_folders_and_pages_chain(emulator, token):
    project = project_id(emulator, "BIDS Study")
    (profiles,) = [o for o in on_s3(emulator, project) if o["desc"].startswith("neuro/tract")]
    assert listed(emulator, token, project, profiles["_id"]) == {"profiles": None}
    whole = listed(emulator, token, project, f"{profiles['_id']}/profiles/")
    assert len(whole) == 5
    assert listed(emulator, token, project, f"{profiles['_id']}/profiles", limit=2) == whole


def test_the_project_root_lists_its_objects_as_folders(emulator, token):
    project = project_id(emulator, "BIDS Study")
    root = listed(emulator, token, project, "")
    assert root == {o["_id"]: None for o in on_s3(emulator, project)}


def test_a_project_not_on_s3_answers_400_and_a_missing_path_404(emulator, token):
    lab = project_id(emulator, "Lab Private")
    assert emulator.get(f"{FILES}/{lab}", token).status_code == 400
    project = project_id(emulator, "BIDS Study")
    assert emulator.get(f"{FILES}/{project}/{'0' * 24}", token).status_code == 404
    obj = on_s3(emulator, project)[0]
    assert emulator.get(f"{FILES}/{project}/{obj['_id']}/nothing", token).status_code == 404


def test_listing_follows_the_download_acl(scratch_emulator):
    """Once demo is no member: published objects still list (as they download), others 403."""
    emulator = scratch_emulator
    project = next(p for p in emulator.db("projects") if p["name"] == "BIDS Study")
    emulator.put_records("projects", [{**project, "members": []}])
    token = emulator.token("demo")
    objects = on_s3(emulator, project["_id"])
    published = next(o for o in objects if o["publications"])
    unpublished = next(o for o in objects if not o["publications"])
    for obj, status in ((published, 200), (unpublished, 403)):
        reply = emulator.get(f"{FILES}/{project['_id']}/{obj['_id']}", token)
        assert reply.status_code == status
        assert emulator.get(DOWNLOAD + obj["_id"], token).status_code == status
    assert emulator.get(f"{FILES}/{project['_id']}", token).status_code == 403
    assert emulator.get(f"{FILES}/{project['_id']}").status_code == 500  # no token


def test_a_replaced_archive_is_what_the_listing_and_size_then_say(scratch_emulator):
    emulator = scratch_emulator
    token = emulator.token()
    project = project_id(emulator, "BIDS Study")
    obj = on_s3(emulator, project)[0]
    emulator.put_archive(obj["_id"], tar_bytes({"t1.nii.gz": b"12345", "extra": None}))
    assert object_files(emulator, token, project, obj["_id"]) == {"t1.nii.gz": 5}
    (record,) = [d for d in emulator.db("datasets") if d["_id"] == obj["_id"]]
    assert record["size"] == 5
