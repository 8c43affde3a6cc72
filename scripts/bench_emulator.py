"""Download throughput of the emulator on loopback, compared with reading the file from disk.

    python scripts/bench_emulator.py [--size BYTES] [--clients N] [--rounds R] [--dir DIR]

Generates one Lab Private object of about --size bytes (kept in --dir for reuse), serves it, and
has N clients download it concurrently with requests, R times each. Prints the aggregate rate and
its ratio to N concurrent local reads of the same archive file (page cache warm for both).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from blfs.emulator.control import EmulatorProcess, generated_data

CHUNK = 1 << 20


def read_local(path: Path) -> int:
    total = 0
    with path.open("rb", buffering=0) as source:
        while block := source.read(CHUNK):
            total += len(block)
    return total


def download(url: str, token: str) -> int:
    total = 0
    with requests.get(url, headers={"Authorization": f"Bearer {token}"}, stream=True) as reply:
        reply.raise_for_status()
        for block in reply.iter_content(CHUNK):
            total += len(block)
    return total


def rate(work, jobs: int, rounds: int) -> float:
    """Bytes per second of `jobs` concurrent calls of `work`, `rounds` times each."""
    with ThreadPoolExecutor(jobs) as pool:
        start = time.perf_counter()
        total = sum(pool.map(lambda _: work(), range(jobs * rounds)))
        return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()

    data = args.dir / f"size-{args.size}"
    generated_data(data, subjects=1, objects_per_subject=1, object_size=args.size)
    datasets = json.loads((data / "db" / "datasets.json").read_text())
    biggest = max((d for d in datasets if d.get("size")), key=lambda d: d["size"])
    archive = next((data / "archives").glob(f"{biggest['_id']}.*"))

    server = EmulatorProcess(data)
    try:
        token = server.emulator.token()
        url = f"{server.url}/warehouse/dataset/download/{biggest['_id']}"
        read_local(archive)
        local = rate(lambda: read_local(archive), args.clients, args.rounds)
        served = rate(lambda: download(url, token), args.clients, args.rounds)
    finally:
        server.stop()
    size_mb = biggest["size"] / 1e6
    print(f"object {biggest['_id']}: {size_mb:.0f} MB, {args.clients} clients x {args.rounds}")
    print(f"local disk read : {local / 1e9:6.2f} GB/s")
    print(f"emulator (HTTP) : {served / 1e9:6.2f} GB/s")
    print(f"ratio HTTP/local: {served / local:6.2f}")


if __name__ == "__main__":
    main()
