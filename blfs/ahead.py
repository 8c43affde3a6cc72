"""Asking ahead: the metadata a walk or a read will need, requested before the kernel asks for
it, a bounded number of requests at a time (DESIGN §3). Far from the server every request costs
a round trip; asked one after another, a walk's requests add up to minutes.

What is asked ahead goes through the same cached answers the kernel's calls use: a call that
needs an answer already in flight joins it, one still queued here asks for it itself (never
waiting on this queue), and an answer already known costs no request. So nothing is asked twice.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable

log = logging.getLogger("blfs")

# Requests in flight at once for what is asked ahead: enough to hide a 100 ms round trip behind
# a walk, few enough not to crowd out the kernel's own requests (the client pools 128).
DEFAULT_WIDTH = 16


class Ahead:
    """`width` daemon workers running what is submitted, each key once while it waits or runs;
    width 0 asks nothing ahead. What was submitted last runs first (in its submitted order): the
    directory listed last is where a walk or a reader goes next, even while what a listing of
    a whole project queued still waits. A failure is dropped: whoever needs the answer asks for
    it again and gets the error (or the known answer) then."""

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        self.width = width
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[Hashable] = deque()  # keys, front first; stale duplicates skipped
        self._waiting: dict[Hashable, Callable[[], object]] = {}
        self._running: set[Hashable] = set()
        self._workers = 0

    def submit(self, key: Hashable, ask: Callable[[], object]) -> None:
        """Calls `ask()` soon on a worker, unless `key` is already waiting or being asked."""
        self.submit_all([(key, ask)])

    def submit_all(self, asks: Iterable[tuple[Hashable, Callable[[], object]]]) -> None:
        """Puts each `(key, ask)` in front of what waits, in this order (one already waiting
        moves there too)."""
        if self.width <= 0:
            return
        with self._ready:
            front = []
            for key, ask in asks:
                if key not in self._running:
                    self._waiting.setdefault(key, ask)
                    front.append(key)
            self._queue.extendleft(reversed(front))
            self._ready.notify(len(front))
            idle = self._workers - len(self._running)
            starting = max(0, min(self.width - self._workers, len(self._waiting) - idle))
            self._workers += starting
        for _ in range(starting):
            threading.Thread(target=self._run, name="blfs-ahead", daemon=True).start()

    def _next(self) -> tuple[Hashable, Callable[[], object]]:
        with self._ready:
            while True:
                while not self._queue:
                    self._ready.wait()
                key = self._queue.popleft()
                ask = self._waiting.pop(key, None)
                if ask is not None:
                    self._running.add(key)
                    return key, ask

    def _run(self) -> None:
        while True:
            key, ask = self._next()
            try:
                ask()
            except Exception as exc:  # noqa: BLE001 - the caller that needs it sees it again
                log.debug("asked ahead for %r: %s", key, exc)
            finally:
                with self._lock:
                    self._running.discard(key)
