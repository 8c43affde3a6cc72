"""Peak memory of the mount against the size of a project (issue 19), measured in one run against
the bundled emulator.

    python scripts/bench_memory.py [--sizes N [N ...]] [--dir DIR]

For each size N (default 10,000 and 40,000 objects, 10 per subject, 1 KB each, in "Lab Private"),
each step in a mount process of its own, so that each peak RSS (VmHWM) is the step's own:
  0. baseline: the mount, nothing listed: the interpreter, its libraries, the project list and the
     datatypes it asks for at mount (listing projects/ would do more: every project a listing
     shows is looked up, and its objects asked for ahead)
  1. metadata walk, cold cache: every directory of the project down to the objects' directories
     is listed and each object's directory is stat'ed, not entered (`find -regex <object id>
     -prune -ls`); bids/ and processes/ are left out, so no archive is downloaded
  2. `ls -lR` of the project, every archive cached (by `blfs prefetch` once: that cache is kept in
     --dir and reused by later runs), its metadata not yet known
  3. `find .` of the project in a new mount on the cache step 2 left (a remount)
Each row: the walk's seconds, the mount's CPU seconds from the walk's start until it is idle
(what it asked ahead included), the server's requests and downloads, the peak RSS, the peak above
the baseline in total and per object, and the metadata store's size on disk afterwards, for scale;
then the goal of each row (peak < 150 MB). Generated data and the prefetched cache are kept in
--dir; the other caches are removed after.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import mount_pid, mounted, peak_rss, scratch_home, user_env  # scripts/, beside this
from bench_listing import cpu_seconds

from blfs.emulator.control import Emulator, generated_data, start_emulator
from blfs.metastore import FILENAME as METADATA_FILE

PROJECT = Path("projects") / "Lab Private"
OBJECT_DIR = "[0-9a-f]{24}"
# Each walk: what it is, its command (run inside the project), and a pattern matching each line of
# its output that names an object's directory.
METADATA_WALK = (
    "metadata walk, cold cache",
    shlex.split(
        "find . -regextype posix-extended -path ./bids -prune -o -path ./processes -prune"
        f" -o -regex '.*/{OBJECT_DIR}' -prune -ls"
    ),
    rf" \./.*/{OBJECT_DIR}$",
)
CACHED_WALKS = [
    ("ls -lR, archives cached", ["ls", "-lR", "."], rf"^\./.*/{OBJECT_DIR}:$"),
    ("find . after a remount", ["find", "."], rf"^\./.*/{OBJECT_DIR}$"),
]
GOAL_BYTES = 150e6
TIMEOUT = 3600  # seconds any one walk or prefetch may take


@dataclass
class Step:
    what: str
    seconds: float
    cpu: float
    requests: int
    downloads: int
    peak: int
    store: int
    objects: int


def activity(server: Emulator, pid: int) -> tuple[int, bool, float]:
    """The requests the server has seen, whether it has answered them all, and the mount's CPU
    seconds."""
    log = server.requests()
    return len(log), all(entry.get("end") for entry in log), cpu_seconds(pid)


def settle(server: Emulator, pid: int, interval: float = 1.0, timeout: float = 120) -> None:
    """Waits, bounded, until for `interval` the mount has asked nothing new, been answered
    everything and hardly used the CPU: answers it asked ahead of a walk may still be arriving
    when the walk ends, and the memory they take is the mount's."""
    deadline = time.monotonic() + timeout
    last = activity(server, pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = activity(server, pid)
        if now[0] == last[0] and now[1] and now[2] - last[2] < interval / 20:
            return
        last = now
    print(f"the mount was still busy {timeout:.0f} s after the walk", file=sys.stderr)


def metadata_size(cache: Path) -> int:
    return sum(path.stat().st_size for path in cache.glob(f"{METADATA_FILE}*"))


def forget_metadata(cache: Path) -> None:
    """Keeps the cached archives, drops every metadata answer an earlier mount kept."""
    for path in cache.glob(f"{METADATA_FILE}*"):
        path.unlink()


def measure(
    server: Emulator,
    home: Path,
    cache: Path,
    what: str,
    walk: list[str] | None = None,
    pattern: str = "",
) -> Step:
    """`walk` run inside the project in a new mount on `cache` (None: nothing but the mount);
    `pattern` matches each line of its output that names an object's directory."""
    server.clear_requests()
    with mounted(server, home, cache, ttl=3600) as point:
        pid = mount_pid(point)
        before, start = cpu_seconds(pid), time.perf_counter()
        if walk is None:
            point.stat()
            printed = ""
        else:
            printed = subprocess.run(
                walk, cwd=point / PROJECT, check=True, capture_output=True, text=True,
                timeout=TIMEOUT,
            ).stdout  # fmt: skip
        seconds = time.perf_counter() - start
        settle(server, pid)
        cpu, peak = cpu_seconds(pid) - before, peak_rss(pid)
    log = server.requests()
    downloads = sum("/dataset/download/" in r["path"] for r in log)
    objects = len(re.findall(pattern, printed, re.MULTILINE)) if printed else 0
    return Step(what, seconds, cpu, len(log), downloads, peak, metadata_size(cache), objects)


def cached_project(server: Emulator, work: Path, home: Path, objects: int) -> Path:
    """A cache holding every archive of the project, made once by `blfs prefetch` and kept in
    `work`; made under another name and renamed when complete, so a half-made one is never used."""
    cache = work / f"memory-{objects}" / "cache"
    if cache.is_dir():
        return cache
    staging = cache.with_name(f"cache.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    print(f"caching every object of the {objects}-object project …", file=sys.stderr)
    with mounted(server, home, staging, ttl=3600) as point:
        prefetch = [sys.executable, "-m", "blfs", "prefetch", "-j", "8", str(point / PROJECT)]
        done = subprocess.run(
            prefetch, env=user_env(home), capture_output=True, text=True, timeout=TIMEOUT
        )
    if done.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"blfs prefetch of the {objects}-object project failed: {last}")
    staging.rename(cache)
    return cache


def bench_size(work: Path, objects: int) -> list[Step]:
    data = generated_data(
        work / f"many-{objects}",
        subjects=max(1, objects // 10),
        objects_per_subject=10,
        object_size=1024,
    )
    with start_emulator(data) as server, scratch_home(work) as home:
        steps = [measure(server, home, home / "cache-baseline", "baseline: mounted")]
        what, walk, pattern = METADATA_WALK
        steps.append(measure(server, home, home / "cache-cold", what, walk, pattern))
        cache = cached_project(server, work, home, objects)
        forget_metadata(cache)
        for what, walk, pattern in CACHED_WALKS:  # the second is a remount after the first
            steps.append(measure(server, home, cache, what, walk, pattern))
    return steps


def print_table(objects: int, steps: list[Step]) -> None:
    baseline = steps[0].peak
    print(f"\n{objects:,}-object project")
    header = (
        f"{'step':<28} {'walk':>8} {'CPU':>8} {'requests':>9} {'downl.':>7} {'objects':>7}"
        f" {'peak RSS':>9} {'above base':>10} {'KB/object':>9} {'store':>8}"
    )
    print(header)
    for step in steps:
        above = step.peak - baseline
        per_object = f"{above / objects / 1e3:.2f}" if step is not steps[0] else ""
        print(
            f"{step.what:<28} {step.seconds:>6.1f} s {step.cpu:>6.1f} s {step.requests:>9}"
            f" {step.downloads:>7} {step.objects:>7} {step.peak / 1e6:>6.0f} MB"
            f" {above / 1e6:>7.0f} MB {per_object:>9} {step.store / 1e6:>5.1f} MB"
        )


def print_goals(results: dict[int, list[Step]]) -> None:
    print(f"\n{'goal: peak RSS of the mount':<52} {'measured':>9} {'wanted':>9}")
    for objects, steps in results.items():
        for step in steps[1:]:
            met = step.peak < GOAL_BYTES
            print(
                f"{f'{objects:,} objects, {step.what}':<52} {step.peak / 1e6:>6.0f} MB"
                f" {'< 150 MB':>9}  {'met' if met else 'NOT MET'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for objects in args.sizes:
        results[objects] = bench_size(args.dir, objects)
        print_table(objects, results[objects])
    print_goals(results)


if __name__ == "__main__":
    main()
