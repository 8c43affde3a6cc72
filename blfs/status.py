"""The registry of running mounts: each keeps a small JSON file current for `blfs status`."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blfs import mountinfo
from blfs.private import private_dir, write_private

PUBLISH_INTERVAL = 1.0

log = logging.getLogger("blfs")


def registry_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "blfs" / "mounts"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: Path, record: dict[str, Any]) -> None:
    temporary = path.with_suffix(f".tmp{threading.get_ident()}")
    write_private(temporary, json.dumps(record).encode())
    temporary.replace(path)


class Publisher:
    """Writes this process's record now and every second, and removes it on close."""

    def __init__(self, record: dict[str, Any], live: Callable[[], dict[str, Any]]) -> None:
        self._record = {**record, "pid": os.getpid()}
        self._live = live
        self._path = registry_dir() / f"{os.getpid()}.json"
        private_dir(self._path.parent)
        self._stop = threading.Event()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="blfs-status", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        """Adds or changes lasting fields of the record (what the mount learnt once running)."""
        self._record.update(fields)
        self._publish()

    def _publish(self) -> None:
        _write_atomically(self._path, {**self._record, **self._live()})

    def _run(self) -> None:
        """A publish that fails (a full disk, say) is tried again a second later: a thread that
        died here would leave `blfs status` showing the mount's first second for ever."""
        failing = False
        while not self._stop.wait(PUBLISH_INTERVAL):
            try:
                self._publish()
            except Exception as exc:
                if not failing:
                    log.warning("cannot update the status record %s: %s", self._path, exc)
                failing = True
            else:
                failing = False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(PUBLISH_INTERVAL * 2)
        self._path.unlink(missing_ok=True)


def running_mounts() -> list[dict[str, Any]]:
    """Records of live mounts; records left by a killed process are removed on the way."""
    records = []
    directory = registry_dir()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if alive(int(record.get("pid", 0))):
            records.append(record)
        else:
            path.unlink(missing_ok=True)
    return records


def stale_mounts(records: list[dict[str, Any]]) -> list[str]:
    """This user's blfs mounts whose process has ended (no running mount's record names them):
    they answer "Transport endpoint is not connected" until unmounted."""
    recorded = {record.get("mountpoint") for record in records}
    return [
        point
        for point in mountinfo.blfs_mountpoints(os.getuid())
        if point not in recorded and mountinfo.is_stale(point)
    ]


def mount_holding(path: Path) -> dict[str, Any] | None:
    """The record of the running mount that `path` lies in, if any."""
    real = os.path.realpath(path)
    for record in running_mounts():
        point = record.get("mountpoint", "")
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return record
    return None


def mount_record(mountpoint: str) -> dict[str, Any] | None:
    real = os.path.realpath(mountpoint)
    return next((r for r in running_mounts() if r.get("mountpoint") == real), None)


def cache_dirs() -> list[Path]:
    """The cache directories of the running mounts, each once."""
    return list(dict.fromkeys(Path(record["cache_dir"]) for record in running_mounts()))


def cache_bound(cache_dir: Path) -> int | None:
    """The bound a running mount keeps `cache_dir` within, if one uses it."""
    for record in running_mounts():
        if Path(record["cache_dir"]) == cache_dir.absolute():
            return int(record["cache"]["max"])
    return None
