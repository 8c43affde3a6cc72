"""Downloads that failed, remembered with a growing backoff so a broken object is not fetched again
by every `stat` and `ls`.

One small JSON file per cache key under `failures/` of the cache dir: every process sharing the
cache sees it, a success or `blfs cache clear` removes it, and a running mount reads it again at
each access that would start a download, so clearing reaches it at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from blfs import errors
from blfs.errors import BlfsError
from blfs.private import private_dir, write_private

# The backoff after a failure: this long after the first, doubling with each in a row, at most
# MAX_BACKOFF. Downloads and doubtful metadata answers (catalog.py) share it.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 600.0


def backoff(attempts: int, first: float = FIRST_BACKOFF, most: float = MAX_BACKOFF) -> float:
    """Seconds until the next try after `attempts` failures in a row."""
    return min(first * 2 ** (max(attempts, 1) - 1), most)


@dataclass(frozen=True)
class Failure:
    """The last failure of one key: what to raise, and when to try again (wall-clock time)."""

    error: BlfsError
    attempts: int
    retry_at: float


def _error(kind: str, message: str) -> BlfsError:
    cls = getattr(errors, kind, BlfsError)
    if not (isinstance(cls, type) and issubclass(cls, BlfsError)):
        cls = BlfsError
    return cls(message)


class Failures:
    """The failure records of one cache dir."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, key: str) -> Failure | None:
        """The key's last failure, still in its backoff window or not; None if there is none."""
        try:
            record = json.loads(self._path(key).read_bytes())
            return Failure(
                _error(record["error"], record["message"]),
                int(record["attempts"]),
                float(record["retry_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pending(self, key: str) -> Failure | None:
        """The key's failure while its backoff window lasts, else None."""
        failure = self.get(key)
        return failure if failure is not None and time.time() < failure.retry_at else None

    def record(self, key: str, error: BlfsError, first: float, most: float) -> Failure:
        """Remembers a failure: no new attempt for `first` seconds, doubling with every failure
        in a row up to `most`."""
        previous = self.get(key)
        attempts = 1 if previous is None else previous.attempts + 1
        failure = Failure(error, attempts, time.time() + backoff(attempts, first, most))
        record = {
            "key": key,
            "error": type(error).__name__,
            "message": str(error),
            "attempts": attempts,
            "retry_at": failure.retry_at,
        }
        private_dir(self.directory)
        temporary = self.directory / f".{uuid.uuid4().hex}"
        write_private(temporary, json.dumps(record).encode())
        os.replace(temporary, self._path(key))
        return failure

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def forget_all(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                path.unlink(missing_ok=True)
