"""Warehouse queries of the emulator: ACL rules and the quirks of brainlife-api.md §2, §3, §7."""

from __future__ import annotations

import io
import tarfile

import pytest
import requests
from test_fetch import tar_bytes

DATASETS = "/warehouse/dataset"
SAFE_SELECT = "project publications meta datatype datatype_tags tags size status removed"
FILES = "/warehouse/files"
DOWNLOAD = "/warehouse/dataset/download/"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


def project(emulator, name: str) -> dict:
    return next(p for p in emulator.db("projects") if p["name"] == name)


def of_project(emulator, name: str) -> list[dict]:
    project_id = project(emulator, name)["_id"]
    return [d for d in emulator.db("datasets") if d["project"] == project_id]


def test_anonymous_project_listing_shows_public_projects_only(emulator):
    body = emulator.get("/warehouse/project", params={"limit": 0}).json()
    names = sorted(p["name"] for p in body["projects"])
    assert names == ["Open Diffusion", "Twin Study", "Twin Study"]
    assert body["count"] == 3


def test_logged_in_listing_adds_member_guest_and_listed_projects_and_keeps_removed(emulator, token):
    body = emulator.get("/warehouse/project", token, params={"limit": 0}).json()
    names = sorted(p["name"] for p in body["projects"])
    assert names == sorted(
        [
            "Lab Private",
            "BIDS Study",
            "Open Diffusion",
            "Guest Study",
            "Agreement Study",
            "Listed Lab",
            "Old Project",
            "Twin Study",
            "Twin Study",
        ]
    )
    assert "Hidden Lab" not in names
    assert next(p for p in body["projects"] if p["name"] == "Old Project")["removed"] is True
    assert body["count"] == len(names)


def test_project_query_is_readable_and_not_removed_only(emulator, token):
    found = emulator.get("/warehouse/project/query", token, params={"q": "lab"}).json()
    assert sorted(p["name"] for p in found) == ["Lab Private"]
    assert emulator.get("/warehouse/project/query", token, params={"q": "old"}).json() == []


def test_find_select_sort_skip_limit_follow_mongo(emulator, token):
    lab = project(emulator, "Lab Private")["_id"]
    find = {"project": lab, "removed": False, "status": "stored"}
    params = {"find": find, "select": "project meta.subject", "sort": "-meta.subject _id"}
    everything = emulator.get(DATASETS, token, params={**params, "limit": 0}).json()["datasets"]
    subjects = [d["meta"].get("subject", "") for d in everything]
    assert subjects == sorted(subjects, reverse=True)
    assert set(everything[0]) == {"_id", "project", "meta", "_canedit"}
    page = emulator.get(DATASETS, token, params={**params, "skip": 3, "limit": 2}).json()
    assert [d["_id"] for d in page["datasets"]] == [d["_id"] for d in everything[3:5]]
    excluded = emulator.get(DATASETS, token, params={"find": find, "select": "-prov -meta"}).json()
    assert all("prov" not in d and "meta" not in d and "tags" in d for d in excluded["datasets"])


def test_warehouse_limit_defaults_to_100_and_zero_means_all(emulator, token):
    find = {"project": project(emulator, "Lab Private")["_id"]}
    total = len(of_project(emulator, "Lab Private"))
    assert total > 5
    for limit, expected in (("0", total), ("5", 5), (None, min(total, 100))):
        params = {"find": find} if limit is None else {"find": find, "limit": limit}
        assert len(emulator.get(DATASETS, token, params=params).json()["datasets"]) == expected


def test_count_is_computed_before_the_acl_filter(emulator, token):
    listed = project(emulator, "Listed Lab")
    body = emulator.get(DATASETS, token, params={"find": {"project": listed["_id"]}}).json()
    assert body["datasets"] == []
    assert body["count"] == len(of_project(emulator, "Listed Lab")) > 0
    assert body["size"] == sum(d["size"] for d in of_project(emulator, "Listed Lab"))


def test_unreadable_rows_are_omitted_but_published_ones_kept(emulator, token):
    hidden = of_project(emulator, "Hidden Lab")
    ids = [d["_id"] for d in hidden]
    body = emulator.get(
        DATASETS, token, params={"find": {"_id": {"$in": ids}}, "select": SAFE_SELECT}
    ).json()
    assert sorted(d["_id"] for d in body["datasets"]) == sorted(
        d["_id"] for d in hidden if d["publications"]
    )
    assert body["count"] == len(hidden)


def test_removed_datasets_are_not_filtered_unless_asked(emulator, token):
    lab = project(emulator, "Lab Private")["_id"]
    removed = [d["_id"] for d in of_project(emulator, "Lab Private") if d["removed"]]
    assert removed
    everything = emulator.get(DATASETS, token, params={"find": {"project": lab}, "limit": 0})
    assert set(removed) <= {d["_id"] for d in everything.json()["datasets"]}
    kept = emulator.get(
        DATASETS, token, params={"find": {"project": lab, "removed": False}, "limit": 0}
    )
    assert not set(removed) & {d["_id"] for d in kept.json()["datasets"]}


def test_single_returns_the_first_record_bare(emulator, token):
    first = of_project(emulator, "Lab Private")[0]
    reply = emulator.get(DATASETS, token, params={"find": {"_id": first["_id"]}, "single": "true"})
    assert reply.json()["_id"] == first["_id"]
    assert reply.json()["size"] == first["size"]


def test_a_select_without_project_hangs_then_the_connection_drops(emulator, token):
    emulator.set(hang_seconds=0.5)
    lab = project(emulator, "Lab Private")["_id"]
    with pytest.raises(requests.ConnectionError):
        emulator.get(DATASETS, token, params={"find": {"project": lab}, "select": "meta"})
    assert emulator.requests()[-1]["status"] is None


def test_bad_find_json_and_bad_ids_are_500(emulator, token):
    reply = emulator.get(DATASETS, token, params={"find": "{not json"})
    assert reply.status_code == 500
    assert reply.json()["message"].startswith("SyntaxError: ")
    cast = emulator.get("/warehouse/dataset/download/xyz", token)
    assert cast.status_code == 500
    assert cast.json()["message"].startswith("CastError: ")


def test_distinct_needs_a_readable_project(emulator, token):
    lab = project(emulator, "Lab Private")
    subjects = emulator.get(
        "/warehouse/dataset/distinct",
        token,
        params={"distinct": "meta.subject", "find": {"project": lab["_id"], "removed": False}},
    ).json()
    lab_objects = of_project(emulator, "Lab Private")
    expected = {d["meta"]["subject"] for d in lab_objects if "subject" in d["meta"]}
    assert sorted(subjects) == sorted(expected)
    missing = emulator.get("/warehouse/dataset/distinct", token, params={"distinct": "tags"})
    assert missing.status_code == 500
    assert missing.json() == {"message": "please specify project query"}
    hidden = project(emulator, "Hidden Lab")["_id"]
    denied = emulator.get(
        "/warehouse/dataset/distinct",
        token,
        params={"distinct": "tags", "find": {"project": hidden}},
    )
    assert denied.json() == {"message": f"no read access to specified project:{hidden}"}


def test_inventory_groups_by_subject_datatype_and_tags(emulator, token):
    lab = project(emulator, "Lab Private")["_id"]
    rows = emulator.get(
        "/warehouse/dataset/inventory", token, params={"find": {"project": lab, "removed": False}}
    ).json()
    expected: dict = {}
    for d in of_project(emulator, "Lab Private"):
        if d["removed"]:
            continue
        key = (d["meta"].get("subject"), d["datatype"], tuple(d["datatype_tags"]))
        count, size = expected.get(key, (0, 0))
        expected[key] = (count + 1, size + d.get("size", 0))
    got = {
        (r["_id"].get("subject"), r["_id"]["datatype"], tuple(r["_id"]["datatype_tags"])): (
            r["count"],
            r["size"],
        )
        for r in rows
    }
    assert got == expected
    subjects = [r["_id"].get("subject") or "" for r in rows]
    assert subjects == sorted(subjects)


def test_inventory_by_release_needs_no_membership(emulator, token):
    pub = next(p for p in emulator.db("pubs") if p["name"].startswith("Hidden"))
    release = pub["releases"][0]["_id"]
    rows = emulator.get(
        "/warehouse/dataset/inventory", token, params={"find": {"publications": release}}
    ).json()
    members = [d for d in emulator.db("datasets") if release in d["publications"]]
    assert sum(r["count"] for r in rows) == len(members) > 0


def test_product_of_readable_dataset_and_null_without_one(emulator, token):
    products = {p["dataset_id"]: p["product"] for p in emulator.db("products")}
    lab = of_project(emulator, "Lab Private")
    with_product = next(d for d in lab if d["_id"] in products)
    without = next(d for d in lab if d["_id"] not in products)
    reply = emulator.get(f"/warehouse/dataset/product/{with_product['_id']}", token)
    assert reply.json() == {"product": products[with_product["_id"]]}
    assert "stats-mean_fa" in reply.json()["product"]
    none = emulator.get(f"/warehouse/dataset/product/{without['_id']}", token)
    assert none.json() == {"product": None}


def test_every_tractprofile_has_a_product(emulator):
    datatypes = emulator.db("datatypes")
    tractprofile = next(t["_id"] for t in datatypes if t["name"] == "neuro/tractprofile")
    products = {p["dataset_id"] for p in emulator.db("products")}
    objects = [d for d in emulator.db("datasets") if d["datatype"] == tractprofile]
    assert objects and all(d["_id"] in products for d in objects)


def test_every_live_open_diffusion_release_has_two_readable_tractprofile_products(emulator, token):
    """demo is no member of Open Diffusion; its products are readable because it is public."""
    datatypes = emulator.db("datatypes")
    tractprofile = next(t["_id"] for t in datatypes if t["name"] == "neuro/tractprofile")
    products = {p["dataset_id"]: p["product"] for p in emulator.db("products")}
    assert "1" not in project(emulator, "Open Diffusion")["members"]
    pub = next(
        p for p in emulator.db("pubs") if p["project"] == project(emulator, "Open Diffusion")["_id"]
    )
    for release in (r for r in pub["releases"] if not r["removed"]):
        published = [
            d
            for d in of_project(emulator, "Open Diffusion")
            if release["_id"] in d["publications"] and d["datatype"] == tractprofile
        ]
        assert len(published) >= 2
        for dataset in published:
            reply = emulator.get(f"/warehouse/dataset/product/{dataset['_id']}", token)
            assert reply.json() == {"product": products[dataset["_id"]]}


def test_product_of_a_published_dataset_of_an_unreadable_project_is_500(emulator, token):
    published = next(d for d in of_project(emulator, "Hidden Lab") if d["publications"])
    reply = emulator.get(f"/warehouse/dataset/product/{published['_id']}", token)
    assert reply.status_code == 500
    assert reply.json() == {"message": "can't access this dataset"}


def test_product_of_an_unknown_id_hangs(emulator, token):
    emulator.set(hang_seconds=0.3)
    with pytest.raises(requests.ConnectionError):
        emulator.get("/warehouse/dataset/product/" + "0" * 24, token)


def test_datatypes_need_no_token_and_carry_brainlife_files(emulator):
    body = emulator.get("/warehouse/datatype", params={"limit": 0}).json()
    files = {d["name"]: d["files"] for d in body["datatypes"]}
    assert body["count"] == len(files)
    assert [f["filename"] for f in files["neuro/dwi"]] == ["dwi.nii.gz", "dwi.bvals", "dwi.bvecs"]
    assert files["neuro/tractprofile"][0]["dirname"] == "profiles"
    assert files["neuro/anat/t1w"][0]["filename"] == "t1.nii.gz"


def test_pubs_and_release_datasets_need_no_token(emulator):
    body = emulator.get("/warehouse/pub").json()
    assert body["count"] == len(body["pubs"]) >= 2
    pub = next(p for p in body["pubs"] if p["name"].startswith("Hidden"))
    assert [r["name"] for r in pub["releases"]] == ["1", "2", "3"]
    assert [r["removed"] for r in pub["releases"]] == [False, False, True]
    release = pub["releases"][1]["_id"]
    datasets = emulator.get(f"/warehouse/pub/datasets/{release}", params={"limit": 0}).json()
    expected = [d["_id"] for d in emulator.db("datasets") if release in d["publications"]]
    assert sorted(d["_id"] for d in datasets["datasets"]) == sorted(expected)
    assert datasets["count"] == len(expected) > 0


def test_pub_deref_contacts_replaces_author_ids(emulator):
    body = emulator.get("/warehouse/pub", params={"deref_contacts": "true"}).json()
    assert body["pubs"][0]["authors"][0]["username"] == "alice"


def test_warehouse_answers_carry_nocache_and_no_etag(emulator, token):
    reply = emulator.get("/warehouse/project", token)
    assert reply.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, proxy-revalidate"
    assert reply.headers["Pragma"] == "no-cache"
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" not in reply.headers and "Last-Modified" not in reply.headers


def test_health(emulator):
    for service in ("auth", "warehouse", "amaretti"):
        assert emulator.get(f"/{service}/health").json()["status"] == "ok"


PARTICIPANT = "/warehouse/participant/"


def test_published_participants_are_readable_by_anyone(emulator):
    project_id = project(emulator, "BIDS Study")["_id"]
    body = emulator.get(PARTICIPANT + project_id).json()
    (stored,) = [p for p in emulator.db("participants") if p["project"] == project_id]
    assert body["subjects"] == stored["subjects"] and body["columns"] == stored["columns"]
    assert {row["subject"] for row in body["subjects"]} >= {"01", "02", "03"}


def test_unpublished_participants_need_a_member_or_admin(emulator, token):
    lab = project(emulator, "Lab Private")["_id"]
    assert emulator.get(PARTICIPANT + lab, token).json()["subjects"]
    refused = emulator.get(PARTICIPANT + lab)
    assert refused.status_code == 401 and "nor member" in refused.text
    guest = project(emulator, "Guest Study")["_id"]  # demo is a guest there: not enough
    assert emulator.get(PARTICIPANT + guest, token).status_code == 401


def test_participants_of_a_project_without_a_table_are_empty_and_unknown_is_404(emulator):
    alice = emulator.token("alice")
    hidden = project(emulator, "Hidden Lab")["_id"]
    body = emulator.get(PARTICIPANT + hidden, alice).json()
    assert (body["subjects"], body["columns"]) == ([], {})
    assert emulator.get(PARTICIPANT + "0123456789abcdef01234567").status_code == 404


# --- the S3 "files" API of `s3fs` objects ---------------------------------------------------


def on_s3(emulator, project: str) -> list[dict]:
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == project
        and d["storage"] in ("s3fs", "s3fs-embargo")
        and d["status"] == "stored"
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
    study = project(emulator, "BIDS Study")["_id"]
    objects = on_s3(emulator, study)
    assert objects
    for obj in objects:
        files = object_files(emulator, token, study, obj["_id"])
        assert files == downloaded_files(emulator, token, obj["_id"])
        assert obj["size"] == sum(files.values())


def test_subfolders_are_listed_as_folders_and_pages_chain(emulator, token):
    study = project(emulator, "BIDS Study")["_id"]
    (profiles,) = [o for o in on_s3(emulator, study) if o["desc"].startswith("neuro/tract")]
    assert listed(emulator, token, study, profiles["_id"]) == {"profiles": None}
    whole = listed(emulator, token, study, f"{profiles['_id']}/profiles/")
    assert len(whole) == 5
    assert listed(emulator, token, study, f"{profiles['_id']}/profiles", limit=2) == whole


def test_the_project_root_lists_its_objects_as_folders(emulator, token):
    study = project(emulator, "BIDS Study")["_id"]
    root = listed(emulator, token, study, "")
    assert root == {o["_id"]: None for o in on_s3(emulator, study)}


def test_a_project_not_on_s3_answers_400_and_a_missing_path_404(emulator, token):
    lab = project(emulator, "Lab Private")["_id"]
    assert emulator.get(f"{FILES}/{lab}", token).status_code == 400
    study = project(emulator, "BIDS Study")["_id"]
    assert emulator.get(f"{FILES}/{study}/{'0' * 24}", token).status_code == 404
    obj = on_s3(emulator, study)[0]
    assert emulator.get(f"{FILES}/{study}/{obj['_id']}/nothing", token).status_code == 404


def test_listing_follows_the_download_acl(scratch_emulator):
    """Once demo is no member: published objects still list (as they download), others 403."""
    emulator = scratch_emulator
    study = project(emulator, "BIDS Study")
    emulator.put_records("projects", [{**study, "members": []}])
    token = emulator.token("demo")
    objects = on_s3(emulator, study["_id"])
    published = next(o for o in objects if o["publications"])
    unpublished = next(o for o in objects if not o["publications"])
    for obj, status in ((published, 200), (unpublished, 403)):
        reply = emulator.get(f"{FILES}/{study['_id']}/{obj['_id']}", token)
        assert reply.status_code == status
        assert emulator.get(DOWNLOAD + obj["_id"], token).status_code == status
    assert emulator.get(f"{FILES}/{study['_id']}", token).status_code == 403
    assert emulator.get(f"{FILES}/{study['_id']}").status_code == 500  # no token


def test_a_replaced_archive_is_what_the_listing_and_size_then_say(scratch_emulator):
    emulator = scratch_emulator
    token = emulator.token()
    study = project(emulator, "BIDS Study")["_id"]
    obj = on_s3(emulator, study)[0]
    emulator.put_archive(obj["_id"], tar_bytes({"t1.nii.gz": b"12345", "extra": None}))
    assert object_files(emulator, token, study, obj["_id"]) == {"t1.nii.gz": 5}
    (record,) = [d for d in emulator.db("datasets") if d["_id"] == obj["_id"]]
    assert record["size"] == 5
