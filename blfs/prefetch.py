"""`blfs prefetch`: fetch every object under some mounted paths ahead of use, several at a time,
and leave everything under them usable offline (DESIGN §3: a login node prefetches, compute nodes
without internet read): every directory listed, each object's archive and `_product.json`, every
other file read (task outputs, participant tables, …), and the project's `bids/` view listed.

It works through the mount, so the mount's one-download-per-object rule, its cache, its metadata
store and its credentials apply unchanged, and an interrupted run simply leaves fewer objects
cached. It says before it starts when the objects will not all fit in the cache, and at the end
what the bound evicted again.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, TextIO

from blfs import mounting, status
from blfs.cache import object_key, settled
from blfs.errors import BlfsError
from blfs.ids import is_object_id
from blfs.namespace import OBJECT_METADATA
from blfs.units import human

_STILL_RUNNING = (errno.EINTR, errno.EAGAIN)  # a wait never times out while bytes come
_EVICTED_SHOWN = 5


def is_object_dir(path: Path) -> bool:
    """An object directory, recognised without listing it (a listing would fetch it)."""
    return is_object_id(path.name) and (path / "_info.json").exists()


def is_bids_view(path: Path) -> bool:
    """The `bids/` view of a project or a release: its data files are the objects' members."""
    project_or_release = (path.parent / "project.json").exists() or (
        path.parent.parent / "publication.json"
    ).exists()
    return path.name == "bids" and project_or_release


@dataclass
class Found:
    """What lies under some paths: object directories (never entered: listing one fetches it),
    and the other files, outside BIDS views, to read."""

    objects: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def find_objects(roots: list[Path]) -> Found:
    """Lists every directory under the roots (so its listing is kept for offline use), finds the
    object directories and the files to read; BIDS views are listed, their files not read."""
    found = Found()
    pending = [(root, False) for root in roots]
    while pending:
        path, in_view = pending.pop()
        if is_object_dir(path):
            found.objects.append(path)
            continue
        in_view = in_view or is_bids_view(path)
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), in_view))
                elif not in_view:
                    found.files.append(Path(entry.path))
    found.objects = sorted(set(found.objects))
    found.files = sorted(set(found.files))
    return found


def views_showing(path: Path, mountpoint: str) -> list[Path]:
    """The `bids/` view of the project or release that `path` lies below: the view shows the
    objects found there (a walk of the project or release itself, or of its view, covers it)."""
    path = path.resolve()
    top = mountpoint.rstrip("/") + "/"
    for parent in path.parents:
        if not str(parent).startswith(top):
            return []
        view = parent / "bids"
        if is_bids_view(view):
            return [] if view == path or view in path.parents else [view]
    return []


def objects_at(path: Path) -> Found:
    """What a path in a mount names: the object holding it (a file or directory inside an
    object), else what lies under it."""
    for candidate in (path, *path.parents):
        if is_object_dir(candidate):
            return Found(objects=[candidate])
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


def _until_done(action: Callable[[], object]) -> str | None:
    """Runs `action` (a read through the mount) until it is not interrupted; its error, if any."""
    while True:
        try:
            action()
            return None
        except OSError as exc:
            if exc.errno not in _STILL_RUNNING:
                return os.strerror(exc.errno or errno.EIO)


def _read(path: Path) -> None:
    with open(path, "rb") as file:
        while file.read(1 << 20):
            pass


def _fetch(job: _Job, run: _Run) -> None:
    """Lists the object (which fetches it) until its download has finished or failed; reads its
    metadata files (`_product.json` is asked of the server once, then kept)."""
    job.error = _until_done(lambda: os.listdir(job.path))
    for name in OBJECT_METADATA:
        job.error = job.error or _until_done(lambda name=name: _read(job.path / name))
    while not job.error and not settled(job.cache_dir, job.key):
        time.sleep(0.05)  # the listing came once verified; the commit follows
    with run.lock:
        job.done = True
    run.finished.put(job)


def _jobs(paths: list[Path]) -> tuple[list[_Job], list[Path], list[str]]:
    """The objects under the paths, each with the cache it goes into; the other files to read;
    the mountpoints. Listing the BIDS views that show the objects is part of finding them."""
    mounts = {path: mount_of(path) for path in paths}
    jobs, files = {}, set()
    for path, record in mounts.items():
        found, shown = objects_at(path), find_objects(views_showing(path, record["mountpoint"]))
        for object_dir in found.objects + shown.objects:
            jobs[object_dir] = _Job(object_dir, _size_hint(object_dir), Path(record["cache_dir"]))
        files.update(found.files)
    mountpoints = [record["mountpoint"] for record in mounts.values()]
    ordered = sorted(jobs.values(), key=lambda job: job.path)
    return ordered, sorted(files), list(dict.fromkeys(mountpoints))


def _read_files(files: list[Path], parallel: int, output: _Output) -> int:
    """Reads the files (task outputs, participant tables, …) so the mount keeps them; says
    which could not be read, and returns how many."""
    with ThreadPoolExecutor(parallel) as pool:
        errors = list(pool.map(lambda path: _until_done(lambda: _read(path)), files))
    failed = [(path, error) for path, error in zip(files, errors, strict=True) if error]
    for path, error in failed:
        output.failed(f"{path}  failed: {error}")
    return len(failed)


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

    def failed(self, line: str) -> None:
        """What could not be read, said whatever the verbosity."""
        self._line(line)

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
    """Fetches every object under the paths (or holding them), which must lie in blfs mounts, and
    reads every other file under them; returns how many failed.

    Workers are daemon threads, so Ctrl-C ends the command at once; the mount finishes or drops
    the downloads already started, and a re-run skips what is cached. Only this thread writes.
    """
    output = _Output(out, verbosity)
    jobs, files, mountpoints = _jobs(paths)
    failed_files = _read_files(files, parallel, output)
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
    return failed_files + sum(1 for job in run.jobs if job.error)
