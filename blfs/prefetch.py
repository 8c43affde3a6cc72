"""`blfs prefetch`: fetch every object under some mounted paths ahead of use, several at a time.

It works through the mount, so the mount's one-download-per-object rule, its cache and its
credentials apply unchanged, and an interrupted run simply leaves fewer objects cached.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import TextIO

from blfs import status
from blfs.ids import is_object_id
from blfs.units import human

_STILL_RUNNING = (errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN)


def is_object_dir(path: Path) -> bool:
    """An object directory, recognised without listing it (a listing would fetch it)."""
    return is_object_id(path.name) and (path / "_info.json").exists()


def find_objects(roots: list[Path]) -> list[Path]:
    """Object directories under the roots; never descends into one."""
    found: list[Path] = []
    pending = list(roots)
    while pending:
        path = pending.pop()
        if is_object_dir(path):
            found.append(path)
            continue
        with os.scandir(path) as entries:
            pending.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    return sorted(set(found))


@dataclass
class _Job:
    path: Path
    size: int
    done: bool = False
    error: str | None = None


@dataclass
class _Run:
    jobs: list[_Job]
    mountpoint: str | None
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def in_flight_bytes(self) -> int:
        record = status.mount_record(self.mountpoint) if self.mountpoint else None
        downloads = {d.get("id"): d for d in (record or {}).get("downloads", [])}
        return sum(
            downloads.get(job.path.name, {}).get("bytes_done", 0)
            for job in self.jobs
            if not job.done
        )

    def line(self) -> str:
        with self.lock:
            finished = [job for job in self.jobs if job.done]
            done_bytes = sum(job.size for job in finished if not job.error)
        total = sum(job.size for job in self.jobs) or 1
        current = done_bytes + self.in_flight_bytes()
        width = 30
        filled = min(width, int(width * current / total))
        rate = current / max(time.monotonic() - self.started, 1e-6)
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {len(finished)}/{len(self.jobs)} objects"
            f"  {human(current)} of {human(total)}  {human(rate)}/s"
        )


def _mountpoint_of(path: Path) -> str | None:
    real = os.path.realpath(path)
    for record in status.running_mounts():
        point = record.get("mountpoint", "")
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return point
    return None


def _size_hint(path: Path) -> int:
    try:
        return int(json.loads((path / "_info.json").read_bytes()).get("size") or 0)
    except (OSError, ValueError):
        return 0


def _fetch(job: _Job, run: _Run, out: TextIO) -> None:
    """Lists the object (which fetches it) until its download has finished or failed."""
    while True:
        try:
            os.listdir(job.path)
            break
        except OSError as exc:
            if exc.errno not in _STILL_RUNNING:
                job.error = os.strerror(exc.errno or errno.EIO)
                break
    with run.lock:
        job.done = True
    verdict = f"failed: {job.error}" if job.error else "cached"
    print(f"\r\033[K{job.path}  {human(job.size)}  {verdict}", file=out, flush=True)


def prefetch(paths: list[Path], parallel: int = 4, out: TextIO = sys.stderr) -> int:
    """Fetches every object under the paths; returns how many failed.

    Workers are daemon threads, so Ctrl-C ends the command at once; the mount finishes or drops
    the downloads already started, and a re-run skips what is cached.
    """
    objects = find_objects(paths)
    run = _Run([_Job(path, _size_hint(path)) for path in objects], _mountpoint_of(paths[0]))
    queue: Queue[_Job] = Queue()
    for job in run.jobs:
        queue.put(job)

    def work() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except Empty:
                return
            _fetch(job, run, out)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        print(f"\r\033[K{run.line()}", end="", file=out, flush=True)
        for worker in workers:
            worker.join(0.5 / parallel)
    print(f"\r\033[K{run.line()}", file=out, flush=True)
    return sum(1 for job in run.jobs if job.error)
