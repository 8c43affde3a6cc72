"""Latency hidden by asking ahead (issue 19): what a walk or a read will need is requested before
the kernel asks, a bounded number at a time, never twice. Through real mounts over the emulator
with a round trip injected into every request."""

from __future__ import annotations

import glob
import os
import threading
import time
from pathlib import Path

from test_mount import archive_members, run, shown_objects
from test_namespace import datatype_names, expected_path

from blfs.ahead import Ahead
from blfs.emulator.control import in_flight_peak, round_trips

PRODUCT = "/api/warehouse/dataset/product/"
DOWNLOAD = "/api/warehouse/dataset/download/"
TASK_LS = "/api/amaretti/task/ls/"
LAB = Path("projects") / "Lab Private"


def answered(emulator, prefix: str, count: int, timeout: float = 60) -> list[dict]:
    """The log's requests under `prefix`, once `count` of them have been answered."""
    deadline = time.monotonic() + timeout
    while True:
        done = [r for r in emulator.requests() if r["path"].startswith(prefix) and r.get("end")]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, f"{len(done)} of {count} {prefix} requests answered"
        time.sleep(0.05)


def test_listing_a_subject_asks_for_every_product_below_it_at_once_and_never_twice(mount, emulator):
    lab = shown_objects(emulator, "Lab Private")
    below = [o for o in lab if o["meta"].get("subject") == "0001"]
    assert len(below) >= 7
    latency = 0.2
    emulator.set(latency=latency)
    subject = mount.path / LAB / "sub-0001"
    emulator.clear_requests()
    assert os.listdir(subject)
    products = answered(emulator, PRODUCT, len(below))
    assert {r["path"].removeprefix(PRODUCT) for r in products} == {o["_id"] for o in below}
    # Asked together, not one after another: their span is far less than theirs in a row.
    span = max(r["end"] for r in products) - min(r["t"] for r in products)
    assert in_flight_peak(products) >= 3
    assert span < len(below) * latency
    # A walk reading them all afterwards asks for none of them again.
    base = glob.escape(str(subject))
    read = glob.glob(f"{base}/*/*/*/_product.json") + glob.glob(f"{base}/*/*/*/*/_product.json")
    assert len(read) == len(below)
    for path in read:
        assert Path(path).read_bytes().startswith(b"{")
    asked = [r["path"] for r in emulator.requests() if r["path"].startswith(PRODUCT)]
    assert sorted(asked) == sorted(set(asked))


def test_no_more_requests_are_asked_ahead_at_once_than_the_setting(mount_factory, emulator):
    mount = mount_factory(extra=("--ahead", "2"))
    objects = shown_objects(emulator, "Lab Private")
    emulator.set(latency=0.1)
    emulator.clear_requests()
    assert os.listdir(mount.path / LAB)
    products = answered(emulator, PRODUCT, len(objects))
    assert in_flight_peak(products) == 2
    assert not [r for r in emulator.requests() if r["path"].startswith(DOWNLOAD)]


def test_first_byte_of_a_fresh_mount_waits_for_the_listing_and_the_download_only(
    mount_factory, emulator
):
    record = next(o for o in shown_objects(emulator, "Lab Private") if o["meta"].get("subject"))
    name = sorted(archive_members(emulator, record["_id"]))[0]
    path = LAB / expected_path(record, datatype_names(emulator)) / name
    emulator.set(latency=0.3)
    emulator.clear_requests()
    mount = mount_factory()
    began = time.time()
    head = run("head", "-c", "1", str(mount.path / path))
    ended = time.time()
    assert head.returncode == 0, head.stderr
    assert head.stdout.encode() == archive_members(emulator, record["_id"])[name][:1]
    log = emulator.requests()
    # The project list and the datatypes were asked at mount (one wait at most if still on
    # their way), the project's objects when it was looked up; then the download.
    assert round_trips(log, began, ended) <= 3
    assert sum(r["path"].startswith(DOWNLOAD) for r in log) == 1


def test_asked_ahead_is_run_once_per_pending_key_by_at_most_width_workers():
    ahead = Ahead(3)
    release = threading.Event()
    lock = threading.Lock()
    running: list[int] = []
    peak = [0]
    started = threading.Semaphore(0)
    calls: list[str] = []

    def ask(key: str) -> None:
        with lock:
            calls.append(key)
            running.append(1)
            peak[0] = max(peak[0], len(running))
        started.release()
        assert release.wait(30)
        with lock:
            running.pop()

    for n in range(10):
        ahead.submit(f"k{n}", lambda n=n: ask(f"k{n}"))
        ahead.submit(f"k{n}", lambda n=n: ask(f"again{n}"))
    for _ in range(3):
        assert started.acquire(timeout=30)
    assert not started.acquire(timeout=0.2)  # the fourth waits for a worker
    release.set()
    for _ in range(7):
        assert started.acquire(timeout=30)
    assert sorted(calls) == sorted(f"k{n}" for n in range(10))
    assert peak[0] == 3


def test_width_zero_asks_nothing_ahead():
    ahead = Ahead(0)
    ran = threading.Event()
    ahead.submit("key", ran.set)
    assert not ran.wait(0.2)


def test_listing_a_process_asks_for_its_tasks_listings_at_once_and_never_twice(mount, emulator):
    processes = mount.path / LAB / "processes"
    process = processes / sorted(os.listdir(processes))[0]
    emulator.set(latency=0.2)
    emulator.clear_requests()
    tasks = [name for name in os.listdir(process) if not name.startswith("_")]
    assert len(tasks) >= 3
    roots = [r for r in answered(emulator, TASK_LS, len(tasks)) if "p" not in r["query"]]
    assert len(roots) == len(tasks)
    assert in_flight_peak(roots) >= 2
    # Listing a task's directory asks for its subdirectories' listings, unlisted yet.
    subdirectories = [d for task in tasks for d in os.scandir(process / task) if d.is_dir()]
    assert subdirectories
    answered(emulator, TASK_LS, len(tasks) + len(subdirectories))
    for directory in subdirectories:
        os.listdir(directory.path)
    listings = [
        (r["path"], r["query"].get("p"))
        for r in emulator.requests()
        if r["path"].startswith(TASK_LS)
    ]
    assert len(listings) == len(set(listings))


def test_what_was_submitted_last_is_asked_first_in_its_order():
    ahead = Ahead(1)
    busy, release, done = threading.Event(), threading.Event(), threading.Semaphore(0)
    order: list[str] = []

    def block() -> None:
        busy.set()
        assert release.wait(30)

    def ask(key: str):
        return lambda: (order.append(key), done.release())

    ahead.submit("block", block)
    assert busy.wait(30)
    ahead.submit("a", ask("a"))
    ahead.submit("b", ask("b"))
    ahead.submit_all([("c", ask("c")), ("d", ask("d"))])
    ahead.submit("a", ask("a again"))  # waiting already: moved to the front, asked once
    release.set()
    for _ in range(4):
        assert done.acquire(timeout=30)
    assert order == ["a", "c", "d", "b"]
