"""`blfs prefetch`: fetch every object under some mounted paths ahead of use, several at a time.

It works through the mount, so the mount's one-download-per-object rule, its cache and its
credentials apply unchanged, and an interrupted run simply leaves fewer objects cached. It says
before it starts when the objects will not all fit in the cache, and at the end what the bound
evicted again.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, TextIO

from blfs import mounting, status
from blfs.cache import object_key, settled
from blfs.errors import BlfsError
from blfs.ids import is_object_id
from blfs.units import human

_STILL_RUNNING = (errno.EINTR, errno.EAGAIN)  # a wait never times out while bytes come
_EVICTED_SHOWN = 5


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


def objects_at(path: Path) -> list[Path]:
    """The object directories a path in a mount names: the one holding it (a file or directory
    inside an object), else those under it."""
    for candidate in (path, *path.parents):
        if is_object_dir(candidate):
            return [candidate]
    if not path.is_dir():
        raise BlfsError(f"{path} is a file outside any data-object (nothing to fetch)")
    return find_objects([path])


def mount_of(path: Path) -> dict[str, Any]:
    """The status record of the blfs mount holding `path`; a one-line error for any other path."""
    if not path.exists():
        raise BlfsError(f"{path} does not exist")
    record = status.mount_holding(path)
    if record is None:
        raise BlfsError(f"{path} is not inside a blfs mount (prefetch fetches through one)")
    return record


@dataclass
class _Job:
    path: Path
    size: int
    cache_dir: Path
    done: bool = False
    error: str | None = None

    @property
    def key(self) -> str:
        return object_key(self.path.name)

    def verdict(self) -> str:
        outcome = f"failed: {self.error}" if self.error else "cached"
        return f"{self.path}  {human(self.size)}  {outcome}"


@dataclass
class _Run:
    jobs: list[_Job]
    mountpoints: list[str]
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: Queue[_Job] = field(default_factory=Queue)

    def in_flight_bytes(self) -> int:
        downloads: dict[str, dict[str, Any]] = {}
        for point in self.mountpoints:
            for item in (status.mount_record(point) or {}).get("downloads", []):
                downloads[item.get("id")] = item
        return sum(
            downloads.get(f"object {job.path.name}", {}).get("bytes_done", 0)
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


class _Bound:
    """One cache's bound against the objects fetched into it: the warning before, the account of
    what it evicted after."""

    def __init__(self, cache_dir: Path, jobs: list[_Job]) -> None:
        self.cache = mounting.open_cache(cache_dir)
        self.jobs = jobs
        self.before = self._entries()

    def _entries(self) -> dict[str, int]:
        return {entry.key: entry.size for entry in self.cache.entries()}

    def warning_before(self) -> str | None:
        total = sum(job.size for job in self.jobs)
        if total <= self.cache.max_bytes:
            return None
        return (
            f"{len(self.jobs)} objects of {human(total)} do not fit in the cache's bound of"
            f" {human(self.cache.max_bytes)} ({self.cache.root}): at most that much of them"
            " stays cached; the rest is evicted again as the fetch goes on,"
            " least recently used first"
        )

    def report_after(self) -> list[str]:
        after = self._entries()
        fetched = [job for job in self.jobs if not job.error]
        evicted = [job for job in fetched if job.key not in after]
        earlier = [key for key in self.before if key not in after]
        if not evicted and not earlier:
            return []
        kept = sum(after.get(job.key, 0) for job in fetched)
        lines = [
            f"the cache's bound of {human(self.cache.max_bytes)} ({self.cache.root}) kept"
            f" {human(kept)} of what was fetched; evicted to stay within it:"
            f" {len(evicted)} fetched objects ({human(sum(job.size for job in evicted))}) and"
            f" {len(earlier)} entries cached before ({human(sum(self.before[k] for k in earlier))})"
        ]
        lines += [f"  evicted: {job.path}" for job in evicted[:_EVICTED_SHOWN]]
        if len(evicted) > _EVICTED_SHOWN:
            lines.append(f"  … and {len(evicted) - _EVICTED_SHOWN} more")
        return lines


def _size_hint(path: Path) -> int:
    try:
        return int(json.loads((path / "_info.json").read_bytes()).get("size") or 0)
    except (OSError, ValueError):
        return 0


def _fetch(job: _Job, run: _Run) -> None:
    """Lists the object (which fetches it) until its download has finished or failed."""
    while True:
        try:
            os.listdir(job.path)
            break
        except OSError as exc:
            if exc.errno not in _STILL_RUNNING:
                job.error = os.strerror(exc.errno or errno.EIO)
                break
    while not job.error and not settled(job.cache_dir, job.key):
        time.sleep(0.05)  # the listing came once verified; the commit follows
    with run.lock:
        job.done = True
    run.finished.put(job)


def _jobs(paths: list[Path]) -> tuple[list[_Job], list[str]]:
    """The objects under the paths, each with the cache it goes into; the mountpoints."""
    mounts = {path: mount_of(path) for path in paths}
    jobs = {}
    for path, record in mounts.items():
        for found in objects_at(path):
            jobs[found] = _Job(found, _size_hint(found), Path(record["cache_dir"]))
    mountpoints = [record["mountpoint"] for record in mounts.values()]
    return sorted(jobs.values(), key=lambda job: job.path), list(dict.fromkeys(mountpoints))


def _bounds(jobs: list[_Job]) -> list[_Bound]:
    """One `_Bound` per cache dir the objects go into (mounts may share one)."""
    by_cache: dict[Path, list[_Job]] = {}
    for job in jobs:
        by_cache.setdefault(job.cache_dir, []).append(job)
    return [_Bound(cache_dir, group) for cache_dir, group in by_cache.items()]


# How often a progress line is written where the output is not a terminal (a batch job's log).
LOG_PROGRESS_EVERY = 30.0


class _Output:
    """Where prefetch writes: on a terminal a bar redrawn in place, elsewhere plain lines (one
    every LOG_PROGRESS_EVERY seconds); the objects that failed always, every object's outcome
    when verbose, nothing but warnings and failures when quiet."""

    def __init__(self, out: TextIO, verbosity: int) -> None:
        self.out = out
        self.verbosity = verbosity
        self.terminal = out.isatty()
        self._last_line = time.monotonic()

    def _line(self, text: str, end: str = "\n") -> None:
        print(f"\r\033[K{text}" if self.terminal else text, end=end, file=self.out, flush=True)

    def warn(self, lines: Iterable[str]) -> None:
        """A warning: its first line says so, the others follow as they are."""
        for number, line in enumerate(lines):
            self._line(f"{'' if number else 'blfs: warning: '}{line}")

    def finished(self, job: _Job) -> None:
        if job.error or self.verbosity > 0:
            self._line(job.verdict())

    def progress(self, run: _Run, last: bool = False) -> None:
        if self.verbosity < 0:
            return
        if self.terminal:
            self._line(run.line(), end="\n" if last else "")
        elif last or time.monotonic() - self._last_line >= LOG_PROGRESS_EVERY:
            self._last_line = time.monotonic()
            self._line(run.line())


def prefetch(
    paths: list[Path], parallel: int = 4, out: TextIO = sys.stderr, verbosity: int = 0
) -> int:
    """Fetches every object under the paths (or holding them), which must lie in blfs mounts;
    returns how many failed.

    Workers are daemon threads, so Ctrl-C ends the command at once; the mount finishes or drops
    the downloads already started, and a re-run skips what is cached. Only this thread writes.
    """
    output = _Output(out, verbosity)
    jobs, mountpoints = _jobs(paths)
    bounds = _bounds(jobs)
    for bound in bounds:
        output.warn(filter(None, [bound.warning_before()]))
    run = _Run(jobs, mountpoints)
    queue: Queue[_Job] = Queue()
    for job in run.jobs:
        queue.put(job)

    def work() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except Empty:
                return
            _fetch(job, run)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers) or not run.finished.empty():
        while not run.finished.empty():
            output.finished(run.finished.get())
        output.progress(run)
        for worker in workers:
            worker.join(0.5 / parallel)
    output.progress(run, last=True)
    for bound in bounds:
        output.warn(bound.report_after())
    return sum(1 for job in run.jobs if job.error)
