"""The streaming fetcher over real HTTP: real tar archives served by the emulator."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blfs.api import Client
from blfs.auth import TokenStore
from blfs.cache import Cache, object_key, settled
from blfs.errors import AccessDenied, BadArchive, NotFound, RemoteError, RemoteTimeout
from blfs.failures import Failures
from blfs.fetch import Downloads, ObjectFetcher, TaskFiles

DOWNLOAD = "/api/warehouse/dataset/download/"
ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20

# A reader in another process: prints the sha256 of one member, read through its own fetcher.
CHILD = """
import hashlib, sys, time
from pathlib import Path
from blfs.api import Client
from blfs.auth import TokenStore
from blfs.cache import Cache, object_key, settled
from blfs.fetch import Downloads, ObjectFetcher
url, home, cache_dir, object_id, member = sys.argv[1:6]
client = Client(url, TokenStore(url, home=Path(home)))
fetcher = ObjectFetcher(Downloads(Cache(Path(cache_dir), 1 << 40)), client.download_dataset)
handle = fetcher.contents(object_id).open(member)
print("open", flush=True)
size = fetcher.contents(object_id).lookup(member).size
print(hashlib.sha256(handle.read(0, size)).hexdigest(), flush=True)
fetcher.contents(object_id).listdir("")  # the archive is verified; its commit follows
deadline = time.monotonic() + 30  # the download threads are daemons: do not end before it
while not settled(Path(cache_dir), object_key(object_id)) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


# -- helpers shared with test_cache.py -----------------------------------------------------------
def tar_bytes(
    files: dict[str, bytes | None], gz: bool = False, tar_format: int = tarfile.GNU_FORMAT
) -> bytes:
    """A tar of `files` (None = a directory), GNU unless told, gzip-compressed if asked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue()) if gz else buffer.getvalue()


def hostile_tar(*infos: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def downloads(emulator, object_id: str) -> int:
    return sum(1 for r in emulator.requests() if r["path"] == DOWNLOAD + object_id)


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_commit(cache_dir: Path, object_id: str) -> None:
    """Waits until no process downloads the object into `cache_dir` any more: a listing is
    answered as soon as the archive is verified, before the commit."""
    wait_until(lambda: settled(cache_dir, object_key(object_id)), what="the commit")


@pytest.fixture
def home(emulator, tmp_path) -> Path:
    """A home with the demo user's token where `bl` keeps it."""
    home = tmp_path / "home"
    TokenStore(emulator.url, home=home).save(emulator.token())
    return home


@pytest.fixture
def client(emulator, home) -> Client:
    return Client(emulator.url, TokenStore(emulator.url, home=home), timeout=10, retries=1)


@pytest.fixture
def objects(emulator) -> Iterator[list[str]]:
    """Ids of readable stored objects whose archives a test may replace (restored afterwards)."""
    ids = [d["_id"] for d in emulator.db("datasets") if readable(emulator, d)][:6]
    saved = {i: archive_path(emulator, i).read_bytes() for i in ids}
    yield ids
    for object_id, data in saved.items():
        emulator.put_archive(object_id, data)


def readable(emulator, dataset: dict) -> bool:
    projects = {p["_id"]: p for p in emulator.db("projects")}
    project = projects.get(dataset["project"], {})
    return (
        dataset["status"] == "stored"
        and not dataset.get("removed")
        and project.get("name") == "Lab Private"
    )


def archive_path(emulator, object_id: str) -> Path:
    (path,) = (emulator.data / "archives").glob(f"{object_id}.*")
    return path


def new_fetcher(
    client: Client,
    root: Path,
    max_bytes: int = 1 << 40,
    timeout: float = 20.0,
    backoff: float = 5.0,
):
    downloads = Downloads(Cache(root, max_bytes), stall_timeout=timeout, first_backoff=backoff)
    return ObjectFetcher(downloads, client.download_dataset)


def wait_for_backoff(root: Path, object_id: str) -> None:
    """Waits until the object's last failure no longer holds a new attempt back."""
    failures = Failures(root / "failures")
    wait_until(lambda: failures.pending(object_key(object_id)) is None, what="the backoff")


def task_files(client: Client, root: Path) -> TaskFiles:
    return TaskFiles(Downloads(Cache(root, 1 << 40), stall_timeout=20), client.download_task_file)


def read_all(contents, name: str) -> bytes:
    handle = contents.open(name)
    try:
        return handle.read(0, contents.lookup(name).size + 1)
    finally:
        handle.release()


def assert_nothing_complete(root: Path, object_id: str) -> None:
    assert not (root / "objects" / object_id).exists()
    wait_until(lambda: not [p for p in (root / "tmp").iterdir()], what="staging removed")


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_members_are_byte_exact_with_sanitised_modes(client, emulator, objects, tmp_path, gz):
    files = {
        "t1.nii.gz": os.urandom(3 * MiB + 17),
        "empty.txt": b"",
        "output/": None,
        "output/surf/lh.white": os.urandom(70_000),
        "output/label/aparc.annot": b"annot",
        "./profiles/fa.csv": b"1,2,3\n",
    }
    data = tar_bytes(files, gz)
    emulator.put_archive(objects[0], data)
    contents = new_fetcher(client, tmp_path / "cache").contents(objects[0])

    assert read_all(contents, "t1.nii.gz") == files["t1.nii.gz"]
    assert read_all(contents, "output/surf/lh.white") == files["output/surf/lh.white"]
    assert read_all(contents, "profiles/fa.csv") == b"1,2,3\n"
    assert read_all(contents, "empty.txt") == b""
    names = {m.name: m for m in contents.listdir("")}
    assert sorted(names) == ["empty.txt", "output", "profiles", "t1.nii.gz"]
    assert names["t1.nii.gz"].mode == stat.S_IFREG | 0o444
    assert names["t1.nii.gz"].mtime == 1_700_000_000
    assert names["output"].mode == stat.S_IFDIR | 0o555
    assert [m.name for m in contents.listdir("output")] == ["surf", "label"]
    assert contents.lookup("output/surf").mode == stat.S_IFDIR | 0o555
    assert contents.lookup("").mode & stat.S_IFDIR
    with pytest.raises(NotFound):
        contents.lookup("missing")
    with pytest.raises(NotFound):
        contents.lookup("../escape")
    handle = contents.open("t1.nii.gz")
    assert handle.complete
    assert handle.read(3 * MiB, 100) == files["t1.nii.gz"][3 * MiB : 3 * MiB + 100]
    assert handle.read(3 * MiB + 17, 10) == b""
    handle.release()
    assert downloads(emulator, objects[0]) == 1


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_long_names_in_extended_headers_are_read(client, emulator, objects, tmp_path, tar_format):
    long_dir = "sub-" + "x" * 120
    files = {
        f"{long_dir}/{'y' * 150}.nii.gz": os.urandom(MiB + 3),
        "dwi/ü.bvals": b"0 1000\n",
        "b.txt": b"b" * 512,
    }
    emulator.put_archive(objects[0], tar_bytes(files, tar_format=tar_format))
    contents = new_fetcher(client, tmp_path / "cache").contents(objects[0])

    for name, data in files.items():
        assert read_all(contents, name) == data
    assert sorted(m.name for m in contents.listdir("")) == ["b.txt", "dwi", long_dir]


def test_setuid_and_exec_bits_are_sanitised(client, emulator, objects, tmp_path):
    script = tarfile.TarInfo("run.sh")
    script.mode = 0o4777
    emulator.put_archive(objects[0], hostile_tar((script, b"#!/bin/sh\n")))
    member = new_fetcher(client, tmp_path / "c").contents(objects[0]).lookup("run.sh")
    assert member.mode == stat.S_IFREG | 0o555


def test_first_member_is_readable_long_before_the_download_ends(
    client, emulator, objects, tmp_path
):
    first, rest = os.urandom(2 * MiB), os.urandom(6 * MiB)
    emulator.put_archive(objects[0], tar_bytes({"t1.nii.gz": first, "rest.bin": rest}))
    emulator.set(bandwidth=2 * MiB)
    fetcher = new_fetcher(client, tmp_path / "cache")
    start = time.monotonic()
    contents = fetcher.contents(objects[0])
    handle = contents.open("t1.nii.gz")
    assert handle.read(0, MiB) == first[:MiB]
    first_mib = time.monotonic() - start
    assert not handle.complete
    assert handle.read(0, len(first)) == first
    first_whole = time.monotonic() - start
    running = fetcher.progress()
    assert [p["id"] for p in running] == [f"object {objects[0]}"]
    assert 0 < running[0]["bytes_done"] < running[0]["total"] and running[0]["error"] is None
    assert read_all(contents, "rest.bin") == rest
    whole = time.monotonic() - start
    handle.release()
    print(f"\nfirst MiB {first_mib:.3f}s, member 1 {first_whole:.3f}s, whole {whole:.3f}s")
    assert whole > 3.0
    assert first_mib < whole / 5, (first_mib, whole)
    assert first_whole < whole / 2, (first_whole, whole)


def test_concurrent_readers_share_one_download(client, emulator, objects, tmp_path):
    files = {f"m{i}.bin": os.urandom(MiB + i) for i in range(4)}
    emulator.put_archive(objects[0], tar_bytes(files))
    emulator.set(bandwidth=4 * MiB)
    fetcher = new_fetcher(client, tmp_path / "cache")
    results: dict[int, bool] = {}

    def reader(index: int) -> None:
        name = f"m{index % 4}.bin"
        results[index] = read_all(fetcher.contents(objects[0]), name) == files[name]

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: True for i in range(8)}
    assert downloads(emulator, objects[0]) == 1


def test_two_processes_on_one_cache_share_one_download(client, emulator, objects, tmp_path, home):
    data = os.urandom(4 * MiB)
    emulator.put_archive(objects[0], tar_bytes({"t1.nii.gz": data}))
    emulator.set(bandwidth=2 * MiB)
    argv = [sys.executable, "-c", CHILD, emulator.url, str(home), str(tmp_path / "cache")]
    children = [
        subprocess.Popen(
            [*argv, objects[0], "t1.nii.gz"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=60)[0].split() for child in children]
    finally:
        for child in children:
            child.kill()
    assert [child.returncode for child in children] == [0, 0]
    assert outputs == [["open", hashlib.sha256(data).hexdigest()]] * 2
    assert downloads(emulator, objects[0]) == 1


def test_a_truncated_body_fails_alike_until_its_backoff_ends_then_succeeds(
    client, emulator, objects, tmp_path
):
    files = {"a.bin": os.urandom(MiB), "b.bin": os.urandom(MiB)}
    emulator.put_archive(objects[0], tar_bytes(files))
    emulator.set(truncate=[{"path": objects[0], "at": MiB + 5000, "times": 1}])
    root = tmp_path / "cache"
    fetcher = new_fetcher(client, root, backoff=1.0)
    with pytest.raises((BadArchive, RemoteError)) as first:
        fetcher.contents(objects[0]).listdir("")
    assert_nothing_complete(root, objects[0])
    assert fetcher.progress()[0]["error"]
    with pytest.raises(first.type):
        fetcher.contents(objects[0]).lookup("a.bin")
    assert downloads(emulator, objects[0]) == 1
    wait_for_backoff(root, objects[0])
    assert read_all(fetcher.contents(objects[0]), "b.bin") == files["b.bin"]
    assert downloads(emulator, objects[0]) == 2


@pytest.mark.parametrize("cut", ["trailer", "crc", "middle"])
def test_damaged_gzip_is_refused_then_a_good_one_is_served(
    client, emulator, objects, tmp_path, cut
):
    files = {"t1.nii.gz": os.urandom(200_000)}
    good = tar_bytes(files, gz=True)
    if cut == "trailer":
        bad = good[:-8]
    elif cut == "crc":
        bad = good[:-8] + bytes(b ^ 0xFF for b in good[-8:-4]) + good[-4:]
    else:
        bad = good[: len(good) // 2]
    emulator.put_archive(objects[0], bad)
    root = tmp_path / "cache"
    fetcher = new_fetcher(client, root)
    with pytest.raises(BadArchive):
        fetcher.contents(objects[0]).listdir("")
    assert_nothing_complete(root, objects[0])
    emulator.put_archive(objects[0], good)
    with pytest.raises(BadArchive):  # refused alike until its backoff ends or it is cleared
        fetcher.contents(objects[0]).lookup("t1.nii.gz")
    Cache(root, 1 << 40).clear([object_key(objects[0])])
    assert read_all(fetcher.contents(objects[0]), "t1.nii.gz") == files["t1.nii.gz"]


def _link(kind: bytes, name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _special(kind: bytes, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


HOSTILE = {
    "dotdot": [(tarfile.TarInfo("ok.txt"), b"fine"), (tarfile.TarInfo("../x"), b"evil")],
    "nested-dotdot": [(tarfile.TarInfo("a/../../x"), b"evil")],
    "absolute": [(tarfile.TarInfo("{outside}/abs.txt"), b"evil")],
    "symlink": [(_link(tarfile.SYMTYPE, "link", "{outside}"), None)],
    "symlink-then-write": [
        (_link(tarfile.SYMTYPE, "link", "{outside}"), None),
        (tarfile.TarInfo("link/abs.txt"), b"evil"),
    ],
    "hardlink": [(_link(tarfile.LNKTYPE, "hard", "{outside}/abs.txt"), None)],
    "chardev": [(_special(tarfile.CHRTYPE, "null"), None)],
    "fifo": [(_special(tarfile.FIFOTYPE, "pipe"), None)],
    "through-a-file": [(tarfile.TarInfo("f"), b"file"), (tarfile.TarInfo("f/x"), b"evil")],
    "duplicate": [(tarfile.TarInfo("f"), b"one"), (tarfile.TarInfo("f"), b"two")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_is_written_outside(
    client, emulator, objects, tmp_path, case
):
    outside = tmp_path / "outside"
    outside.mkdir()
    infos = []
    for info, data in HOSTILE[case]:
        copy = tarfile.TarInfo(info.name.format(outside=outside))
        copy.type, copy.linkname = info.type, info.linkname.format(outside=outside)
        infos.append((copy, data))
    emulator.put_archive(objects[0], hostile_tar(*infos))
    root = tmp_path / "cache"
    with pytest.raises(BadArchive, match="refused"):
        new_fetcher(client, root).contents(objects[0]).listdir("")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "x").exists()
    assert_nothing_complete(root, objects[0])


def test_sizes_beyond_the_content_length_are_refused(client, emulator, objects, tmp_path):
    huge = tarfile.TarInfo("huge.bin")
    huge.size = 10 << 30
    body = huge.tobuf(tarfile.GNU_FORMAT) + b"\0" * 4096
    for data in (body, gzip.compress(body)):
        emulator.put_archive(objects[0], data)
        with pytest.raises(BadArchive, match="exceed"):
            new_fetcher(client, tmp_path / "c").contents(objects[0]).lookup("huge.bin")


def test_a_new_instance_serves_the_cache_without_requests(client, emulator, objects, tmp_path):
    files = {"dwi.nii.gz": os.urandom(MiB), "dwi.bvals": b"0 1000\n", "sub/": None}
    emulator.put_archive(objects[0], tar_bytes(files))
    root = tmp_path / "cache"
    first = new_fetcher(client, root)
    assert read_all(first.contents(objects[0]), "dwi.nii.gz") == files["dwi.nii.gz"]
    wait_until(lambda: first.cached(objects[0]), what="commit")
    emulator.clear_requests()
    second = new_fetcher(client, root)
    assert second.cached(objects[0])
    contents = second.contents(objects[0])
    assert [m.name for m in contents.listdir("")] == ["dwi.nii.gz", "dwi.bvals", "sub"]
    assert contents.lookup("dwi.bvals").size == 7
    assert read_all(contents, "dwi.nii.gz") == files["dwi.nii.gz"]
    assert contents.open("dwi.bvals").complete
    assert emulator.requests() == []


def test_a_committed_objects_members_are_known_without_a_request_and_stay_known(
    client, emulator, objects, tmp_path
):
    files = {"dwi.nii.gz": os.urandom(1000), "sub/": None, "sub/a.txt": b"a\n"}
    emulator.put_archive(objects[0], tar_bytes(files))
    root = tmp_path / "cache"
    first = new_fetcher(client, root)
    assert first.committed(objects[0]) is None
    assert downloads(emulator, objects[0]) == 0  # asking starts nothing
    first.contents(objects[0]).listdir("")
    wait_for_commit(root, objects[0])
    emulator.clear_requests()
    second = new_fetcher(client, root)
    contents = second.committed(objects[0])
    assert [m.name for m in contents.listdir("")] == ["dwi.nii.gz", "sub"]
    assert [(m.name, m.size) for m in contents.listdir("./sub/")] == [("a.txt", 2)]
    assert contents.lookup("sub/a.txt").size == 2 and contents.lookup("sub").is_dir
    with pytest.raises(NotFound):
        contents.lookup("sub/b.txt")
    with pytest.raises(NotFound):
        contents.listdir("dwi.nii.gz")
    assert emulator.requests() == []
    Cache(root, 1 << 40).clear()  # evicted, as by another process
    assert second.committed(objects[0]).lookup("dwi.nii.gz").size == 1000  # objects never change
    assert read_all(second.contents(objects[0]), "dwi.nii.gz") == files["dwi.nii.gz"]
    assert downloads(emulator, objects[0]) == 1  # the read fetched it again


def test_access_denied_is_retried_at_once_server_errors_after_a_backoff(
    client, emulator, objects, tmp_path
):
    emulator.put_archive(objects[0], tar_bytes({"a": b"a"}))
    fetcher = new_fetcher(client, tmp_path / "cache", backoff=1.0)
    emulator.set(fail=[{"path": objects[0], "status": 403, "times": 1}])
    with pytest.raises(AccessDenied):
        fetcher.contents(objects[0]).lookup("a")
    emulator.set(fail=[{"path": objects[0], "status": 500, "times": 2}])
    with pytest.raises(RemoteError):
        fetcher.contents(objects[0]).lookup("a")
    with pytest.raises(RemoteError):
        fetcher.contents(objects[0]).lookup("a")
    assert downloads(emulator, objects[0]) == 3  # 403, then 500 and its one retry
    wait_for_backoff(tmp_path / "cache", objects[0])
    assert read_all(fetcher.contents(objects[0]), "a") == b"a"


def test_a_stalled_download_times_out_instead_of_hanging(client, emulator, objects, tmp_path):
    emulator.put_archive(objects[0], tar_bytes({"a": os.urandom(MiB), "b": b"b"}))
    emulator.set(stall=[{"path": objects[0], "after": 100_000, "seconds": 30, "times": 1}])
    contents = new_fetcher(client, tmp_path / "cache", timeout=1.0).contents(objects[0])
    start = time.monotonic()
    with pytest.raises(RemoteTimeout):
        contents.lookup("b")
    assert time.monotonic() - start < 5


# -- task files ----------------------------------------------------------------------------------
def task_file(emulator, status: str = "finished") -> tuple[str, str, Path]:
    """(task id, relative path, local copy) of one output file of a Lab Private task."""
    group = next(p for p in emulator.db("projects") if p["name"] == "Lab Private").get("group_id")
    for task in emulator.db("tasks"):
        if task["status"] != status or task.get("_group_id", group) != group:
            continue
        directory = emulator.data / "tasks" / task["instance_id"] / task["_id"]
        files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []
        if files:
            return task["_id"], str(files[0].relative_to(directory)), files[0]
    pytest.skip(f"no {status} task with files in the emulator data")


def test_a_finished_task_file_is_cached_by_task_and_path(client, emulator, tmp_path):
    task_id, path, local = task_file(emulator)
    data = local.read_bytes()
    root = tmp_path / "cache"
    files = task_files(client, root)
    handle = files.open(task_id, path, len(data), final=True)
    assert handle.read(0, len(data) + 10) == data
    wait_until(lambda: handle.complete, what="every byte")
    cached = root / "tasks" / task_id / path
    wait_until(cached.is_file, what="task file commit")  # after its readers are served
    handle.release()
    assert cached.read_bytes() == data
    emulator.clear_requests()
    again = task_files(client, root)
    handle = again.open(task_id, path, len(data), final=True)
    assert handle.complete and handle.read(0, len(data)) == data
    handle.release()
    assert emulator.requests() == []


def test_a_running_task_file_is_served_from_tmp_and_dropped(client, emulator, tmp_path):
    task_id, path, local = task_file(emulator)
    data = local.read_bytes()
    root = tmp_path / "cache"
    files = task_files(client, root)
    first = files.open(task_id, path, 0, final=False)
    second = files.open(task_id, path, 0, final=False)
    assert first.read(0, len(data) + 100) == data
    assert second.read(1, 5) == data[1:6]
    assert not first.complete
    first.release()
    assert [p for p in (root / "tmp").iterdir() if not p.name.endswith(".lock")]
    second.release()  # a download still ending drops the copy as it ends
    wait_until(lambda: list((root / "tmp").iterdir()) == [], what="the temporary copy dropped")
    assert not (root / "tasks" / task_id).exists()
    assert sum(1 for r in emulator.requests() if "/task/download/" in r["path"]) == 1


def test_a_task_file_shorter_than_listed_is_an_error(client, emulator, tmp_path):
    task_id, path, local = task_file(emulator)
    size = local.stat().st_size
    root = tmp_path / "cache"
    files = task_files(client, root)
    handle = files.open(task_id, path, size + 10, final=True)
    with pytest.raises(BadArchive):
        handle.read(0, size + 10)
    handle.release()
    assert not (root / "tasks" / task_id).exists()


def test_every_waiter_on_a_stalled_download_fails_at_once_with_one_attempt(
    client, emulator, objects, tmp_path
):
    emulator.put_archive(objects[0], tar_bytes({"a": os.urandom(MiB), "b": b"b"}))
    emulator.set(stall=[{"path": objects[0], "after": 0, "seconds": 20, "times": 1}])
    fetcher = new_fetcher(client, tmp_path / "cache", timeout=1.0)
    ended: list[tuple[float, type]] = []
    start = time.monotonic()

    def wait_for_member() -> None:
        try:
            fetcher.contents(objects[0]).lookup("b")
        except RemoteTimeout as exc:
            ended.append((time.monotonic() - start, type(exc)))

    threads = [threading.Thread(target=wait_for_member) for _ in range(8)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(20)
    assert len(ended) == 8 and max(seconds for seconds, _ in ended) < 3
    again = time.monotonic()
    with pytest.raises(RemoteTimeout):  # remembered: the same errno at once
        fetcher.contents(objects[0]).lookup("b")
    assert time.monotonic() - again < 0.5
    assert downloads(emulator, objects[0]) == 1


def test_a_second_process_reads_the_bytes_as_they_arrive(client, emulator, objects, tmp_path, home):
    data = os.urandom(6 * MiB)
    emulator.put_archive(objects[0], tar_bytes({"t1.nii.gz": data}))
    emulator.set(bandwidth=MiB)
    root = tmp_path / "cache"
    owner = new_fetcher(client, root)
    first = owner.contents(objects[0]).open("t1.nii.gz")
    assert first.read(0, MiB) == data[:MiB]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, emulator.url, str(home), str(root), objects[0], "t1.nii.gz"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        opened_at = time.monotonic()
        assert child.stdout.readline().strip() == "open"
        opened = time.monotonic() - opened_at
        assert not owner.cached(objects[0])  # opened while the download runs
        assert child.stdout.readline().strip() == hashlib.sha256(data).hexdigest()
        assert child.wait(60) == 0
    finally:
        child.kill()
        first.release()
    assert opened < 4
    assert downloads(emulator, objects[0]) == 1


def test_settling_waits_for_the_commit_of_a_complete_download_only(tmp_path):
    downloads = Downloads(Cache(tmp_path / "cache", 1 << 30))
    committing, arriving = threading.Event(), threading.Event()

    def start(key: str, complete: bool, release: threading.Event) -> None:
        item = downloads.new_item(key, key)

        def work() -> None:
            item.owner = True
            if complete:
                item.finish()  # every byte is there: what is left is its commit
            release.wait(30)

        downloads.start(key, item, work, lambda: None)

    start("complete", True, committing)
    start("arriving", False, arriving)
    assert downloads.settle(0.3) is False  # the complete one is still committing
    committing.set()
    assert downloads.settle(10) is True  # the one still arriving is not waited for
    arriving.set()
