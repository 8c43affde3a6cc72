"""Listing CPU of large directories through the mount, measured in one run against the emulator.

    python scripts/bench_listing.py [--dir DIR]

The project listings are put in the cache's metadata store, as a mount that listed them leaves
them (a server takes minutes to serve tens of thousands of objects; their listing is what is
measured here), then a new mount lists:
  1. `ls -l` of a 40,000-entry directory, first thing after the (re)mount: the mount's CPU, which
     includes reading the project's 40,000 records from disk and building its tree
     (goal < 1 s of mount CPU)
  2. `ls -l` of a 10,000- and a 30,000-entry directory whose project is in memory: the mount's
     CPU per entry, which is flat when a listing is paged in linear time (ratio 30k/10k ≈ 3)
  3. the same directories on local disk, for scale
The kernel is named: recent ones (6.18 here) read a listing in 256 KiB pages (some 1,500 entries
each), older ones in 4 KiB pages (23 entries), where the cost of paging shows most.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import mount_pid, user_env  # scripts/bench.py, beside this one

from blfs import mountinfo
from blfs.auth import TokenStore
from blfs.emulator.control import Emulator, generated_data, start_emulator
from blfs.metastore import FILENAME, MetaStore
from blfs.stored_record import head
from blfs.tree import object_path

SIZES = {"Lab Private": {"forty": 40_000}, "Open Diffusion": {"ten": 10_000, "thirty": 30_000}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def mounted(server: Emulator, home: Path, cache: Path) -> Iterator[tuple[Path, int]]:
    point = Path(tempfile.mkdtemp(prefix="mnt", dir=home))
    TokenStore(server.url, home=home).save(server.token("demo"))
    env = user_env(home)
    command = [sys.executable, "-m", "blfs", "mount", str(point), "--api", server.url]
    command += ["--cache-dir", str(cache), "--ttl", "3600"]
    subprocess.run(command, check=True, env=env, timeout=120)
    pid = mount_pid(point)
    try:
        yield point, pid
    finally:
        mountinfo.unmount(point)
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.02)
        point.rmdir()


def many(template: dict, count: int, tag: str, first: int) -> list[dict]:
    """`count` stored objects of one subject, datatype and tags: one directory of `count`."""
    meta = {**(template.get("meta") or {}), "subject": "many", "session": None}
    return [
        {**template, "_id": f"{first + i:024x}", "tags": [tag], "datatype_tags": [], "meta": meta}
        for i in range(count)
    ]


def add_objects(cache: Path, server: Emulator) -> dict[str, Path]:
    """Adds the directories of SIZES to the projects' listings kept in the metadata store; the
    path of each in the mount, by tag."""
    projects = {p["name"]: p["_id"] for p in server.db("projects")}
    datasets = server.db("datasets")
    datatypes = {d["_id"]: d for d in server.db("datatypes")}
    with sqlite3.connect(cache / FILENAME) as db:
        (scope,) = db.execute("SELECT DISTINCT scope FROM answers").fetchone()
    store = MetaStore(cache / FILENAME, scope)
    first, paths = 0xB0 << 88, {}
    for name, directories in SIZES.items():
        project_id = projects[name]
        template = next(d for d in datasets if d["project"] == project_id)
        key = json.dumps(["project", project_id])
        kept = store.load(key)
        assert kept is not None, f"{name} was not listed"
        listing = kept.body
        for tag, count in directories.items():
            added = many(template, count, tag, first)
            rows = [(r["_id"], json.dumps(head(r)), json.dumps(r)) for r in added]
            assert store.save_rows(key, listing["generation"], rows)
            listing = {**listing, "rows": listing["rows"] + count}
            first += count
            paths[tag] = Path("projects", name, *object_path(added[0], datatypes)[:-1])
        store.save(key, json.dumps(listing))
    store.close()
    return paths


def ls_l(directory: Path, pid: int | None = None) -> tuple[int, float, float]:
    """Entries `ls -l` shows, its seconds, and the mount's CPU seconds meanwhile."""
    before = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    done = subprocess.run(["ls", "-l", str(directory)], capture_output=True, check=True)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(pid) - before if pid else 0.0
    return done.stdout.count(b"\n") - 1, seconds, cpu


def local_copy(root: Path, directory: Path, count: int) -> Path:
    """A directory of `count` empty subdirectories named like the objects, on local disk."""
    local = root / directory.name
    local.mkdir()
    for i in range(count):
        (local / f"{i:024x}").mkdir()
    return local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data = generated_data(args.dir / "listing-data", seed=1)
    work = Path(tempfile.mkdtemp(prefix="bench-listing", dir=args.dir))
    rows = []
    try:
        cache = work / "cache"
        with start_emulator(data) as server:
            with mounted(server, work, cache) as (point, _):
                for name in SIZES:
                    os.listdir(point / "projects" / name)
            paths = add_objects(cache, server)
            with mounted(server, work, cache) as (point, pid):
                for tag, relative in paths.items():  # the first is the remount's first step
                    count = SIZES[relative.parts[1]][tag]
                    if tag == "ten":  # its project's tree built before what is timed
                        os.listdir(point / relative.parent)
                    entries, seconds, cpu = ls_l(point / relative, pid)
                    assert entries == count, (entries, count)
                    what = "first after the remount" if tag == "forty" else "project in memory"
                    _, local_seconds, _ = ls_l(local_copy(work, relative, count))
                    rows.append((count, what, cpu, seconds, local_seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"kernel {os.uname().release}")
    print(
        f"{'entries':>8} {'when':<24} {'mount CPU':>10} {'µs/entry':>9} {'ls -l':>8} {'local':>8}"
    )
    for count, what, cpu, seconds, local_seconds in rows:
        print(
            f"{count:>8} {what:<24} {cpu:>8.2f} s {cpu / count * 1e6:>9.1f}"
            f" {seconds:>6.2f} s {local_seconds:>6.2f} s"
        )
    first = next(cpu for _, what, cpu, _, _ in rows if what.startswith("first"))
    ten, thirty = (cpu for count, what, cpu, _, _ in rows if count in (10_000, 30_000))
    print(f"\ngoal: first ls -l of 40,000 entries after a remount < 1 s of mount CPU: {first:.2f} s"
          f" {'met' if first < 1 else 'NOT MET'}")  # fmt: skip
    print(f"30,000 / 10,000 entries, mount CPU: {thirty / max(ten, 0.01):.1f} (linear: 3)")


if __name__ == "__main__":
    main()
