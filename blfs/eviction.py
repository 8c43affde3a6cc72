"""Which cache entries go first when space is needed: least recently used, found lazily."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping


class EvictionOrder:
    """A heap of last uses as last seen. A use only moves an entry later, so an entry's real
    last use is checked (one stat, by `last_use`) only when it reaches the top: evicting costs
    O(log n) per entry rather than a sort of the whole cache."""

    def __init__(self, last_use: Callable[[str], float | None]) -> None:
        self._last_use = last_use  # None: the entry is gone
        self._heap: list[tuple[float, str]] = []

    def reset(self, keys: Iterable[str]) -> None:
        self._heap = [(0.0, key) for key in keys]
        heapq.heapify(self._heap)

    def add(self, key: str) -> None:
        heapq.heappush(self._heap, (0.0, key))

    def evict_until(
        self, sizes: Mapping[str, int], evict: Callable[[str], bool], enough: Callable[[int], bool]
    ) -> int:
        """Evicts entries of `sizes`, oldest first, until `enough(bytes freed)`; an entry that
        `evict` refuses (in use) keeps its place. Returns the bytes freed."""
        freed = 0
        in_use = []
        while self._heap and not enough(freed):
            seen, key = heapq.heappop(self._heap)
            size = sizes.get(key)
            if size is None:
                continue  # evicted since it was queued
            last_use = self._last_use(key)
            if last_use is not None and last_use > seen:
                heapq.heappush(self._heap, (last_use, key))  # used since: not the oldest
            elif last_use is None or evict(key):
                freed += size
            else:
                in_use.append((seen, key))
        for entry in in_use:
            heapq.heappush(self._heap, entry)
        return freed
