"""Asking ahead: the metadata a walk or a read will need, requested before the kernel asks for
it, a bounded number of requests at a time (DESIGN §3). Far from the server every request costs
a round trip; asked one after another, a walk's requests add up to minutes.

What is asked ahead goes through the same cached answers the kernel's calls use: a call that
needs an answer already in flight joins it, one still queued here asks for it itself (never
waiting on this queue), and an answer already known costs no request. So nothing is asked twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger("blfs")

# Requests in flight at once for what is asked ahead: enough to hide a 100 ms round trip behind
# a walk, few enough not to crowd out the kernel's own requests (the client pools 128).
DEFAULT_WIDTH = 16


class Ahead:
    """`width` daemon workers running what is submitted, each key once while it is pending;
    width 0 asks nothing ahead. A failure is dropped: whoever needs the answer asks for it again
    and gets the error (or the known answer) then."""

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        self.width = width
        self._queue: queue.SimpleQueue[tuple[Hashable, Callable[[], object]]] = queue.SimpleQueue()
        self._pending: set[Hashable] = set()
        self._lock = threading.Lock()
        self._workers = 0

    def submit(self, key: Hashable, ask: Callable[[], object]) -> None:
        """Calls `ask()` soon on a worker, unless `key` is already queued or being asked."""
        if self.width <= 0:
            return
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
            start = self._workers < min(self.width, len(self._pending))
            if start:
                self._workers += 1
        self._queue.put((key, ask))
        if start:
            threading.Thread(target=self._run, name="blfs-ahead", daemon=True).start()

    def _run(self) -> None:
        while True:
            key, ask = self._queue.get()
            try:
                ask()
            except Exception as exc:  # noqa: BLE001 - the caller that needs it sees it again
                log.debug("asked ahead for %r: %s", key, exc)
            finally:
                with self._lock:
                    self._pending.discard(key)
