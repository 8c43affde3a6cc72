"""Latency hidden by asking ahead (issue 19), measured in one run against the bundled emulator
with a round trip injected into every API request.

    python scripts/bench_latency.py [--objects N] [--latency SECONDS] [--ahead N] [--dir DIR]
                                    [--no-baseline]

For the mount asking nothing ahead (`--ahead 0`, as before; not with --no-baseline, which saves
its requests x latency of waiting) and for `--ahead N`:
  1. `ls -lR` of an N-object project whose archives are cached (its metadata not yet known):
     seconds, requests (and how many repeat an earlier one), and the ratio of the seconds to
     those requests made one after another (requests x latency; goal < 1/8), with the most
     requests the server saw in flight at once
  2. first byte of a data-object's file reached by its projects/sub-… path in a fresh mount:
     seconds, the round trips waited one after another from the server's request log (goal <= 3:
     two of waiting plus the download's own) and the requests made since the mount started
Generated data is kept in --dir and reused by later runs; the caches are removed after.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import user_env  # scripts/bench.py, beside this one

from blfs import mountinfo
from blfs.auth import TokenStore
from blfs.emulator.control import (
    Emulator,
    generated_data,
    in_flight_peak,
    round_trips,
    start_emulator,
)
from blfs.metastore import FILENAME as METADATA_FILE

PROJECT = Path("projects") / "Lab Private"


@contextlib.contextmanager
def mounted(server: Emulator, home: Path, cache: Path, ahead: int) -> Iterator[Path]:
    """A background mount (`blfs mount` returns once it is up), unmounted and ended after."""
    point = Path(tempfile.mkdtemp(prefix="mnt", dir=home))
    TokenStore(server.url, home=home).save(server.token("demo"))
    env = user_env(home)
    command = [sys.executable, "-m", "blfs", "mount", str(point), "--api", server.url]
    command += ["--cache-dir", str(cache), "--ttl", "300", "--ahead", str(ahead)]
    subprocess.run(command, check=True, env=env, timeout=120)
    try:
        yield point
    finally:
        mountinfo.unmount(point)
        deadline = time.monotonic() + 60
        while mountinfo.is_mounted(point) and time.monotonic() < deadline:
            time.sleep(0.05)
        point.rmdir()


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    return time.perf_counter() - start


def forget_metadata(cache: Path) -> None:
    """Keeps the cached archives, drops every metadata answer an earlier mount kept."""
    for path in cache.glob(f"{METADATA_FILE}*"):
        path.unlink()


def cache_project(server: Emulator, home: Path, cache: Path) -> str:
    """Caches every archive of the project; returns one data file's path below the mount."""
    with mounted(server, home, cache, ahead=16) as point:
        env = user_env(home)
        prefetch = [sys.executable, "-m", "blfs", "prefetch", "-j", "8", str(point / PROJECT)]
        subprocess.run(prefetch, check=True, env=env, timeout=3600, stderr=subprocess.DEVNULL)
        subjects = sorted((point / PROJECT).glob("sub-*"))
        image = next(path for subject in subjects for path in subject.rglob("*.nii.gz"))
        return str(image.relative_to(point))


def ls_lr(server: Emulator, home: Path, cache: Path, ahead: int, latency: float) -> list[str]:
    forget_metadata(cache)
    server.set(latency=latency)
    server.clear_requests()
    with mounted(server, home, cache, ahead) as point:
        seconds = timed(["ls", "-lR", str(point / PROJECT)])
        log = server.requests()
    server.set(latency=0)
    sequential = len(log) * latency
    repeated = len(log) - len({(r["path"], str(sorted(r["query"].items()))) for r in log})
    return [
        f"ls -lR, ahead {ahead}",
        f"{seconds:.2f} s",
        f"{len(log)} ({repeated} repeated) = {sequential:.1f} s one after another",
        f"{seconds / sequential:.3f}",
        f"{in_flight_peak(log)}",
    ]


def first_byte(server: Emulator, home: Path, path: str, ahead: int, latency: float) -> list[str]:
    cache = home / f"fresh-{ahead}"
    server.set(latency=latency)
    server.clear_requests()
    with mounted(server, home, cache, ahead) as point:
        began = time.time()
        seconds = timed(["head", "-c", "1", str(point / path)])
        log = server.requests()
    server.set(latency=0)
    shutil.rmtree(cache, ignore_errors=True)
    waves = round_trips(log, began, began + seconds)
    return [
        f"first byte, ahead {ahead}",
        f"{seconds:.2f} s = {seconds / latency:.1f} x latency",
        f"{len(log)} since the mount began",
        f"{waves} round trips",
        f"{in_flight_peak(log)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--ahead", type=int, default=16)
    parser.add_argument("--no-baseline", action="store_true", help="skip --ahead 0")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data = generated_data(
        args.dir / f"many-{args.objects}",
        subjects=max(1, args.objects // 10),
        objects_per_subject=10,
        object_size=1024,
    )
    rows = [["what", "time", "requests", "ratio", "peak in flight"]]
    with start_emulator(data) as server:
        home = Path(tempfile.mkdtemp(prefix="bench-latency", dir=args.dir))
        try:
            cache = home / "cache"
            path = cache_project(server, home, cache)
            widths = (args.ahead,) if args.no_baseline else (0, args.ahead)
            for ahead in widths:
                rows.append(ls_lr(server, home, cache, ahead, args.latency))
            for ahead in widths:
                rows.append(first_byte(server, home, path, ahead, args.latency))
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(f"\n{args.objects}-object project, {args.latency * 1000:.0f} ms per request")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("goals: ls -lR ratio < 0.125; first byte <= 3 round trips (2 of waiting + the download)")


if __name__ == "__main__":
    main()
