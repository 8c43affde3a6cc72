"""pybids indexing of a big project's BIDS view through the mount vs the same tree on local disk.

    python scripts/bench_bids.py [--subjects N] [--dir DIR]

Generates (once, kept in --dir) data whose Lab Private project has N subjects with a T1w, a T2w,
a dwi and a func run each, mounts it, and times `BIDSLayout(view, derivatives=True)`: a cold index
(nothing cached; pybids stats every file, and a data file's size is in its archive, so each object
is fetched once), then a new index on the same mount (warm: archives cached, metadata in memory).
The baseline is the same tree copied to local disk (`cp -r` of the view, bytes and names equal).
Prints seconds, emulator requests and archive downloads for each, and the ratios.
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

import bids

from blfs import mountinfo
from blfs.auth import TokenStore
from blfs.emulator.control import Emulator, generated_data, start_emulator

DOWNLOAD = "/api/warehouse/dataset/download/"
MAPPED_DATATYPES_PER_SUBJECT = 4  # t1w, t2w, dwi, func: the first four generated per subject


@contextlib.contextmanager
def mounted(server: Emulator, home: Path) -> Iterator[Path]:
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
    home = Path(tempfile.mkdtemp(prefix="bench-bids-"))
    try:
        with start_emulator(data) as server, mounted(server, home) as point:
            view = point / "projects" / "Lab Private" / "bids"
            cold = measured(server, view)
            warm = measured(server, view)
            local = home / "local-copy"
            shutil.copytree(view, local)
            baseline, local_files = index(local)
        print(f"pybids BIDSLayout of Lab Private's BIDS view, {args.subjects} subjects")
        print(f"{'run':<34} {'seconds':>8} {'files':>7} {'requests':>9} {'downloads':>9} ratio")
        for label, (seconds, files, requests, downloads) in (
            ("mount, cold (nothing cached)", cold),
            ("mount, warm (archives cached)", warm),
        ):
            print(
                f"{label:<34} {seconds:8.2f} {files:7d} {requests:9d} {downloads:9d} "
                f"{seconds / baseline:5.1f}"
            )
        print(f"{'local disk copy (baseline)':<34} {baseline:8.2f} {local_files:7d}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
