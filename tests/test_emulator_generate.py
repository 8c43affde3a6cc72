"""`python -m blfs.emulator generate`: deterministic, complete cast, fast at scale, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from blfs.emulator.control import generate_data

NAMES = {
    "Lab Private",
    "BIDS Study",
    "Open Diffusion",
    "Guest Study",
    "Agreement Study",
    "Hidden Lab",
    "Listed Lab",
    "Old Project",
    "Twin Study",
}


def db(root: Path, name: str) -> list[dict]:
    return json.loads((root / "db" / f"{name}.json").read_text())


def test_same_seed_same_db_other_seed_other_ids(tmp_path):
    # Fresh dirs: the session's emulator_data is changed by tests that replace archives.
    first = generate_data(tmp_path / "first", seed=1)
    again = generate_data(tmp_path / "again", seed=1)
    other = generate_data(tmp_path / "other", seed=2)
    for path in sorted((first / "db").glob("*.json")):
        assert path.read_bytes() == (again / "db" / path.name).read_bytes(), path.name
    for path in sorted((first / "archives").iterdir()):
        assert path.read_bytes() == (again / "archives" / path.name).read_bytes()
    assert {p["_id"] for p in db(other, "projects")}.isdisjoint(
        p["_id"] for p in db(first, "projects")
    )


def test_the_fixed_cast_is_there(emulator_data):
    projects = db(emulator_data, "projects")
    assert {p["name"] for p in projects} == NAMES
    assert sum(p["name"] == "Twin Study" for p in projects) == 2
    assert all(isinstance(p["group_id"], int) and len(p["_id"]) == 24 for p in projects)
    users = {u["username"]: u for u in db(emulator_data, "users")}
    assert (users["demo"]["sub"], users["alice"]["sub"]) == (1, 2)
    lab = next(p for p in projects if p["name"] == "Lab Private")
    objects = [d for d in db(emulator_data, "datasets") if d["project"] == lab["_id"]]
    grid = [d for d in objects if d["status"] == "stored" and not d["removed"]]
    assert len(grid) >= 4 * 7
    assert any(d["status"] == "failed" for d in objects)
    assert any(d["status"] == "storing" for d in objects)
    assert any(d["removed"] for d in objects)
    assert any("subject" not in d["meta"] for d in objects)
    assert any("session" in d["meta"] for d in objects)
    assert any("." in tag for d in objects for tag in d["tags"])
    keys = [(d["meta"].get("subject"), d["datatype"], tuple(d["tags"])) for d in grid]
    assert len(keys) > len(set(keys))


def test_scale_options_size_the_lab_project(tmp_path):
    root = generate_data(
        tmp_path / "d", seed=3, subjects=2, objects_per_subject=3, object_size=200_000
    )
    lab = next(p for p in db(root, "projects") if p["name"] == "Lab Private")
    objects = [d for d in db(root, "datasets") if d["project"] == lab["_id"]]
    images = [d for d in objects if d["status"] == "stored" and d["size"] > 200_000]
    assert len(images) >= 4
    assert {d["meta"].get("subject") for d in objects} >= {"0001", "0002"}


def test_ten_thousand_objects_generate_in_under_a_minute(tmp_path):
    started = time.monotonic()
    root = generate_data(tmp_path / "big", subjects=1000, objects_per_subject=10)
    elapsed = time.monotonic() - started
    lab = next(p for p in db(root, "projects") if p["name"] == "Lab Private")
    assert sum(d["project"] == lab["_id"] for d in db(root, "datasets")) >= 10_000
    assert elapsed < 60, f"took {elapsed:.1f} s"


# Runs the emulator's command line, then prints the peak RSS (KiB) of this process's own memory:
# a child's ru_maxrss also counts the parent's pages it was forked with (pytest's, hundreds of MB).
_PEAK_AFTER = """
import runpy, sys
sys.argv = ["blfs.emulator", *sys.argv[1:]]
try:
    runpy.run_module("blfs.emulator", run_name="__main__")
except SystemExit as end:
    assert not end.code
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""


def test_big_objects_are_streamed_not_held_in_memory(tmp_path):
    size = 400_000_000
    args = ["generate", str(tmp_path / "d"), "--subjects", "1", "--objects-per-subject", "1"]
    args += ["--object-size", str(size)]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_AFTER, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) * 1024 < size / 2
    biggest = max(d.get("size", 0) for d in db(tmp_path / "d", "datasets"))
    assert biggest > 0.99 * size
