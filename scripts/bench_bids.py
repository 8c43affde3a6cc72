"""pybids indexing of a big project's BIDS view through the mount vs the same tree on local disk.

    python scripts/bench_bids.py [--subjects N] [--dir DIR]

Generates (once, kept in --dir) data whose Lab Private project has N subjects with a T1w, a T2w,
a dwi and a func run each, plus a copy of it whose objects are stored on S3 (`storage: s3fs`, as
brainlife's archiver stores them file by file), and times `BIDSLayout(view, derivatives=True)`
through a fresh mount of each: a cold index (nothing cached). pybids stats every file; an
S3-stored object's file sizes come from its file listing (one request, no download), while an
archive-stored object's are in its archive, so there each object is fetched once. Then a second
index on the S3 mount (warm: metadata in memory). The baseline is the same tree copied to local
disk (`cp -r` of the view, bytes and names equal). Prints seconds, emulator requests and archive
downloads for each, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bids

from blfs import mountinfo
from blfs.auth import TokenStore
from blfs.emulator.control import Emulator, generated_data, start_emulator
from blfs.emulator.s3files import S3_STORAGE, recorded_size

DOWNLOAD = "/api/warehouse/dataset/download/"
MAPPED_DATATYPES_PER_SUBJECT = 4  # t1w, t2w, dwi, func: the first four generated per subject


@contextlib.contextmanager
def mounted(server: Emulator, home: Path) -> Iterator[Path]:
    home.mkdir(parents=True, exist_ok=True)
    point = Path(tempfile.mkdtemp(prefix="mnt", dir=home))
    TokenStore(server.url, home=home).save(server.token("demo"))
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "blfs", "mount", str(point), "--api", server.url]
    command += ["--cache-dir", str(home / "cache"), "--ttl", "3600"]
    subprocess.run(command, check=True, env=env, timeout=60)
    try:
        yield point
    finally:
        mountinfo.unmount(point)


def index(root: Path) -> tuple[float, int]:
    """Seconds to index `root` with pybids, and the number of files it found."""
    start = time.perf_counter()
    layout = bids.BIDSLayout(str(root), derivatives=True)
    return time.perf_counter() - start, len(layout.get(return_type="filename"))


def measured(server: Emulator, root: Path) -> tuple[float, int, int, int]:
    """(seconds, files, requests, archive downloads) of one index of `root`."""
    server.clear_requests()
    seconds, files = index(root)
    log = server.requests()
    return seconds, files, len(log), sum(r["path"].startswith(DOWNLOAD) for r in log)


def stored_on_s3(data: Path) -> Path:
    """A copy of `data` (archives hard-linked) whose objects are all stored the `s3fs` way,
    their `size` the total of their files as the warehouse records it for that storage."""
    copy = data.with_name(f"{data.name}-s3")
    if copy.is_dir():
        return copy
    staging = data.with_name(f"{copy.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(data, staging, copy_function=os.link)
    table = staging / "db" / "datasets.json"
    records = json.loads(table.read_text())
    for record in records:
        archive = next((staging / "archives").glob(f"{record['_id']}.*"), None)
        record["storage"] = S3_STORAGE
        if archive is not None:
            record["size"] = recorded_size(record, archive)
    table.unlink()  # a hard link no more: the original keeps its own records
    table.write_text(json.dumps(records, indent=1))
    staging.rename(copy)
    return copy


def cold_index(data: Path, home: Path) -> tuple[tuple[float, int, int, int], ...]:
    """A cold then a warm index of Lab Private's view through a fresh mount of `data`."""
    with start_emulator(data) as server, mounted(server, home) as point:
        view = point / "projects" / "Lab Private" / "bids"
        return measured(server, view), measured(server, view)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    args = parser.parse_args()
    name = f"bids-{args.subjects}"
    if not (args.dir / name).is_dir():
        print(f"generating {name} …", file=sys.stderr)
    data = generated_data(
        args.dir / name,
        subjects=args.subjects,
        objects_per_subject=MAPPED_DATATYPES_PER_SUBJECT,
        object_size=4096,
    )
    on_s3 = stored_on_s3(data)
    home = Path(tempfile.mkdtemp(prefix="bench-bids-"))
    try:
        s3_cold, s3_warm = cold_index(on_s3, home / "s3")
        tar_cold, _ = cold_index(data, home / "tar")
        with start_emulator(on_s3) as server, mounted(server, home / "copy") as point:
            local = home / "local-copy"
            shutil.copytree(point / "projects" / "Lab Private" / "bids", local)
        baseline, local_files = index(local)
        print(f"pybids BIDSLayout of Lab Private's BIDS view, {args.subjects} subjects")
        print(f"{'run':<40} {'seconds':>8} {'files':>7} {'requests':>9} {'downloads':>9} ratio")
        for label, (seconds, files, requests, downloads) in (
            ("mount, S3-stored objects, cold", s3_cold),
            ("mount, S3-stored objects, second index", s3_warm),
            ("mount, archive-stored objects, cold", tar_cold),
        ):
            print(
                f"{label:<40} {seconds:8.2f} {files:7d} {requests:9d} {downloads:9d} "
                f"{seconds / baseline:5.1f}"
            )
        print(f"{'local disk copy (baseline)':<40} {baseline:8.2f} {local_files:7d}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
