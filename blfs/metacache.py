"""In-memory cache of metadata answers: fresh for a TTL, one fetch per key at a time, and the last
known answer kept for browsing while the server is unreachable (DESIGN §3).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

from blfs.errors import RemoteError

log = logging.getLogger("blfs")

V = TypeVar("V")


class MetaCache:
    """Answers by key. Many FUSE threads asking for the same stale key cause a single fetch.

    Every answer is kept after it expires: when a refresh fails with `RemoteError` the last known
    answer is served (and counted fresh for another TTL, so an offline mount stays fast), with one
    warning per offline period. Other errors (`AccessDenied`, `NotFound`) always propagate.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[Hashable, tuple[Any, float]] = {}
        self._inflight: dict[Hashable, Future[Any]] = {}
        self._offline = False

    def get(self, key: Hashable, fetch: Callable[[], V], ttl: float | None = None) -> V:
        """The answer for `key`: cached while fresh, else from `fetch()` (shared by concurrent
        callers), else the last known answer if `fetch` fails with `RemoteError`."""
        lifetime = self.ttl if ttl is None else ttl
        with self._lock:
            known = self._known.get(key)
            if known is not None and self._clock() < known[1]:
                return known[0]
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            return future.result()
        try:
            value = self._refresh(key, fetch, known, lifetime)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            with self._lock:
                del self._inflight[key]

    def peek(self, key: Hashable) -> Any | None:
        """The last known answer for `key`, fresh or not, without fetching."""
        with self._lock:
            known = self._known.get(key)
        return None if known is None else known[0]

    def _refresh(
        self,
        key: Hashable,
        fetch: Callable[[], V],
        known: tuple[Any, float] | None,
        lifetime: float,
    ) -> V:
        try:
            value = fetch()
        except RemoteError as exc:
            if known is None:
                raise
            with self._lock:
                self._known[key] = (known[0], self._clock() + self.ttl)
                first = not self._offline
                self._offline = True
            if first:
                log.warning("server unreachable, serving cached listings: %s", exc)
            return known[0]
        with self._lock:
            self._known[key] = (value, self._clock() + lifetime)
            self._offline = False
        return value
