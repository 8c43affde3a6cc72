"""The Namespace layer (DESIGN §1, §1.1, §3) over the real emulator, real HTTP and real archives."""

from __future__ import annotations

import json
import logging
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
from emulator_fixtures import generate_data, start_emulator

from blfs.api import PAGE_SIZE, Client
from blfs.auth import TokenStore
from blfs.cache import Cache
from blfs.catalog import Catalog
from blfs.errors import AccessDenied, NotFound, RemoteError
from blfs.fetch import Downloads, ObjectFetcher, TaskFiles
from blfs.namespace import Namespace
from blfs.nodes import Attr, json_bytes, json_size

WAREHOUSE = "/api/warehouse"
AMARETTI = "/api/amaretti"


def make_namespace(url: str, tmp: Path, token: str | None = None, ttl: float = 60.0) -> Namespace:
    """A namespace as a mount builds it: real client, token file, on-disk cache, fetchers."""
    tokens = TokenStore(url, home=tmp / "home")
    if token is not None:
        tokens.save(token)
    client = Client(url, tokens)
    downloads = Downloads(Cache(tmp / "cache", 1 << 30))
    objects = ObjectFetcher(downloads, client.download_dataset)
    task_files = TaskFiles(downloads, client.download_task_file)
    return Namespace(Catalog(client, ttl=ttl), objects, task_files)


@pytest.fixture
def ns(emulator, tmp_path: Path) -> Namespace:
    return make_namespace(emulator.url, tmp_path, emulator.token())


def by_name(emulator, collection: str, name: str) -> dict:
    return next(r for r in emulator.db(collection) if r.get("name") == name)


def datatype_names(emulator) -> dict[str, str]:
    return {d["_id"]: d["name"] for d in emulator.db("datatypes")}


def expected_path(record: dict, datatypes: dict[str, str]) -> str:
    """Where DESIGN §1 puts an object, computed from the emulator's own record."""
    meta = record.get("meta") or {}
    parts = [f"sub-{meta['subject']}" if meta.get("subject") else "sub-nosubject"]
    if meta.get("session"):
        parts.append(f"ses-{meta['session']}")
    parts.append(datatypes[record["datatype"]].replace("/", "-"))
    tags = [t.replace(".", "-") for t in record.get("datatype_tags", []) + record.get("tags", [])]
    parts += [".".join(tags) or "untagged", record["_id"]]
    return "/".join(parts)


def shown_in_project(emulator, project_name: str) -> list[dict]:
    project_id = by_name(emulator, "projects", project_name)["_id"]
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == project_id and d["status"] == "stored" and not d.get("removed")
    ]


def object_dirs(
    ns: Namespace, root: str, skip: tuple[str, ...] = ("bids", "ACCESS.txt")
) -> set[str]:
    """Relative paths of every `<object-id>/` under `root` (a release: its `bids/` view and
    ACCESS.txt aside), found by listing only."""
    found: set[str] = set()

    def walk(path: str, rel: str) -> None:
        for name, attr in ns.readdir(path):
            if name in skip and not rel:
                continue
            assert attr.is_dir, f"{path}/{name} should be a directory"
            child = f"{rel}/{name}" if rel else name
            if len(name) == 24 and all(c in "0123456789abcdef" for c in name):
                found.add(child)
            else:
                walk(f"{path}/{name}", child)

    walk(root, "")
    return found


def requests(emulator, prefix: str = "") -> list[dict]:
    return [r for r in emulator.requests() if r["path"].startswith(prefix)]


def read_all(ns: Namespace, path: str) -> bytes:
    handle = ns.open(path)
    try:
        return handle.read(0, ns.getattr(path).size + 1)
    finally:
        handle.release()


PROJECT_SKIP = (
    "project.json",
    "processes",
    "bids",
    "object-states.json",
    "participants.tsv",
    "participants.json",
)


# --- the top levels -------------------------------------------------------------------------------


def test_root_has_the_four_trees(ns):
    assert ns.readdir("/") == [
        ("projects", Attr(True)),
        ("publications", Attr(True)),
        ("objects", Attr(True)),
        ("tasks", Attr(True)),
    ]
    assert ns.getattr("/").is_dir


def test_projects_are_the_readable_ones_not_removed(ns, emulator):
    names = {name for name, _ in ns.readdir("/projects")}
    assert {"Lab Private", "Open Diffusion", "Guest Study", "Agreement Study"} <= names
    assert not {"Hidden Lab", "Listed Lab", "Old Project", "Twin Study"} & names
    twins = sorted(p["_id"] for p in emulator.db("projects") if p["name"] == "Twin Study")
    assert {f"Twin Study ({t[:8]})" for t in twins} <= names


def test_project_json_is_the_record_and_its_size_is_exact(ns, emulator):
    record = by_name(emulator, "projects", "Lab Private")
    data = read_all(ns, "/projects/Lab Private/project.json")
    attr = ns.getattr("/projects/Lab Private/project.json")
    assert attr == Attr(False, len(data), attr.mtime)
    shown = json.loads(data)
    assert shown["_id"] == record["_id"] and shown["name"] == "Lab Private"
    assert ns.open("/projects/Lab Private/project.json").complete


def test_project_dir_mtime_is_its_create_date(ns, emulator):
    record = by_name(emulator, "projects", "Lab Private")
    attr = ns.getattr("/projects/Lab Private")
    assert attr.is_dir
    shown = json.loads(read_all(ns, "/projects/Lab Private/project.json"))
    from blfs.tree import timestamp

    assert attr.mtime == timestamp(shown["create_date"]) == timestamp(record["create_date"])


@pytest.mark.parametrize("project_name", ["Lab Private", "Open Diffusion", "Guest Study"])
def test_every_shown_object_appears_once_where_design_puts_it(ns, emulator, project_name):
    datatypes = datatype_names(emulator)
    expected = {expected_path(d, datatypes) for d in shown_in_project(emulator, project_name)}
    assert expected
    assert object_dirs(ns, f"/projects/{project_name}", PROJECT_SKIP) == expected


def test_hidden_objects_are_not_found(ns, emulator):
    """Removed, failed and storing objects of a project are not shown anywhere under it."""
    project_id = by_name(emulator, "projects", "Lab Private")["_id"]
    hidden = [
        d
        for d in emulator.db("datasets")
        if d["project"] == project_id and (d["status"] != "stored" or d.get("removed"))
    ]
    assert {d["status"] for d in hidden} >= {"failed", "storing"}
    assert any(d.get("removed") for d in hidden)
    shown = {p.rsplit("/", 1)[1] for p in object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)}
    assert not shown & {d["_id"] for d in hidden}


def test_special_names_nosubject_sessions_and_dotted_tags(ns, emulator):
    records = [d for p in ("Lab Private", "Open Diffusion") for d in shown_in_project(emulator, p)]
    paths = set()
    for p in ("Lab Private", "Open Diffusion"):
        paths |= object_dirs(ns, f"/projects/{p}", PROJECT_SKIP)
    assert any(p.startswith("sub-nosubject/") for p in paths)
    assert any("/ses-" in p for p in paths)
    dotted = [d for d in records if any("." in t for t in d.get("tags", []))]
    assert dotted, "the emulator has a tag containing '.'"
    tag = next(t for t in dotted[0]["tags"] if "." in t)
    assert any(tag.replace(".", "-") in p.split("/")[-2] for p in paths)
    assert any(p.split("/")[-2] == "untagged" for p in paths) or all(
        d.get("tags") or d.get("datatype_tags") for d in records
    )


def test_listing_the_tree_never_downloads(ns, emulator):
    emulator.clear_requests()
    object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
    assert not requests(emulator, f"{WAREHOUSE}/dataset/download")
    assert not requests(emulator, f"{WAREHOUSE}/dataset/product")


def test_unknown_names_are_not_found(ns):
    for path in (
        "/nothing",
        "/projects/No Such Project",
        "/projects/Hidden Lab",
        "/projects/Listed Lab",
        "/projects/Old Project",
        "/projects/Lab Private/sub-nobody",
        "/publications/No Such Publication",
        "/objects/not-an-id",
        "/objects/ffffffffffffffffffffffff",
        "/tasks/ffffffffffffffffffffffff",
    ):
        with pytest.raises(NotFound):
            ns.getattr(path)


# --- object directories ---------------------------------------------------------------------------


def an_object_path(ns, emulator, project_name="Lab Private", datatype="neuro/anat/t1w") -> str:
    datatypes = datatype_names(emulator)
    record = next(
        d for d in shown_in_project(emulator, project_name) if datatypes[d["datatype"]] == datatype
    )
    return f"/projects/{project_name}/{expected_path(record, datatypes)}"


def test_a_json_files_size_is_known_without_writing_it(emulator):
    odd = [{}, [], {"a": [], "b": {}}, [[[]]], {"é": "ü", "k": [1.5, None, True, {"x": ({},)}]}]
    for value in [*odd, "text", 3, None, *emulator.db("datasets"), *emulator.db("tasks")]:
        assert json_size(value) == len(json_bytes(value)), value


def test_info_json_is_the_record_without_download(ns, emulator):
    path = an_object_path(ns, emulator)
    object_id = path.rsplit("/", 1)[1]
    emulator.clear_requests()
    data = read_all(ns, f"{path}/_info.json")
    assert ns.getattr(f"{path}/_info.json").size == len(data)
    info = json.loads(data)
    record = next(d for d in emulator.db("datasets") if d["_id"] == object_id)
    for key in ("_id", "project", "datatype", "meta", "size", "status", "tags", "datatype_tags"):
        assert info[key] == record[key]
    assert not requests(emulator, f"{WAREHOUSE}/dataset/download")


def test_product_json_is_one_request_per_object_and_no_download(ns, emulator):
    datatypes = datatype_names(emulator)
    records = shown_in_project(emulator, "Lab Private")
    products = {p["dataset_id"]: p["product"] for p in emulator.db("products")}
    assert products.keys() & {r["_id"] for r in records}
    assert {r["_id"] for r in records} - products.keys()
    ns.readdir("/projects/Lab Private")
    emulator.clear_requests()
    for record in records:
        path = f"/projects/Lab Private/{expected_path(record, datatypes)}/_product.json"
        attr = ns.getattr(path)
        data = read_all(ns, path)
        assert attr.size == len(data)
        assert ns.getattr(path) == attr and read_all(ns, path) == data
        assert json.loads(data) == {"product": products.get(record["_id"])}
    paths = [r["path"] for r in emulator.requests()]
    assert sorted(paths) == sorted(f"{WAREHOUSE}/dataset/product/{r['_id']}" for r in records)


def test_listing_an_object_lists_its_archive_members(ns, emulator):
    path = an_object_path(ns, emulator)
    object_id = path.rsplit("/", 1)[1]
    listed = dict(ns.readdir(path))
    assert not requests(emulator, f"{WAREHOUSE}/dataset/product")
    (archive_path,) = (emulator.data / "archives").glob(f"{object_id}.*")
    with tarfile.open(archive_path) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    top = {name.split("/")[0] for name in files}
    assert set(listed) == top | {"_info.json", "_product.json"}
    name, data = next((n, d) for n, d in files.items() if "/" not in n)
    assert ns.getattr(f"{path}/{name}") == Attr(False, len(data), listed[name].mtime)
    assert read_all(ns, f"{path}/{name}") == data
    assert len(requests(emulator, f"{WAREHOUSE}/dataset/download/{object_id}")) == 1


# --- names, aliases, stability --------------------------------------------------------------------


def test_every_named_dir_is_also_reachable_by_its_id(ns, emulator):
    project = by_name(emulator, "projects", "Lab Private")
    assert ns.readdir(f"/projects/{project['_id']}") == ns.readdir("/projects/Lab Private")
    assert project["_id"] not in {n for n, _ in ns.readdir("/projects")}
    pub = next(p for p in emulator.db("pubs") if not p.get("removed"))
    release = next(r for r in pub["releases"] if not r.get("removed"))
    assert ns.readdir(f"/publications/{pub['_id']}/{release['_id']}") == ns.readdir(
        f"/publications/{pub['_id']}/{release['name']}"
    )
    _, tasks = lab_tasks(emulator)
    task = next(t for t in tasks if t["status"] == "finished")
    by_names = task_path(emulator, task)
    by_ids = f"/projects/{project['_id']}/processes/{task['instance_id']}/{task['_id']}"
    assert ns.readdir(by_ids) == ns.readdir(by_names)
    assert task["_id"] not in {n for n, _ in ns.readdir(by_names.rsplit("/", 1)[0])}


def project_names_around_a_copy(emulator, tmp_path: Path, name: str) -> tuple[set, set, dict]:
    """/projects listed before and after another project named `name` appears (id fedcba98…)."""
    ns = make_namespace(emulator.url, tmp_path, emulator.token(), ttl=0.2)
    before = {name for name, _ in ns.readdir("/projects")}
    original = by_name(emulator, "projects", name)
    emulator.put_records("projects", [{**original, "_id": "fedcba987654321000000001"}])
    time.sleep(0.3)
    after = {name for name, _ in ns.readdir("/projects")}
    assert ns.getattr(f"/projects/{original['_id']}").is_dir
    return before, after, original


def test_a_later_duplicate_project_does_not_rename_the_others(scratch_emulator, tmp_path):
    before, after, _ = project_names_around_a_copy(scratch_emulator, tmp_path, "Twin Study")
    assert after == before | {"Twin Study (fedcba98)"}


def test_a_duplicate_of_a_unique_name_suffixes_only_the_two(scratch_emulator, tmp_path):
    before, after, lab = project_names_around_a_copy(scratch_emulator, tmp_path, "Open Diffusion")
    assert after - before == {f"Open Diffusion ({lab['_id'][:8]})", "Open Diffusion (fedcba98)"}
    assert before - after == {"Open Diffusion"}


def test_an_object_keeps_its_path_when_others_are_added(scratch_emulator, tmp_path):
    emulator = scratch_emulator
    ns = make_namespace(emulator.url, tmp_path, emulator.token(), ttl=0.2)
    before = object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
    template = shown_in_project(emulator, "Lab Private")[0]
    new = {
        **template,
        "_id": "fedcba987654321000000003",
        "tags": ["brand.new"],
        "meta": {**template.get("meta", {}), "subject": "zz-new"},
    }
    emulator.put_records("datasets", [new])
    time.sleep(0.3)
    after = object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
    assert after == before | {expected_path(new, datatype_names(emulator))}


# --- request counts -------------------------------------------------------------------------------


def test_a_listing_is_fetched_once_however_many_threads_ask(ns, emulator):
    emulator.clear_requests()
    results: list[list] = []
    barrier = threading.Barrier(32)

    def list_project() -> None:
        barrier.wait()
        results.append(ns.readdir("/projects/Lab Private"))

    threads = [threading.Thread(target=list_project) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 32 and all(r == results[0] for r in results)
    assert len(requests(emulator, f"{WAREHOUSE}/project")) == 1
    assert len(requests(emulator, f"{WAREHOUSE}/datatype")) == 1
    walks = requests(emulator, f"{WAREHOUSE}/dataset")
    assert walks and all("/dataset/" not in r["path"] for r in walks)
    first_page = [r for r in walks if "skip" not in r["query"] or r["query"]["skip"] in ("0", 0)]
    assert len(first_page) == 1


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    """A second data dir whose Lab Private holds 10,000 objects (1,000 subjects × 10)."""
    data = tmp_path_factory.mktemp("big") / "data"
    return generate_data(data, subjects=1000, objects_per_subject=10, object_size=1024)


@pytest.mark.timeout(300)
def test_ten_thousand_objects_cost_pages_not_objects(big_data, tmp_path):
    with start_emulator(big_data) as server:
        ns = make_namespace(server.url, tmp_path, server.token())
        shown = shown_in_project(server, "Lab Private")
        assert len(shown) >= 9000
        server.clear_requests()
        started = time.monotonic()
        paths = object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
        cold = time.monotonic() - started
        assert len(paths) == len(shown)
        walk = requests(server, f"{WAREHOUSE}/dataset")
        pages = len(walk)
        assert pages <= -(-len(shown) // PAGE_SIZE) + 1, pages
        assert len(server.requests()) <= pages + 3  # + projects, datatypes

        server.clear_requests()
        for path in paths:
            assert ns.getattr(f"/projects/Lab Private/{path}").is_dir
        assert ns.getattr("/projects/Lab Private").is_dir
        assert server.requests() == []

        started = time.monotonic()
        assert object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP) == paths
        warm = time.monotonic() - started
        assert server.requests() == []
        print(f"10,000 objects: cold listing {cold:.2f} s in {pages} pages, warm {warm:.3f} s")

        some = sorted(paths)[:20]
        for path in some:
            read_all(ns, f"/projects/Lab Private/{path}/_product.json")
            read_all(ns, f"/projects/Lab Private/{path}/_product.json")
        assert len(requests(server, f"{WAREHOUSE}/dataset/product")) == len(some)
        assert not requests(server, f"{WAREHOUSE}/dataset/download")


def test_relisting_within_the_ttl_costs_nothing(ns, emulator):
    first = object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
    ns.readdir("/publications")
    emulator.clear_requests()
    assert object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP) == first
    ns.readdir("/projects")
    ns.readdir("/publications")
    assert emulator.requests() == []


# --- publications ---------------------------------------------------------------------------------


def release_objects(emulator, release_id: str) -> list[dict]:
    return [
        d
        for d in emulator.db("datasets")
        if release_id in (d.get("publications") or []) and d["status"] == "stored"
    ]


def test_publications_and_their_releases(ns, emulator):
    pubs = [p for p in emulator.db("pubs") if not p.get("removed")]
    names = {name for name, _ in ns.readdir("/publications")}
    assert names == {p["name"] for p in pubs}
    for pub in pubs:
        listed = {name for name, _ in ns.readdir(f"/publications/{pub['name']}")}
        releases = {r["name"] for r in pub["releases"] if not r.get("removed")}
        assert listed == releases | {"publication.json"}
        data = json.loads(read_all(ns, f"/publications/{pub['name']}/publication.json"))
        assert data["_id"] == pub["_id"]
    assert any(r.get("removed") for p in pubs for r in p["releases"])


def test_a_release_shows_its_objects(ns, emulator):
    datatypes = datatype_names(emulator)
    for pub in (p for p in emulator.db("pubs") if not p.get("removed")):
        for release in (r for r in pub["releases"] if not r.get("removed")):
            objects = release_objects(emulator, release["_id"])
            expected = {expected_path(d, datatypes) for d in objects}
            assert object_dirs(ns, f"/publications/{pub['name']}/{release['name']}") == expected


def test_a_published_object_removed_from_its_project_stays_in_the_release(
    scratch_emulator, tmp_path
):
    emulator = scratch_emulator
    pub = next(p for p in emulator.db("pubs") if not p.get("removed"))
    release = next(r for r in pub["releases"] if not r.get("removed"))
    record = release_objects(emulator, release["_id"])[0]
    emulator.put_records("datasets", [{**record, "removed": True}])
    ns = make_namespace(emulator.url, tmp_path, emulator.token())
    path = expected_path(record, datatype_names(emulator))
    assert path in object_dirs(ns, f"/publications/{pub['name']}/{release['name']}")
    project = next(p for p in emulator.db("projects") if p["_id"] == record["project"])
    if project["name"] in {name for name, _ in ns.readdir("/projects")}:
        with pytest.raises(NotFound):
            ns.getattr(f"/projects/{project['name']}/{path}")


def test_a_non_member_lists_a_release_of_hidden_lab(ns, emulator):
    hidden = by_name(emulator, "projects", "Hidden Lab")
    assert "1" not in {str(s) for s in hidden.get("members", []) + hidden.get("admins", [])}
    pub = next(p for p in emulator.db("pubs") if p.get("project") == hidden["_id"])
    release = next(r for r in pub["releases"] if not r.get("removed"))
    paths = object_dirs(ns, f"/publications/{pub['name']}/{release['name']}")
    assert paths
    info = json.loads(
        read_all(ns, f"/publications/{pub['name']}/{release['name']}/{min(paths)}/_info.json")
    )
    assert info["project"] == hidden["_id"]


def test_guests_browse_publications_without_a_token(emulator, tmp_path):
    ns = make_namespace(emulator.url, tmp_path, token=None)
    pub = next(p for p in emulator.db("pubs") if not p.get("removed"))
    release = next(r for r in pub["releases"] if not r.get("removed"))
    root = f"/publications/{pub['name']}/{release['name']}"
    paths = object_dirs(ns, root)
    assert paths == {
        expected_path(d, datatype_names(emulator))
        for d in release_objects(emulator, release["_id"])
    }
    assert json.loads(read_all(ns, f"{root}/{min(paths)}/_info.json"))["_id"] == min(paths)[-24:]


def test_guests_see_public_projects_but_listing_objects_needs_login(emulator, tmp_path):
    ns = make_namespace(emulator.url, tmp_path, token=None)
    names = {name for name, _ in ns.readdir("/projects")}
    assert "Open Diffusion" in names and "Lab Private" not in names
    with pytest.raises(AccessDenied):
        ns.readdir("/projects/Open Diffusion")


# --- processes and tasks --------------------------------------------------------------------------


def lab_tasks(emulator) -> tuple[dict, list[dict]]:
    group = by_name(emulator, "projects", "Lab Private")["group_id"]
    instances = [
        i
        for i in emulator.db("instances")
        if i.get("group_id") == group and i.get("status") != "removed"
    ]
    tasks = [t for t in emulator.db("tasks") if t["instance_id"] in {i["_id"] for i in instances}]
    return instances, tasks


def task_path(emulator, task: dict) -> str:
    """Where a task of Lab Private is shown: process name / task name (both unique here)."""
    instance = next(i for i in emulator.db("instances") if i["_id"] == task["instance_id"])
    return f"/projects/Lab Private/processes/{instance['name']}/{task['name']}"


def disk_tree(root: Path) -> dict[str, tuple[bool, int, float]]:
    """A task dir as `/task/ls` should show it: symlinks followed (their own mtime), broken ones
    left out, directories of size 0."""
    tree = {}
    for top, dirs, files in os.walk(root, followlinks=True):
        for name in dirs + files:
            path = Path(top, name)
            if not path.exists():
                continue
            rel = str(path.relative_to(root))
            is_dir = path.is_dir()
            tree[rel] = (is_dir, 0 if is_dir else path.stat().st_size, path.lstat().st_mtime)
    return tree


def list_tree(ns: Namespace, root: str) -> dict[str, Attr]:
    """Every entry under `root`, by readdir alone."""
    tree = {}
    for name, attr in ns.readdir(root):
        tree[name] = attr
        if attr.is_dir:
            tree.update({f"{name}/{k}": a for k, a in list_tree(ns, f"{root}/{name}").items()})
    return tree


def ns_tree(ns: Namespace, root: str) -> dict[str, tuple[bool, int, float]]:
    tree = {}

    def walk(path: str, rel: str) -> None:
        for name, attr in ns.readdir(path):
            child = f"{rel}/{name}" if rel else name
            stat = ns.getattr(f"{path}/{name}")
            assert stat.is_dir == attr.is_dir and stat.mtime == attr.mtime
            tree[child] = (stat.is_dir, stat.size, stat.mtime)
            if attr.is_dir:
                walk(f"{path}/{name}", child)

    walk(root, "")
    return tree


def test_processes_show_the_groups_instances_and_tasks_not_removed(ns, emulator):
    instances, tasks = lab_tasks(emulator)
    listed = ns.readdir("/projects/Lab Private/processes")
    assert len(listed) == len(instances)
    shown = set()
    for instance, _ in listed:
        shown |= {n for n, _ in ns.readdir(f"/projects/Lab Private/processes/{instance}")}
    assert len(shown - {"_instance.json"}) == sum(1 for t in tasks if t["status"] != "removed")
    assert {t["status"] for t in tasks} >= {"finished", "running", "removed"}


def test_a_project_without_group_has_empty_processes(scratch_emulator, tmp_path):
    emulator = scratch_emulator
    project = {**by_name(emulator, "projects", "Open Diffusion"), "name": "No Group"}
    project["_id"] = "fedcba987654321000000004"
    del project["group_id"]
    emulator.put_records("projects", [project])
    ns = make_namespace(emulator.url, tmp_path, emulator.token())
    assert ns.readdir("/projects/No Group/processes") == []
    assert not requests(emulator, f"{AMARETTI}/instance")


def test_task_tree_sizes_and_mtimes_come_from_task_ls(ns, emulator):
    _, tasks = lab_tasks(emulator)
    task = next(t for t in tasks if t["status"] == "finished")
    root = emulator.data / "tasks" / task["instance_id"] / task["_id"]
    disk = disk_tree(root)
    links = {k for k in disk if (root / k).is_symlink() and (root / k).is_file()}
    assert links
    path = task_path(emulator, task)
    emulator.clear_requests()
    listed = list_tree(ns, path)
    assert set(listed) - {"_task.json"} == set(disk)
    assert not requests(emulator, f"{AMARETTI}/task/download")
    shown = ns_tree(ns, path)
    del shown["_task.json"]
    assert shown == {k: (d, s, pytest.approx(m, abs=1)) for k, (d, s, m) in disk.items()}
    # A symlink to a file is listed with the link's own size (/task/ls): its stat asks a download.
    downloads = requests(emulator, f"{AMARETTI}/task/download/{task['_id']}/")
    assert sorted(r["path"].split(task["_id"] + "/", 1)[1] for r in downloads) == sorted(links)
    by_id = ns_tree(ns, f"/tasks/{task['_id']}")
    del by_id["_task.json"]
    assert by_id == shown


def test_task_files_read_their_bytes(ns, emulator):
    _, tasks = lab_tasks(emulator)
    task = next(t for t in tasks if t["status"] == "finished")
    root = emulator.data / "tasks" / task["instance_id"] / task["_id"]
    rel, disk = next((str(p.relative_to(root)), p) for p in sorted(root.rglob("*")) if p.is_file())
    assert read_all(ns, f"/tasks/{task['_id']}/{rel}") == disk.read_bytes()


def test_a_running_tasks_new_file_appears_after_the_ttl(scratch_emulator, tmp_path):
    emulator = scratch_emulator
    ns = make_namespace(emulator.url, tmp_path, emulator.token(), ttl=0.3)
    _, tasks = lab_tasks(emulator)
    task = next(t for t in tasks if t["status"] == "running")
    path = f"/tasks/{task['_id']}"
    before = {n for n, _ in ns.readdir(path)}
    new = emulator.data / "tasks" / task["instance_id"] / task["_id"] / "new-output.txt"
    new.write_bytes(b"fresh\n")
    mtime = new.stat().st_mtime
    time.sleep(0.4)
    after = dict(ns.readdir(path))
    assert set(after) == before | {"new-output.txt"}
    assert after["new-output.txt"] == Attr(False, 6, pytest.approx(mtime, abs=1))


def test_removed_tasks_are_hidden_even_by_id(ns, emulator):
    _, tasks = lab_tasks(emulator)
    removed = next(t for t in tasks if t["status"] == "removed")
    with pytest.raises(NotFound):
        ns.getattr(f"/tasks/{removed['_id']}")


# --- lookups by id --------------------------------------------------------------------------------


def test_objects_and_tasks_by_id(ns, emulator):
    assert ns.readdir("/objects") == []
    assert ns.readdir("/tasks") == []
    path = an_object_path(ns, emulator)
    object_id = path.rsplit("/", 1)[1]
    assert ns.getattr(f"/objects/{object_id}").is_dir
    assert json.loads(read_all(ns, f"/objects/{object_id}/_info.json"))["_id"] == object_id
    failed = next(d for d in emulator.db("datasets") if d["status"] == "failed")
    with pytest.raises(NotFound):
        ns.getattr(f"/objects/{failed['_id']}")


def test_an_id_lookup_needs_no_request_when_malformed(ns, emulator):
    emulator.clear_requests()
    for path in ("/objects/xyz", "/tasks/123", "/objects/" + "A" * 24):
        with pytest.raises(NotFound):
            ns.getattr(path)
    assert emulator.requests() == []


# --- offline --------------------------------------------------------------------------------------


def test_offline_the_last_known_listings_are_served_with_one_warning(emulator, tmp_path, caplog):
    ns = make_namespace(emulator.url, tmp_path, emulator.token(), ttl=0.2)
    projects = ns.readdir("/projects")
    tree = object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP)
    pubs = ns.readdir("/publications")
    emulator.set(fail=[{"path": ".*", "status": 500, "times": 10**6}])
    time.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="blfs"):
        assert ns.readdir("/projects") == projects
        assert object_dirs(ns, "/projects/Lab Private", PROJECT_SKIP) == tree
        assert ns.readdir("/publications") == pubs
        time.sleep(0.3)
        assert ns.readdir("/projects") == projects
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    with pytest.raises(RemoteError):
        ns.readdir("/projects/Open Diffusion")


def test_offline_with_the_server_gone(emulator_data, tmp_path):
    with start_emulator(emulator_data) as server:
        ns = make_namespace(server.url, tmp_path, server.token(), ttl=0.1)
        projects = ns.readdir("/projects")
        labs = ns.readdir("/projects/Lab Private")
    time.sleep(0.2)
    assert ns.readdir("/projects") == projects
    assert ns.readdir("/projects/Lab Private") == labs
    with pytest.raises(RemoteError):
        ns.readdir("/publications")


def test_a_bids_listing_may_be_kept_once_every_data_file_in_it_is_known(ns):
    anat = "/projects/Open Diffusion/bids/sub-0001/anat"
    assert ns.listing(anat)[1] is False  # an object not fetched yet may still lack a mapped file
    assert any(not attr.exact for _, attr in ns.listing(anat)[0])  # its size is not known yet
    for name, _ in ns.readdir(anat):
        handle = ns.open(f"{anat}/{name}")
        handle.read(0, 1 << 16)
        handle.release()
    deadline = time.monotonic() + 60
    while not ns.listing(anat)[1]:  # the commit comes after the reads, off their path
        assert time.monotonic() < deadline, "the listing never became stable"
        time.sleep(0.1)
    for name, attr in ns.listing(anat)[0]:  # every size known now, and handed with the listing
        assert attr.exact and attr.size == len(read_all(ns, f"{anat}/{name}")), name


def test_a_known_listing_past_its_ttl_is_served_while_a_slow_refresh_goes_on(emulator, tmp_path):
    ns = make_namespace(emulator.url, tmp_path, emulator.token(), ttl=0.2)
    known = ns.readdir("/projects")
    time.sleep(0.3)
    emulator.set(latency=5)
    started = time.monotonic()
    assert ns.readdir("/projects") == known
    assert time.monotonic() - started < 2.5  # waited 1 s for the refresh, not 5


def test_a_listing_names_the_answers_it_shows(ns, emulator):
    lab = by_name(emulator, "projects", "Lab Private")
    project = f"/projects/{lab['name']}"
    subject = next(name for name, _ in ns.readdir(project) if name.startswith("sub-"))
    assert ns.listing("/projects")[2] == {"projects"}
    assert ("project", lab["_id"]) in ns.listing(project)[2]
    assert ns.listing(f"{project}/{subject}")[2] == {("project", lab["_id"])}
    view = ns.listing(f"{project}/bids")[2]
    assert ("project_bids", lab["_id"]) in view and ("project", lab["_id"]) not in view
