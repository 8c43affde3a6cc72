"""Amaretti endpoints of the emulator: instance/task ACL, task products, task files (§4)."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


def group(emulator, name: str) -> int:
    return next(p["group_id"] for p in emulator.db("projects") if p["name"] == name)


def finished_task(emulator, project_name: str = "Lab Private") -> dict:
    gid = group(emulator, project_name)
    return next(
        t for t in emulator.db("tasks") if t["_group_id"] == gid and t["status"] == "finished"
    )


def test_instances_of_the_project_group_as_the_ui_asks(emulator, token):
    gid = group(emulator, "Lab Private")
    find = {
        "config.brainlife": True,
        "status": {"$ne": "removed"},
        "group_id": gid,
        "config.removing": {"$exists": False},
    }
    body = emulator.get("/amaretti/instance", token, params={"find": find, "limit": 3000}).json()
    assert set(body) == {"instances"}
    expected = [
        i["_id"]
        for i in emulator.db("instances")
        if i["group_id"] == gid and i["status"] != "removed"
    ]
    assert sorted(i["_id"] for i in body["instances"]) == sorted(expected)
    assert expected


def test_other_groups_processes_are_invisible(emulator, token):
    gid = group(emulator, "Hidden Lab")
    body = emulator.get("/amaretti/instance", token, params={"find": {"group_id": gid}}).json()
    assert body["instances"] == []
    tasks = emulator.get("/amaretti/task", token, params={"find": {"_group_id": gid}}).json()
    assert tasks == {"tasks": []}
    admin = emulator.get(
        "/amaretti/instance", emulator.token("alice"), params={"find": {"group_id": gid}}
    )
    assert len(admin.json()["instances"]) == 1


def test_a_top_level_or_is_overwritten_by_the_acl(emulator, token):
    hidden, lab = group(emulator, "Hidden Lab"), group(emulator, "Lab Private")
    find = {"$or": [{"group_id": hidden}]}
    body = emulator.get("/amaretti/instance", token, params={"find": find}).json()
    assert {i["group_id"] for i in body["instances"]} == {lab}


def test_amaretti_limit_zero_falls_back_to_100(scratch_emulator):
    gid = group(scratch_emulator, "Lab Private")
    extra = [
        {
            "_id": f"{n:024x}",
            "name": f"bulk {n}",
            "user_id": "1",
            "group_id": gid,
            "config": {"brainlife": True},
            "status": "finished",
        }
        for n in range(1, 131)
    ]
    scratch_emulator.put_records("instances", extra)
    token = scratch_emulator.token()
    for limit, expected in (("0", 100), ("120", 120), (None, 100)):
        params = {"limit": limit} if limit else {}
        body = scratch_emulator.get("/amaretti/instance", token, params=params).json()
        assert len(body["instances"]) == expected


def test_where_is_an_alias_of_find_and_select_projects(emulator, token):
    task = finished_task(emulator)
    body = emulator.get(
        "/amaretti/task", token, params={"where": {"_id": task["_id"]}, "select": "status name"}
    ).json()
    assert body["tasks"] == [{"_id": task["_id"], "status": "finished", "name": task["name"]}]


def test_task_by_id_needs_no_token(emulator):
    task = finished_task(emulator, "Hidden Lab")
    reply = emulator.get(f"/amaretti/task/{task['_id']}")
    assert reply.status_code == 200
    assert reply.json()["_id"] == task["_id"]
    unknown = emulator.get("/amaretti/task/" + "a" * 24)
    assert unknown.status_code == 500
    assert unknown.json() == {"message": "no such task id"}


def test_task_products_are_acl_filtered(emulator, token):
    mine, theirs = finished_task(emulator), finished_task(emulator, "Hidden Lab")
    reply = emulator.get(
        "/amaretti/task/product", token, params={"ids[]": [mine["_id"], theirs["_id"]]}
    )
    assert [p["task_id"] for p in reply.json()] == [mine["_id"]]
    assert set(reply.json()[0]) == {"_id", "task_id", "product"}


def test_ls_lists_hidden_files_links_and_sizes(emulator, token):
    task = finished_task(emulator)
    reply = emulator.get(f"/amaretti/task/ls/{task['_id']}", token, params={"p": "output"})
    files = {f["filename"]: f for f in reply.json()["files"]}
    assert {".cache", "deep", "notes.txt", "notes-link.txt", "stats.csv", "t1.nii.gz"} <= set(files)
    assert files["notes-link.txt"]["link"] is True and files["notes-link.txt"]["directory"] is False
    assert files["deep"]["directory"] is True
    local = emulator.data / "tasks" / task["instance_id"] / task["_id"] / "output" / "stats.csv"
    assert files["stats.csv"]["attrs"]["size"] == local.stat().st_size
    assert files["stats.csv"]["attrs"]["mode_string"] == "-rw-r--r--"
    assert isinstance(files["stats.csv"]["attrs"]["mtime"], int)
    root = emulator.get(f"/amaretti/task/ls/{task['_id']}", token).json()["files"]
    names = {f["filename"]: f for f in root}
    assert ".hidden" in names and names["latest"]["link"] and names["latest"]["directory"]


def test_ls_errors_are_500(emulator, token):
    task = finished_task(emulator)
    theirs = finished_task(emulator, "Hidden Lab")
    denied = emulator.get(f"/amaretti/task/ls/{theirs['_id']}", token)
    assert denied.json() == {"message": "don't have access to specified task"}
    missing = emulator.get(f"/amaretti/task/ls/{task['_id']}", token, params={"p": "nope"})
    assert missing.status_code == 500
    assert missing.json()["message"].startswith("Error: No such file -- ")
    escaping = emulator.get(f"/amaretti/task/ls/{task['_id']}", token, params={"p": "../.."})
    assert escaping.status_code == 500
    removed = next(t for t in emulator.db("tasks") if t["status"] == "removed")
    assert emulator.get(f"/amaretti/task/ls/{removed['_id']}", token).status_code == 500


def test_download_a_file_with_length_and_type(emulator, token):
    task = finished_task(emulator)
    reply = emulator.get(
        f"/amaretti/task/download/{task['_id']}/output/t1.nii.gz",
        token,
        headers={"Accept-Encoding": "identity"},
    )
    local = emulator.data / "tasks" / task["instance_id"] / task["_id"] / "output" / "t1.nii.gz"
    assert reply.content == local.read_bytes()
    assert int(reply.headers["Content-Length"]) == local.stat().st_size
    assert reply.headers["Content-Type"] == "application/gzip"
    assert reply.headers["Content-disposition"] == "attachment; filename=t1.nii.gz"
    by_query = emulator.get(
        f"/amaretti/task/download/{task['_id']}", params={"at": token, "p": "output/t1.nii.gz"}
    )
    assert by_query.content == reply.content


def test_compressible_files_are_gzip_encoded_without_length_when_asked(emulator, token):
    task = finished_task(emulator)
    path = f"/amaretti/task/download/{task['_id']}/output/stats.csv"
    local = emulator.data / "tasks" / task["instance_id"] / task["_id"] / "output" / "stats.csv"
    assert local.stat().st_size > 1024
    compressed = emulator.get(path, token, headers={"Accept-Encoding": "gzip"}, stream=True)
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert "Content-Length" not in compressed.headers
    assert gzip.decompress(compressed.raw.read()) == local.read_bytes()
    plain = emulator.get(path, token, headers={"Accept-Encoding": "identity"})
    assert int(plain.headers["Content-Length"]) == local.stat().st_size
    assert "Content-Encoding" not in plain.headers


def test_a_folder_downloads_as_tar_gz_without_dotfiles_and_with_links_followed(emulator, token):
    task = finished_task(emulator)
    reply = emulator.get(f"/amaretti/task/download/{task['_id']}/output", token)
    assert reply.headers["Content-Type"] == "application/x-tgz"
    assert "Content-Length" not in reply.headers
    name = f"{task['instance_id']}.{task['_id']}.output.tar.gz"
    assert reply.headers["Content-disposition"] == f"attachment; filename={name}"
    with tarfile.open(fileobj=io.BytesIO(reply.content), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "stats.csv" in members and "deep/nested/dir/result.json" in members
    assert not any(part.startswith(".") for n in members for part in n.split("/"))
    assert members["notes-link.txt"].isfile()


def test_task_download_needs_access(emulator, token):
    theirs = finished_task(emulator, "Hidden Lab")
    reply = emulator.get(f"/amaretti/task/download/{theirs['_id']}/product.json", token)
    assert reply.status_code == 500
    assert reply.json() == {"message": "don't have access to specified task"}
    assert emulator.get(f"/amaretti/task/download/{theirs['_id']}/product.json").status_code == 500
