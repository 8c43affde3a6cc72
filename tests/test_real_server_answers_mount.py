"""What the real brainlife.io may answer where no public source says (API §2), through real
mounts: every variant the emulator can give (faults.VARIANTS) leaves every file of an object
stored on S3 readable with its right size, the BIDS view as it is against the emulator's own
answers, the S3 "files" route asked a bounded number of times, and nothing doubtful kept for
good."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_fixtures import Mount, mounted, save_token
from test_bids_mount import FILES, STUDY, downloads, listings, study_objects
from test_emulator_tls import self_signed
from test_mount import archive_members

from blfs.emulator.control import EmulatorProcess
from blfs.emulator.generate import SAMPLE_JWT, SAMPLE_SECRET
from blfs.failures import FIRST_BACKOFF

FILES_VARIANTS = ("absent", "empty", "full_keys", "raw_s3", "error", "stuck_token", "no_token")
# Requests one object's listing may cost in any variant: a folder and its page (full keys), or
# a page and its repeat (a stuck token); an error is not retried.
REQUESTS_PER_OBJECT = 2


def on_s3(emulator) -> list[dict]:
    return [o for o in study_objects(emulator) if o["storage"] in ("s3fs", "s3fs-embargo")]


def probed(emulator) -> list[dict]:
    """Objects read by path in each variant: one in a folder (`s3fs`), one `s3fs-embargo`."""
    objects = on_s3(emulator)
    folder = next(o for o in objects if o["desc"].startswith("neuro/tractprofile"))
    embargoed = next(o for o in objects if o["storage"] == "s3fs-embargo")
    return [folder, embargoed]


def read_by_path(mount: Mount, emulator, objects: list[dict]) -> None:
    """Each file, reached by its path before any listing: its size, then its bytes."""
    for obj in objects:
        for name, data in archive_members(emulator, obj["_id"]).items():
            path = mount.path / "objects" / obj["_id"] / name
            assert path.stat().st_size == len(data), (obj["_id"], name)
            assert path.read_bytes() == data, (obj["_id"], name)


def view_sizes(root: Path) -> dict[str, int]:
    """Every file of a BIDS view that answers stat, with its size (a mapped file the object
    turns out not to hold answers ENOENT and is left out)."""
    sizes = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                sizes[str(path.relative_to(root))] = path.stat().st_size
            except FileNotFoundError:
                continue
    return sizes


def view_names(root: Path) -> set[str]:
    """Every file a walk of a BIDS view lists."""
    return {
        str((Path(directory) / name).relative_to(root))
        for directory, _, names in os.walk(root)
        for name in names
    }


@pytest.fixture(scope="module")
def default_view(emulator_server, tmp_path_factory) -> dict[str, int]:
    """The BIDS Study's view against the emulator's own answers, from a fresh cache."""
    emulator_server.reset()
    home = tmp_path_factory.mktemp("default-view")
    save_token(home, emulator_server.url, emulator_server.token("demo"))
    with mounted(emulator_server.url, home) as mount:
        return view_sizes(mount.path / "projects" / STUDY / "bids")


@pytest.mark.parametrize("variant", FILES_VARIANTS)
def test_s3_objects_read_right_whatever_the_files_route_answers(
    variant, emulator, user_home, default_view
):
    emulator.set(variants={"files": variant})
    cache = user_home / "cache"
    with mounted(emulator.url, user_home, cache_dir=cache) as mount:
        read_by_path(mount, emulator, probed(emulator))
        view = mount.path / "projects" / STUDY / "bids"
        sizes = view_sizes(view)
        # Without an accepted listing a cold view lists what is certain: the files the datatypes
        # require, and the optional ones of objects whose archive is local...
        assert sizes.items() <= default_view.items()
        waiting = set(default_view) - set(sizes)
        assert all(name.endswith("_events.tsv") for name in waiting), waiting
        # ...and once the archives the walk's stat calls brought are committed, all of them.
        deadline = time.monotonic() + 60
        while view_sizes(view) != default_view and time.monotonic() < deadline:
            time.sleep(0.1)
        assert view_sizes(view) == default_view
        assert view_names(view) == set(default_view)  # what is listed answers stat
        asked = len(listings(emulator))
        print(f"\nfiles route {variant}: {asked} requests for {len(on_s3(emulator))} objects")
        assert 0 < asked <= REQUESTS_PER_OBJECT * len(on_s3(emulator)), asked
    emulator.reset()
    with mounted(emulator.url, user_home, cache_dir=cache, name="again") as mount:
        read_by_path(mount, emulator, probed(emulator))
        assert view_sizes(mount.path / "projects" / STUDY / "bids") == default_view


def test_a_later_mount_against_a_correct_server_gets_the_listing_again(emulator, user_home):
    """A doubt is kept for the failure backoff only: once it has passed, a new mount lists the
    object again and a stat downloads nothing."""
    obj = probed(emulator)[0]
    members = archive_members(emulator, obj["_id"])
    name, data = next(iter(members.items()))
    cache = user_home / "cache"
    emulator.set(variants={"files": "empty"})
    with mounted(emulator.url, user_home, cache_dir=cache) as mount:
        assert (mount.path / "objects" / obj["_id"] / name).read_bytes() == data
        doubted = time.monotonic()
        assert downloads(emulator) == [obj["_id"]]
        cleared = mount.blfs("cache", "clear", obj["_id"], "--cache-dir", str(cache))
        assert cleared.returncode == 0, cleared.stderr
    emulator.reset()
    emulator.clear_requests()
    time.sleep(max(0.0, doubted + FIRST_BACKOFF - time.monotonic()))  # the doubt's lifetime
    with mounted(emulator.url, user_home, cache_dir=cache, name="again") as mount:
        for path, content in members.items():
            assert (mount.path / "objects" / obj["_id"] / path).stat().st_size == len(content)
        assert downloads(emulator) == []
        assert [r["path"] for r in listings(emulator)][0] == f"{FILES}{obj['project']}/{obj['_id']}"
        assert (mount.path / "objects" / obj["_id"] / name).read_bytes() == data


@pytest.mark.parametrize("storage", ["s3fs-embargo", "local"])
def test_a_download_without_content_length_reads_byte_equal(mount, emulator, storage):
    """The S3 kinds' `size` is their files' total, not the archive's: without Content-Length
    the download is read to its end and checked by the tar; a tar kind's `size` is checked."""
    emulator.set(variants={"download": "no_length"})
    obj = next(
        o for o in emulator.db("datasets") if o["storage"] == storage and o["status"] == "stored"
    )
    read_by_path(mount, emulator, [obj])
    assert downloads(emulator) == [obj["_id"]]
    reply = emulator.get(f"/warehouse/dataset/download/{obj['_id']}", emulator.token())
    assert "Content-Length" not in reply.headers


def metadata_files(mount: Mount) -> list[Path]:
    """The mount's record files: projects', objects', processes' and tasks', publications',
    releases' and their BIDS views' sidecars (globbed, so no object's archive is listed)."""
    root = mount.path
    patterns = [
        "projects/*/*.json",
        "projects/*/sub-*/*/*/*/_info.json",
        "projects/*/sub-*/*/*/*/*/_info.json",
        "projects/*/processes/*/_instance.json",
        "projects/*/processes/*/*/_task.json",
        "publications/*/publication.json",
        "projects/*/bids/**/*.json",
        "publications/*/*/bids/**/*.json",
    ]
    found = {path for pattern in patterns for path in root.glob(pattern)}
    return sorted(found)


def test_no_secret_of_a_task_config_is_in_any_metadata_file(mount, emulator):
    """The generated task configs and objects' `prov.task.config` hold a resource's
    environment, XNAT credentials, a password, a URL with credentials and a token: grep finds
    none of them in the mount's record files."""
    files = metadata_files(mount)
    assert any(p.name == "_task.json" for p in files)
    assert any(p.name == "_info.json" for p in files)
    tasks = [t for t in emulator.db("tasks") if SAMPLE_SECRET in str(t["config"])]
    assert tasks
    found = subprocess.run(
        ["grep", "-r", "-l", "-F", "-e", SAMPLE_SECRET, "-e", SAMPLE_JWT, "-e", "reader:", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 1, found.stdout  # 1: nothing found, no error
    by_id = mount.path / "tasks" / tasks[0]["_id"]
    found = subprocess.run(
        ["grep", "-r", "-F", "-e", SAMPLE_SECRET, "-e", SAMPLE_JWT, "--include=*.json", by_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 1, found.stdout


@pytest.fixture
def guest_home(tmp_path: Path) -> Path:
    home = tmp_path / "guest"
    home.mkdir()
    return home


def test_a_guest_whose_participants_request_would_hang_lists_a_release_at_once(
    scratch_emulator, guest_home
):
    """A release of a project that publishes its participants but has no participants record:
    a guest's request for them never answers (warehouse participant.js). A guest may download
    nothing, so the release's BIDS view refuses its listing at once, says why, and its
    participant table is never asked for; the release's objects are listed at once."""
    emulator = scratch_emulator
    project = next(p for p in emulator.db("projects") if p["name"] == "Open Diffusion")
    emulator.put_records("projects", [{**project, "publishParticipantsInfo": True}])
    emulator.set(variants={"participants": "guest_hang"}, hang_seconds=120)
    pub = next(p for p in emulator.db("pubs") if p["project"] == project["_id"])
    with mounted(emulator.url, guest_home) as mount:
        release = mount.path / "publications" / pub["_id"] / pub["releases"][0]["_id"]
        start = time.monotonic()
        listed = os.listdir(release)
        assert any(name.startswith("sub-") for name in listed) and "ACCESS.txt" in listed
        with pytest.raises(PermissionError):
            os.listdir(release / "bids")
        assert time.monotonic() - start < 10
        assert "blfs login" in (release / "ACCESS.txt").read_text()
        asked = [r for r in emulator.requests() if r["path"].startswith("/api/warehouse/part")]
        assert asked == []


def test_a_participant_table_the_server_fails_to_give_is_left_out_and_said_once(mount, emulator):
    """The participants request fails (after its retries): the project directory and its BIDS
    view are listed without the table, which is not asked for again within the backoff."""
    emulator.set(fail=[{"path": "/participant/", "status": 500}])
    study = mount.path / "projects" / STUDY
    assert "participants.tsv" not in os.listdir(study)
    listed = os.listdir(study / "bids")
    assert "dataset_description.json" in listed and "participants.tsv" not in listed
    assert "participants.tsv" not in os.listdir(study)
    assert mount.log().count("participants.tsv of project") == 1


@pytest.fixture
def watched_task(emulator) -> Iterator[dict]:
    yield next(t for t in emulator.db("tasks") if t["status"] == "finished")


@pytest.mark.parametrize(
    ("variant", "error", "text"),
    [
        ("no_such_task", errno.ENOENT, "has no outputs to list"),
        ("no_resource", errno.EIO, "no resource currently available"),
    ],
)
def test_amaretti_texts_for_a_task_it_cannot_serve(
    mount, emulator, watched_task, variant, error, text
):
    """ENOENT for "no such task", EIO for "no resource…", said once in the log however often
    asked, and neither makes the mount count the server down: a passing failure right after is
    still retried."""
    emulator.set(variants={"amaretti": variant})
    task_dir = mount.path / "tasks" / watched_task["_id"]
    with pytest.raises(OSError) as caught:
        os.stat(task_dir / "config.json")  # an output of the task: its listing is asked
    assert caught.value.errno == error
    asked = [r for r in emulator.requests() if r["path"].startswith("/api/amaretti/task/ls/")]
    assert len(asked) == 1
    os.stat(task_dir / "_task.json")
    with pytest.raises(OSError):
        os.stat(task_dir / "output")
    assert mount.log().count(text) == 1
    emulator.reset()
    emulator.set(fail=[{"path": "/task/ls/", "status": 502, "times": 1}])
    assert "_task.json" in os.listdir(task_dir)


BL_VERSION = "1.8.2"  # the official CLI, npm package `brainlife`
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # Debian's and Ubuntu's CA store


@pytest.fixture(scope="session")
def bl_command() -> Path:
    """The official `bl` CLI: on PATH, or installed once with npm into a cache kept across
    runs. Under CI a machine without npm fails here rather than skipping."""
    found = shutil.which("bl")
    if found:
        return Path(found)
    prefix = Path.home() / ".cache" / "blfs-tests" / f"brainlife-{BL_VERSION}"
    command = prefix / "node_modules" / ".bin" / "bl"
    if command.exists():
        return command
    if shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the `bl` CLI is needed under CI: install node and npm")
        pytest.skip("no npm to install the `bl` CLI with")
    # Node trusts only its own CAs: the distribution's store is added, as the machine's other
    # tools trust it (a site's TLS proxy is in it, not in Node's).
    env = dict(os.environ)
    if Path(SYSTEM_CAS).is_file():
        env.setdefault("NODE_EXTRA_CA_CERTS", SYSTEM_CAS)
    installed = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
         f"brainlife@{BL_VERSION}"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert installed.returncode == 0 and command.exists(), installed.stderr[-2000:]
    return command


@pytest.mark.timeout(900)  # the first run installs the CLI
def test_bl_bids_download_over_tls_gets_the_mounts_bytes(
    bl_command, emulator_data, tmp_path, monkeypatch
):
    """`bl bids download` against the emulator served over TLS: the script it runs fetches
    from the scheme the server is served with, and every file it unpacks has the bytes the
    mount shows for the same object."""
    cert, key = self_signed(tmp_path)
    server = EmulatorProcess(emulator_data, tls=(cert, key))
    try:
        emulator = server.emulator
        home = tmp_path / "home"
        home.mkdir()
        save_token(home, emulator.url, emulator.token("demo"))  # where `bl` reads it too
        study = next(p["_id"] for p in emulator.db("projects") if p["name"] == STUDY)
        out = tmp_path / "out"
        out.mkdir()
        env = dict(
            os.environ,
            HOME=str(home),
            BLHOST=emulator.url.removeprefix("https://").removesuffix("/api"),
            NODE_EXTRA_CA_CERTS=str(cert),
            CURL_CA_BUNDLE=str(cert),
        )
        ran = subprocess.run(
            [str(bl_command), "bids", "download", "--project", study, "--output", str(out)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-2000:]
        unpacked = {
            path: path.relative_to(out).parts[2].rsplit(".id-", 1)[1]
            for path in (out / f"proj-{study}").glob("sub-*/dt-*/**/*")
            if path.is_file() and path.name != "_info.json"
        }
        assert len({object_id for object_id in unpacked.values()}) == len(study_objects(emulator))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # read by the mount: it wins
        with mounted(emulator.url, home) as mount:
            for path, object_id in unpacked.items():
                inside = path.relative_to(next(p for p in path.parents if ".id-" in p.name))
                shown = mount.path / "objects" / object_id / inside
                assert shown.read_bytes() == path.read_bytes(), inside
    finally:
        server.stop()


def test_objects_of_an_unknown_storage_kind_read_right_said_once(scratch_emulator, tmp_path):
    """A kind no source names: its `size` is not taken for the archive's length (here it is the
    files' total, as on S3, and the download comes without Content-Length), and the log says
    so once for all its objects."""
    emulator = scratch_emulator
    study = next(p["_id"] for p in emulator.db("projects") if p["name"] == STUDY)
    objects = [o for o in emulator.db("datasets") if o["project"] == study][:2]
    emulator.put_records("datasets", [{**o, "storage": "s3-glacier-7"} for o in objects])
    emulator.set(variants={"download": "no_length"})
    home = tmp_path / "home"
    home.mkdir()
    save_token(home, emulator.url, emulator.token("demo"))
    with mounted(emulator.url, home) as mount:
        read_by_path(mount, emulator, objects)
        assert mount.log().count("unknown storage kind 's3-glacier-7'") == 1
        assert sorted(downloads(emulator)) == sorted(o["_id"] for o in objects)
