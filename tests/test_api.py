"""The REST client over the real emulator and real HTTP: queries, paging, downloads, error mapping,
retries and timeouts (DESIGN §4, §7; API §0–§5)."""

from __future__ import annotations

import errno
import logging
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from blfs.api import Client, _listing_page, printable
from blfs.auth import TokenStore
from blfs.emulator.control import in_flight_peak
from blfs.errors import (
    AccessDenied,
    BadRequest,
    BlfsError,
    NotFound,
    RemoteError,
    RemoteTimeout,
)

WAREHOUSE = "/api/warehouse"
UNKNOWN_ID = "0123456789abcdef01234567"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


@pytest.fixture
def client(emulator, token: str, tmp_path: Path) -> Client:
    return make_client(emulator, token, tmp_path)


def make_client(emulator, token: str | None, tmp_path: Path, **options: Any) -> Client:
    tokens = TokenStore(emulator.url, home=tmp_path / "home")
    if token:
        tokens.save(token)
    return Client(emulator.url, tokens, **options)


def project_id(emulator, name: str) -> str:
    return next(p["_id"] for p in emulator.db("projects") if p["name"] == name)


def objects_of(emulator, project: str, **where: Any) -> list[dict]:
    pid = project_id(emulator, project)
    return [
        d
        for d in emulator.db("datasets")
        if d["project"] == pid and all(d.get(k) == v for k, v in where.items())
    ]


def published_hidden(emulator) -> dict:
    return next(d for d in objects_of(emulator, "Hidden Lab", status="stored") if d["publications"])


def unpublished_hidden(emulator) -> dict:
    return next(
        d for d in objects_of(emulator, "Hidden Lab", status="stored") if not d["publications"]
    )


def requests_to(emulator, fragment: str, at_least: int = 0) -> list[dict]:
    """Logged requests whose path contains `fragment`. The server logs a request once its
    last byte is sent, which can be after the client has it: wait (bounded) for `at_least`."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in emulator.requests() if fragment in r["path"]]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def read_all(download, chunk: int = 64 * 1024) -> bytes:
    parts = []
    while data := download.read(chunk):
        parts.append(data)
    return b"".join(parts)


# --- metadata queries ------------------------------------------------------------------------


def test_projects_are_readable_or_listed_and_not_removed(client):
    names = {p["name"] for p in client.projects()}
    assert {"Lab Private", "Open Diffusion", "Guest Study", "Listed Lab"} <= names
    assert "Old Project" not in names and "Hidden Lab" not in names


def test_without_a_token_projects_are_the_public_ones(emulator, tmp_path):
    names = {p["name"] for p in make_client(emulator, None, tmp_path).projects()}
    assert names == {"Open Diffusion", "Twin Study"}


def test_datatypes_are_keyed_by_id(client, emulator):
    datatypes = client.datatypes()
    assert set(datatypes) == {d["_id"] for d in emulator.db("datatypes")}
    assert "neuro/anat/t1w" in {d["name"] for d in datatypes.values()}


def test_datasets_page_by_count_across_short_pages(emulator, token, tmp_path):
    """Rows the user may not read are dropped after the query, so a page can be short, or
    empty, before the last: the client must go on until `count`."""
    find = {"removed": False}
    readable = {d["_id"] for d in make_client(emulator, token, tmp_path).datasets(find)}
    matching = sorted(d["_id"] for d in emulator.db("datasets") if not d["removed"])
    pages = [matching[i : i + 3] for i in range(0, len(matching), 3)]
    assert any(not set(page) <= readable for page in pages[:-1]), "no short page to prove it"

    small = make_client(emulator, token, tmp_path, page_size=3)
    emulator.clear_requests()
    assert [d["_id"] for d in small.datasets(find)] == sorted(readable)
    listing = requests_to(emulator, f"{WAREHOUSE}/dataset", len(pages))
    assert len(listing) == len(pages)
    assert [int(r["query"]["skip"]) for r in listing] == list(range(0, len(matching), 3))


def test_a_listings_further_pages_are_asked_at_once_and_handed_out_in_order(
    emulator, token, tmp_path
):
    find = {"removed": False}
    one_by_one = [d["_id"] for d in make_client(emulator, token, tmp_path).datasets(find)]
    parallel = make_client(emulator, token, tmp_path, page_size=3, parallel=4)
    pages = -(-sum(not d["removed"] for d in emulator.db("datasets")) // 3)
    assert pages > 8
    emulator.set(latency=0.2)
    emulator.clear_requests()
    assert [d["_id"] for d in parallel.datasets(find)] == one_by_one
    listing = requests_to(emulator, f"{WAREHOUSE}/dataset", pages)
    assert len(listing) == pages
    assert listing[0]["query"]["skip"] == "0"
    # The first alone (it gives the total), then the others four at a time.
    assert all(r["t"] >= listing[0]["end"] for r in listing[1:])
    assert in_flight_peak(listing) == 4


def test_a_listing_of_an_expected_size_asks_for_all_its_pages_at_once(emulator, token, tmp_path):
    lab = project_id(emulator, "Lab Private")
    find = {"project": lab, "removed": False}
    one_by_one = [d["_id"] for d in make_client(emulator, token, tmp_path).datasets(find)]
    pages = -(-len(one_by_one) // 3)
    assert pages >= 4
    parallel = make_client(emulator, token, tmp_path, page_size=3, parallel=pages)
    emulator.set(latency=0.2)
    emulator.clear_requests()
    # The expected size may be stale: one more row than expected still comes, on its own page.
    listed = parallel.datasets(find, expected=len(one_by_one) - 1)
    assert [d["_id"] for d in listed] == one_by_one
    listing = requests_to(emulator, f"{WAREHOUSE}/dataset", pages)
    first = next(r for r in listing if r["query"]["skip"] == "0")
    assert any(r["t"] < first["end"] for r in listing if r is not first)  # not waiting for it
    assert in_flight_peak(listing) >= pages - 1
    assert sorted(int(r["query"]["skip"]) for r in listing) == list(range(0, pages * 3, 3))


def test_listed_lab_pages_are_all_empty_yet_all_asked(emulator, token, tmp_path):
    listed = project_id(emulator, "Listed Lab")
    count = len(objects_of(emulator, "Listed Lab"))
    client = make_client(emulator, token, tmp_path, page_size=1)
    emulator.clear_requests()
    assert list(client.datasets({"project": listed})) == []
    assert len(requests_to(emulator, f"{WAREHOUSE}/dataset", count)) == count


def test_a_select_always_carries_project_and_publications(client, emulator):
    lab = project_id(emulator, "Lab Private")
    emulator.clear_requests()
    records = list(client.datasets({"project": lab, "removed": False}, select="meta"))
    assert records and all("project" in r and "meta" in r for r in records)
    (query,) = [r["query"] for r in requests_to(emulator, f"{WAREHOUSE}/dataset", 1)]
    assert query["select"].split() == ["meta", "project", "publications"]


def test_dataset_by_id_and_its_absence(client, emulator):
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    assert client.dataset(record["_id"])["meta"] == record["meta"]
    with pytest.raises(NotFound):
        client.dataset(unpublished_hidden(emulator)["_id"])
    with pytest.raises(NotFound):
        client.dataset(UNKNOWN_ID)
    with pytest.raises(NotFound):
        client.dataset("sub-0001")
    assert requests_to(emulator, "sub-0001") == []


def test_product_is_the_value_or_none(client, emulator):
    products = {p["dataset_id"]: p["product"] for p in emulator.db("products")}
    lab = objects_of(emulator, "Lab Private", status="stored")
    with_product = next(d for d in lab if d["_id"] in products)
    without = next(d for d in lab if d["_id"] not in products)
    assert client.product(with_product["_id"]) == products[with_product["_id"]]
    assert client.product(without["_id"]) is None


def test_publications_and_releases_need_no_token(emulator, tmp_path):
    client = make_client(emulator, None, tmp_path)
    emulator.clear_requests()
    pubs = client.pubs()
    assert {p["name"] for p in pubs} == {p["name"] for p in emulator.db("pubs") if not p["removed"]}
    release = pubs[0]["releases"][0]
    expected = sorted(
        d["_id"] for d in emulator.db("datasets") if release["_id"] in d["publications"]
    )
    assert expected
    assert [d["_id"] for d in client.release_datasets(release["_id"])] == expected
    stored = client.release_datasets(release["_id"], {"status": "stored"}, select="meta")
    assert all(set(d) <= {"_id", "meta"} for d in stored)


def test_processes_and_tasks_of_a_project(client, emulator):
    lab = next(p for p in emulator.db("projects") if p["name"] == "Lab Private")
    instances = client.instances(lab["group_id"])
    assert [i["status"] for i in instances] == ["finished"]
    tasks = client.tasks(instances[0]["_id"])
    assert sorted(t["status"] for t in tasks) == ["failed", "finished", "running"]
    finished = next(t for t in tasks if t["status"] == "finished")
    assert client.task(finished["_id"])["name"] == finished["name"]


def test_amaretti_pages_until_a_short_page(emulator, token, tmp_path):
    lab = next(p for p in emulator.db("projects") if p["name"] == "Lab Private")
    instance = next(i for i in emulator.db("instances") if i["status"] == "finished")
    client = make_client(emulator, token, tmp_path, page_size=1)
    emulator.clear_requests()
    assert len(client.tasks(instance["_id"])) == 3
    assert len(requests_to(emulator, "/api/amaretti/task", 4)) == 4
    assert len(client.instances(lab["group_id"])) == 1


def test_task_needs_no_token_and_unknown_ids_are_not_found(emulator, tmp_path):
    client = make_client(emulator, None, tmp_path)
    task = next(t for t in emulator.db("tasks") if t["status"] == "finished")
    assert client.task(task["_id"])["_id"] == task["_id"]
    with pytest.raises(NotFound):
        client.task(UNKNOWN_ID)


def test_task_ls_and_file_download(client, emulator):
    task = next(t for t in emulator.db("tasks") if t["status"] == "finished")
    root = emulator.data / "tasks" / task["instance_id"] / task["_id"]
    top = {e["filename"]: e for e in client.task_ls(task["_id"])}
    assert {"output", "config.json", ".hidden"} <= set(top)
    assert top["output"]["directory"] is True
    nested = {e["filename"]: e for e in client.task_ls(task["_id"], "output/deep/nested/dir")}
    assert (
        nested["result.json"]["attrs"]["size"]
        == (root / "output/deep/nested/dir/result.json").stat().st_size
    )
    with client.download_task_file(task["_id"], "output/stats.csv") as download:
        data = read_all(download, 100)
    assert data == (root / "output/stats.csv").read_bytes()  # identity: not gzipped
    assert download.length == len(data) == download.bytes_read


# --- downloads ------------------------------------------------------------------------------


def test_download_is_the_archive_byte_for_byte(client, emulator):
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    (archive,) = (emulator.data / "archives").glob(f"{record['_id']}.*")
    with client.download_dataset(record["_id"]) as download:
        assert download.length == record["size"] == archive.stat().st_size
        data = read_all(download)
        assert download.read(10) == b""
    assert data == archive.read_bytes()
    assert download.bytes_read == download.length
    assert "at=" not in download.url and record["_id"] in download.url


def test_published_objects_of_unreadable_projects_download(client, emulator):
    record = published_hidden(emulator)
    with client.download_dataset(record["_id"]) as download:
        assert len(read_all(download)) == record["size"]


def test_download_errors_map_to_our_types(client, emulator):
    with pytest.raises(AccessDenied, match="don't have access"):
        client.download_dataset(unpublished_hidden(emulator)["_id"])
    with pytest.raises(AccessDenied, match="agree"):
        client.download_dataset(objects_of(emulator, "Agreement Study")[0]["_id"])
    with pytest.raises(NotFound):
        client.download_dataset(UNKNOWN_ID)
    storing = objects_of(emulator, "Lab Private", status="storing")[0]
    with pytest.raises(RemoteError, match="not stored"):
        client.download_dataset(storing["_id"])
    assert len(requests_to(emulator, storing["_id"], 1)) == 1  # permanent: not retried


def test_a_truncated_download_never_looks_complete(client, emulator):
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    emulator.set(truncate=[{"path": "/dataset/download/", "at": 5000, "times": 1}])
    download = client.download_dataset(record["_id"])
    try:
        with pytest.raises(RemoteError, match="broke off"):
            read_all(download)
        assert download.bytes_read == 5000 < download.length
    finally:
        download.close()


def test_a_stalled_download_times_out_between_chunks(emulator, token, tmp_path):
    client = make_client(emulator, token, tmp_path, timeout=0.5)
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    emulator.set(stall=[{"path": "/dataset/download/", "after": 4096, "seconds": 5, "times": 1}])
    started = time.monotonic()
    with client.download_dataset(record["_id"]) as download, pytest.raises(RemoteTimeout):
        read_all(download, 1024)
    assert download.bytes_read == 4096
    assert time.monotonic() - started < 3


def test_a_slow_but_steady_download_is_not_a_timeout(emulator, token, tmp_path):
    client = make_client(emulator, token, tmp_path, timeout=0.5)
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    emulator.set(bandwidth=record["size"] / 1.5)  # takes longer than the read timeout in total
    with client.download_dataset(record["_id"]) as download:
        assert len(read_all(download)) == record["size"]


def test_only_the_opening_of_a_download_is_retried(client, emulator):
    # Not the object other tests download: the server logs a request after its last byte.
    record = objects_of(emulator, "Lab Private", status="stored")[1]
    emulator.set(fail=[{"path": "/dataset/download/", "status": 502, "times": 2}])
    with client.download_dataset(record["_id"]) as download:
        assert len(read_all(download)) == record["size"]
    assert len(requests_to(emulator, f"/dataset/download/{record['_id']}", 3)) == 3


# --- errors, retries, timeouts ----------------------------------------------------------------


def test_one_server_failure_is_retried_away(client, emulator):
    emulator.set(fail=[{"path": "/project$", "status": 500, "times": 1}])
    assert client.projects()
    assert len(requests_to(emulator, "/project", 2)) == 2


def test_lasting_failure_is_a_remote_error_naming_url_and_message(emulator, token, tmp_path):
    client = make_client(emulator, token, tmp_path, retries=2)
    emulator.set(fail=[{"path": "/datatype$", "status": 503, "message": "maintenance"}])
    with pytest.raises(RemoteError) as caught:
        client.datatypes()
    assert not isinstance(caught.value, RemoteTimeout)
    assert "/api/warehouse/datatype" in str(caught.value) and "maintenance" in str(caught.value)
    assert len(requests_to(emulator, "/datatype", 3)) == 3


def test_a_server_found_down_gets_one_attempt_per_call_until_it_answers(emulator, token, tmp_path):
    client = make_client(emulator, token, tmp_path, retries=2)
    emulator.set(fail=[{"path": "/pub$", "status": 502}])
    for _ in range(3):
        with pytest.raises(RemoteError):
            client.pubs()
    assert len(requests_to(emulator, "/pub", 5)) == 3 + 1 + 1
    emulator.reset()
    assert client.pubs()
    emulator.set(fail=[{"path": "/pub$", "status": 502, "times": 2}])
    assert client.pubs()  # up again: retries are back


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (500, "UnauthorizedError: jwt expired", AccessDenied),
        (500, "no read access to specified project:abc", AccessDenied),
        (500, "can't access this dataset", AccessDenied),
        (500, "don't have access to specified task", AccessDenied),
        (403, "forbidden", AccessDenied),
        (404, "couldn't find it", NotFound),
        (500, "no such task id", NotFound),
        (500, "no such task", NotFound),
        (500, f"no resource currently available to download this task:{UNKNOWN_ID}", RemoteError),
        (500, 'CastError: Cast to ObjectId failed for value "x"', NotFound),
        (400, "this project's files are not stored on S3", BadRequest),
    ],
)
def test_answers_that_map_without_retry(client, emulator, status, message, error):
    emulator.set(fail=[{"path": "/pub$", "status": status, "message": message}])
    with pytest.raises(error) as caught:
        client.pubs()
    assert message.removeprefix("UnauthorizedError: ") in str(caught.value)
    assert len(requests_to(emulator, "/pub", 1)) == 1


def test_a_task_without_a_resource_never_counts_the_server_down(client, emulator):
    """amaretti's "no resource currently available…" is one task's trouble: asked once, and
    the next request that meets a passing failure is still retried."""
    task = next(t for t in emulator.db("tasks") if t["status"] == "finished")
    emulator.set(variants={"amaretti": "no_resource"})
    with pytest.raises(RemoteError, match="no resource currently available"):
        client.task_ls(task["_id"])
    assert len(requests_to(emulator, "/task/ls/", 1)) == 1
    emulator.set(fail=[{"path": "/pub$", "status": 502, "times": 2}])
    assert client.pubs()
    assert len(requests_to(emulator, "/pub", 3)) == 3


def test_a_token_rejected_by_the_server_says_run_blfs_login(client, emulator):
    emulator.set(expire_tokens=True)
    with pytest.raises(AccessDenied, match="blfs login"):
        client.task_ls(next(t["_id"] for t in emulator.db("tasks")))


def test_a_slow_server_is_a_timeout_not_a_hang(emulator, token, tmp_path):
    client = make_client(emulator, token, tmp_path, timeout=0.3, retries=1)
    emulator.set(latency=2)
    started = time.monotonic()
    with pytest.raises(RemoteTimeout) as caught:
        client.projects()
    assert time.monotonic() - started < 1.5
    assert "/api/warehouse/project" in str(caught.value)


def test_a_request_the_server_never_answers_times_out(emulator, token, tmp_path):
    """/dataset/product of an unknown id hangs on the real server (API §2)."""
    client = make_client(emulator, token, tmp_path, timeout=0.5, retries=0)
    emulator.set(hang_seconds=3)
    started = time.monotonic()
    with pytest.raises(RemoteTimeout):
        client.product(UNKNOWN_ID)
    assert time.monotonic() - started < 2


def test_printable_urls_drop_the_token_parameter():
    assert printable("http://h/api/x?at=a.b.c&p=1") == "http://h/api/x?p=1"
    assert printable("http://h/api/x") == "http://h/api/x"


def test_an_unreachable_server_is_a_remote_error(tmp_path):
    client = Client("http://127.0.0.1:9/api", timeout=1, retries=1)
    with pytest.raises(RemoteError, match="cannot reach"):
        client.pubs()


def test_an_unreachable_server_is_not_asked_again_for_a_while(tmp_path):
    """One call finds it unreachable (after its retries); the next ones fail at once, EIO."""
    client = Client("http://127.0.0.1:9/api", timeout=5, retries=3)
    started = time.monotonic()
    with pytest.raises(RemoteError) as first:
        client.pubs()
    tried = time.monotonic() - started
    started = time.monotonic()
    for call in (client.pubs, client.projects, client.datatypes):
        with pytest.raises(RemoteError, match="not tried again before") as caught:
            call()
        assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < tried / 2, tried
    assert first.value.errno == errno.EIO


def test_the_token_never_appears_in_errors_or_logs(emulator, token, tmp_path, caplog):
    client = make_client(emulator, token, tmp_path, timeout=0.3, retries=1)
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    messages = []
    caplog.set_level(logging.DEBUG)
    for knobs in (
        {"fail": [{"path": ".", "status": 500, "message": "boom"}]},
        {"latency": 1},
        {"expire_tokens": True},
        {"truncate": [{"path": ".", "at": 100}]},
    ):
        emulator.set(**knobs)
        for call in (
            client.projects,
            lambda: list(client.datasets({"removed": False})),
            lambda: read_all(client.download_dataset(record["_id"])),
        ):
            with pytest.raises(BlfsError) as caught:
                call()
            messages.append(str(caught.value))
        emulator.reset()
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert all(token not in text for text in messages + logged)
    assert len(set(messages)) > 3


def test_many_threads_share_one_client(client, emulator):
    lab = project_id(emulator, "Lab Private")
    expected = sorted(d["_id"] for d in client.datasets({"project": lab}))
    results: list[list[str]] = []

    def work() -> None:
        results.append(sorted(d["_id"] for d in client.datasets({"project": lab})))

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [expected] * 32
    assert len(expected) == len(objects_of(emulator, "Lab Private"))


def test_participants_are_the_published_table_or_access_denied(client, emulator):
    table = client.participants(project_id(emulator, "BIDS Study"))
    assert [row["subject"] for row in table["subjects"]] == ["01", "02", "03", "04"]
    assert "age" in table["columns"]
    with pytest.raises(AccessDenied):
        client.participants(project_id(emulator, "Guest Study"))


def test_accepted_agreements_are_the_users_own_from_the_auth_profile(emulator, tmp_path):
    (agreement,) = next(p for p in emulator.db("projects") if p["agreements"])["agreements"]
    demo = make_client(emulator, emulator.token("demo"), tmp_path / "demo")
    alice = make_client(emulator, emulator.token("alice"), tmp_path / "alice")
    assert demo.accepted_agreements() == []
    assert agreement["_id"] in alice.accepted_agreements()
    with pytest.raises(AccessDenied):
        make_client(emulator, None, tmp_path / "guest").accepted_agreements()


def members_of(emulator, object_id: str) -> dict[str, int]:
    """The sizes of the regular files of an object's stored archive, by path."""
    (path,) = (emulator.data / "archives").glob(f"{object_id}.*")
    with tarfile.open(path) as archive:
        return {m.name: m.size for m in archive if m.isfile()}


def test_object_files_are_the_archive_members_sizes_over_every_page(emulator, token, tmp_path):
    """Pages of one entry each: every folder and continuation token followed, one page per
    file or folder of the object."""
    client = make_client(emulator, token, tmp_path, page_size=1)
    on_s3 = objects_of(emulator, "BIDS Study", storage="s3fs", status="stored")
    (profiles,) = [d for d in on_s3 if d["desc"].startswith("neuro/tractprofile")]
    for record in (profiles, on_s3[1]):
        emulator.clear_requests()
        members = members_of(emulator, record["_id"])
        assert client.object_files(record["project"], record["_id"]) == members
        folders = {name.rsplit("/", 1)[0] for name in members if "/" in name}
        pages = len(members) + len(folders)
        assert len(requests_to(emulator, f"/files/{record['project']}/", pages)) == pages


def test_object_files_of_a_project_not_on_s3_are_refused(client, emulator):
    record = objects_of(emulator, "Lab Private", status="stored")[0]
    with pytest.raises(BadRequest):
        client.object_files(record["project"], record["_id"])


@pytest.mark.parametrize(
    ("variant", "requests", "error"),
    [
        ("absent", 1, NotFound),
        ("empty", 1, None),
        ("full_keys", 2, None),
        ("raw_s3", 1, RemoteError),
        ("error", 1, RemoteError),
        ("stuck_token", 2, RemoteError),
        ("no_token", 1, RemoteError),
    ],
)
def test_object_files_take_only_a_well_formed_complete_listing(
    client, emulator, variant, requests, error
):
    """Every other answer raises after a bounded number of requests (an error is not retried:
    the archive does without a listing); full keys are read as the names they end in, empty
    lists as no files (the catalog checks them against `size`)."""
    (record,) = [
        d
        for d in objects_of(emulator, "BIDS Study", status="stored")
        if "tractprofile" in d["desc"]
    ]
    emulator.set(variants={"files": variant})
    if error is None:
        files = client.object_files(record["project"], record["_id"])
        expected = {} if variant == "empty" else members_of(emulator, record["_id"])
        assert files == expected
    else:
        with pytest.raises(error):
            client.object_files(record["project"], record["_id"])
    assert len(requests_to(emulator, f"/files/{record['project']}/", requests)) == requests


def test_listed_names_are_taken_relative_full_or_as_the_prefixs_own_marker():
    """However a server names its entries (relative, with the prefix, a full key under a root
    we cannot know), each is read as the name under the prefix; S3's empty directory marker
    for the prefix itself is no file; a name from elsewhere makes the page unusable."""
    prefix = f"{UNKNOWN_ID}/profiles/"
    page = {
        "objects": [
            {"Name": f"archive/p/{prefix}", "Size": 0},
            {"Name": "a.csv", "Size": 3},
            {"Name": f"{prefix}b.csv", "Size": 4},
            {"Name": f"embargoed/p/{prefix}c.csv", "Size": 5},
        ],
        "folders": [{"Name": f"archive/p/{prefix}deeper/"}, {"Name": "more/"}],
    }
    assert _listing_page(page, prefix) == (
        [("a.csv", 3), ("b.csv", 4), ("c.csv", 5)],
        ["deeper", "more"],
    )
    for row in ({"Name": "elsewhere/a.csv", "Size": 1}, {"Name": prefix, "Size": 7}):
        with pytest.raises(RemoteError, match="not under it"):
            _listing_page({"objects": [row], "folders": []}, prefix)
