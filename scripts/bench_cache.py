"""The cache's per-object cost as it fills: ObjectFetcher vs the bare downloads, in one run.

    python scripts/bench_cache.py [--objects N] [--dir DIR]

Fetches N tiny objects one after another through `ObjectFetcher` (each waits for its commit),
first into an unbounded cache, then into one bounded to half the bytes (so the second half evicts
on every fetch), and prints ms per object for the first and the last 500 against the same objects
downloaded bare (read to the end, nothing written). The per-object cost must stay flat as the
cache fills. Also times `Cache.usage()` (the status publisher calls it every second) and a new
`Cache` on the full root (what a second mount pays at start). Generated data is kept in --dir.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blfs.api import Client
from blfs.auth import TokenStore
from blfs.cache import Cache
from blfs.emulator.control import Emulator, generated_data, start_emulator
from blfs.fetch import Downloads, ObjectFetcher

WINDOW = 500


def object_ids(server: Emulator, count: int) -> list[str]:
    """Readable stored objects of the scale project (Lab Private)."""
    lab = next(p["_id"] for p in server.db("projects") if p["name"] == "Lab Private")
    ids = [
        d["_id"]
        for d in server.db("datasets")
        if d["project"] == lab and d["status"] == "stored" and not d.get("removed")
    ]
    if len(ids) < count:
        print(f"only {len(ids)} objects available", file=sys.stderr)
    return ids[:count]


def per_object(ids: list[str], action: Callable[[str], object]) -> list[float]:
    """Seconds taken by `action` for each id, in order."""
    times = []
    for object_id in ids:
        start = time.perf_counter()
        action(object_id)
        times.append(time.perf_counter() - start)
    return times


def windows(times: list[float]) -> tuple[float, float]:
    """Mean ms per object of the first and the last WINDOW."""
    return statistics.fmean(times[:WINDOW]) * 1e3, statistics.fmean(times[-WINDOW:]) * 1e3


def mean_seconds(action: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - start) / repeat


def bare(client: Client, object_id: str) -> None:
    download = client.download_dataset(object_id)
    try:
        while download.read(1 << 20):
            pass
    finally:
        download.close()


def fetch_all(client: Client, root: Path, max_bytes: int, ids: list[str]) -> list[float]:
    fetcher = ObjectFetcher(Downloads(Cache(root, max_bytes)), client.download_dataset)
    return per_object(ids, lambda object_id: fetcher.contents(object_id).listdir(""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()
    subjects = max(1, -(-args.objects // 10))
    data = args.dir / f"cache-{subjects}x10"
    generated_data(data, subjects=subjects, objects_per_subject=10, object_size=1024)
    work = Path(tempfile.mkdtemp(prefix="cache", dir=args.dir))
    try:
        with start_emulator(data) as server:
            home = work / "home"
            TokenStore(server.url, home=home).save(server.token("demo"))
            client = Client(server.url, TokenStore(server.url, home=home))
            ids = object_ids(server, args.objects)
            bare_times = per_object(ids, lambda object_id: bare(client, object_id))
            unbounded = fetch_all(client, work / "unbounded", 1 << 40, ids)
            cache = Cache(work / "unbounded", 1 << 40)
            usage = mean_seconds(cache.usage, 50)
            used = cache.usage()[0]
            entries = len(cache.entries())
            start_up = mean_seconds(lambda: Cache(work / "unbounded", 1 << 40).usage(), 3)
            bounded = fetch_all(client, work / "bounded", used // 2, ids)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = windows(bare_times)
    print(f"{len(ids)} objects, {used / len(ids):.0f} bytes each on average\n")
    print(f"{'ms per object':<44} {'first 500':>10} {'last 500':>10} {'last/first':>10}")
    for name, times in (
        ("bare download (no cache)", bare_times),
        ("ObjectFetcher, unbounded cache", unbounded),
        ("ObjectFetcher, bound = half (evicts in 2nd half)", bounded),
    ):
        first, last = windows(times)
        print(f"{name:<44} {first:>10.2f} {last:>10.2f} {last / first:>10.2f}")
    print(
        f"{'ratio to bare, unbounded':<44} {windows(unbounded)[0] / base[0]:>10.2f}"
        f" {windows(unbounded)[1] / base[1]:>10.2f}"
    )
    print(
        f"{'ratio to bare, bounded':<44} {windows(bounded)[0] / base[0]:>10.2f}"
        f" {windows(bounded)[1] / base[1]:>10.2f}"
    )
    print(f"\nCache.usage() with {entries} entries: {usage * 1e3:.3f} ms")
    print(f"new Cache + first usage() on {entries} entries: {start_up * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
