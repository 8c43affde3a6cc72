"""Per-request latency of the emulator's by-id routes on a large generated project.

    python scripts/bench_emulator_requests.py [--objects N] [--requests R] [--dir DIR]

Generates Lab Private with about --objects tiny objects (kept in --dir for reuse), serves it, and
times R sequential requests over one keep-alive `requests.Session` for each by-id route a
filesystem listing makes per object: the download, the product, and `find={"_id": ...}&single`.
Each request names a distinct object, so nothing is answered from a per-id memo twice.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from blfs.emulator.control import EmulatorProcess, generated_data

OBJECTS_PER_SUBJECT = 10


def per_request(session: requests.Session, urls: list[str]) -> float:
    """Milliseconds per request, reading every body."""
    start = time.perf_counter()
    for url in urls:
        reply = session.get(url)
        reply.raise_for_status()
        reply.content  # noqa: B018 - the body is part of the cost
    return (time.perf_counter() - start) * 1000 / len(urls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()

    data = args.dir / f"objects-{args.objects}"
    subjects = max(1, args.objects // OBJECTS_PER_SUBJECT)
    generated_data(
        data, subjects=subjects, objects_per_subject=OBJECTS_PER_SUBJECT, object_size=1024
    )
    datasets = json.loads((data / "db" / "datasets.json").read_text())
    stored = [d["_id"] for d in datasets if d["status"] == "stored"]
    step = max(1, len(stored) // args.requests)
    ids = stored[::step][: args.requests]

    server = EmulatorProcess(data)
    try:
        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {server.emulator.token()}"
        api = f"{server.url}/warehouse"
        routes: dict[str, Callable[[str], str]] = {
            "download": lambda i: f"{api}/dataset/download/{i}",
            "product": lambda i: f"{api}/dataset/product/{i}",
            "find _id single": lambda i: (
                f"{api}/dataset?single=true&find=" + json.dumps({"_id": i})
            ),
        }
        session.get(routes["download"](ids[0])).raise_for_status()
        print(f"{len(datasets)} datasets, {len(ids)} sequential requests per route")
        for name, make in routes.items():
            print(f"{name:16}: {per_request(session, [make(i) for i in ids]):6.2f} ms/request")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
