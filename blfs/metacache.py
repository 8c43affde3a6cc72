"""Metadata answers: fresh for a TTL, one fetch per key at a time, kept on disk across restarts,
and the last known answer served while the server cannot give a new one (DESIGN §3).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from blfs import memory
from blfs.errors import AccessDenied, BlfsError, RemoteError
from blfs.metastore import ROWS_BATCH, MetaStore, StoreFailed
from blfs.stored_record import Rows, StoredRecord, head

log = logging.getLogger("blfs")

V = TypeVar("V")
# How long an answer stays fresh: seconds, or a function of the raw answer (an answer that is
# only a doubt is kept for a backoff, a checked one for good: see catalog.member_sizes).
Lifetime = float | Callable[[Any], float]
Keys = frozenset[Hashable]
# What a failed refresh may be answered with from the last known answer: the server is out of
# reach, or the token is expired or refused (data already known stays browsable either way).
_SERVE_KNOWN = (RemoteError, AccessDenied)
# How long a reader of an answer past its TTL waits for the refresh before it is served the
# known answer (the refresh goes on), unless the server is failing already: an unreachable server
# never holds up a known listing.
REFRESH_WAIT = 1.0
REFRESH_WORKERS = 4
# How many single answers kept on disk are also held in memory (see `_keep_recent`).
KNOWN_KEPT = 4096
# An answer of this many rows or more is large (see `_Collector`).
LARGE_ANSWER = 1000
# The keys of the answers this thread reads, while something collects them (`MetaCache.reads`).
_reading = threading.local()


@contextlib.contextmanager
def _collecting(keys: list[Hashable] | None) -> Iterator[None]:
    """Reads by this thread go to `keys` inside (None: nowhere), then to the outer collector:
    what an answer or a made value is built from is not what its reader read."""
    outer = getattr(_reading, "keys", None)
    _reading.keys = keys
    try:
        yield
    finally:
        _reading.keys = outer


def _note(key: Hashable) -> None:
    keys = getattr(_reading, "keys", None)
    if keys is not None:
        keys.append(key)


@dataclass(frozen=True)
class _Answer(Generic[V]):
    """How to get one answer: its key, the request, how the raw answer becomes the value."""

    key: Hashable
    fetch: Callable[[], Any] | None
    build: Callable[[Any], V]
    lifetime: Lifetime
    on_disk: bool = True  # a raw JSON answer of the server, kept on disk too
    rows: bool = False  # a listing of records kept row by row (see `MetaCache.listing`)

    def lifetime_of(self, raw: Any) -> float:
        return self.lifetime(raw) if callable(self.lifetime) else self.lifetime


@dataclass
class _Known(Generic[V]):
    value: V
    digest: int  # hash of the raw answer's JSON text: tells a changed answer from a repeated one
    expires: float
    in_store: bool = False  # holds records whose rest is read from the store (`listing`)


class MetaCache:
    """Answers by key, each built from a raw JSON answer of the server.

    Many FUSE threads asking for the same stale key cause a single fetch. An answer expired in
    memory is refreshed, its reader waiting up to REFRESH_WAIT for the new one before it is
    served the known one (the refresh goes on in the background); one read back from disk (a
    remount) is served at once and refreshed in the background when older than the TTL. When a
    refresh fails because the server is unreachable or the token is not accepted, the last known
    answer is served (and counted fresh for another TTL) with one warning per spell; `NotFound`
    always propagates.
    Subscribers (`on_change`) hear the keys of the answers that changed on refresh, and of the
    made values built from them (which are made again), so that caches of listings built from
    those answers (the kernel's) drop just these listings.
    """

    def __init__(
        self,
        ttl: float,
        store: MetaStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._subscribers: list[Callable[[Keys], None]] = []
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[Hashable, _Known[Any]] = {}
        # The single answers kept on disk, least recently used first: beyond KNOWN_KEPT the
        # oldest leaves memory, to be read back from disk when asked for again.
        self._recent: OrderedDict[Hashable, None] = OrderedDict()
        self._inflight: dict[Hashable, Future[Any]] = {}
        self._made_from: dict[Hashable, set[Hashable]] = {}  # an answer's key -> made values
        self._failing: type[BlfsError] | None = None
        self._background = _Workers(REFRESH_WORKERS)

    def get(
        self,
        key: Hashable,
        fetch: Callable[[], Any],
        build: Callable[[Any], V] = lambda raw: raw,
        ttl: Lifetime | None = None,
    ) -> V:
        """The answer for `key`: kept while fresh, else `build(fetch())` (one fetch shared by
        concurrent callers), else the last known answer if the refresh fails as above."""
        return self._get(_Answer(key, fetch, build, self.ttl if ttl is None else ttl))

    def listing(
        self,
        key: Hashable,
        fetch: Callable[[], Iterable[dict[str, Any]]],
        build: Callable[[Iterable[tuple[dict[str, Any], Mapping[str, Any]]]], V],
    ) -> V:
        """A listing of many records (a project's objects), kept in the store row by row, its
        value built from `(head, record)` pairs: the fields the listing is built from
        (`stored_record.head`), and the record to hold, which keeps only a few fields in memory
        where the store holds the rest. Records are saved and built as the pages come, so no
        moment holds the whole answer parsed; reading it back from disk parses only the heads."""
        return self._get(_Answer(key, fetch, build, self.ttl, rows=True))

    def made(self, key: Hashable, make: Callable[[], V]) -> V:
        """A value made from other answers, not asked of the server: kept in memory for the
        TTL like an answer, never on disk."""
        return self._get(_Answer(key, make, lambda value: value, self.ttl, on_disk=False))

    @contextlib.contextmanager
    def reads(self) -> Iterator[list[Hashable]]:
        """The keys of the answers and made values this thread reads inside, in order."""
        keys: list[Hashable] = []
        with _collecting(keys):
            yield keys

    def _get(self, answer: _Answer[V]) -> V:
        _note(answer.key)
        with self._lock:
            known = self._known.get(answer.key)
            if known is not None and answer.key in self._recent:
                self._recent.move_to_end(answer.key)
        if known is None and answer.on_disk:
            known = self._from_disk(answer)
        lost = known is not None and known.in_store and not self._store_usable()
        if known is not None and self._clock() < known.expires and not lost:
            return known.value
        if known is None or callable(answer.lifetime) or lost:
            # A doubt is asked again first, as is a listing whose records were in a store
            # that has failed since.
            return self._shared_refresh(answer)
        # While the server fails, the known answer is served without waiting at all.
        wait = REFRESH_WAIT if self._failing is None else 0.0
        try:
            return self._refreshing(answer).result(timeout=wait)
        except FutureTimeout:
            return known.value

    def known(
        self,
        key: Hashable,
        build: Callable[[Any], V] = lambda raw: raw,
        ttl: Lifetime | None = None,
    ) -> V | None:
        """The last known answer for `key` (in memory or on disk), fresh or not, without asking
        the server."""
        _note(key)
        with self._lock:
            known = self._known.get(key)
        if known is None:
            known = self._from_disk(_Answer(key, None, build, self.ttl if ttl is None else ttl))
        return None if known is None else known.value

    def on_change(self, callback: Callable[[Keys], None]) -> None:
        self._subscribers.append(callback)

    def _from_disk(self, answer: _Answer[V]) -> _Known[V] | None:
        """The stored answer, kept in memory and served at once: when older than its lifetime
        it counts fresh for one more while a background refresh runs (if it can be fetched).
        One whose lifetime depends on it (a doubt, kept only for a backoff) is never served
        past its lifetime: it is asked again first."""
        if self._store is None:
            return None
        with _COLLECTOR.paused():  # what is read and built here is kept: nothing to collect
            stored = self._store.load(_store_key(answer.key))
            if stored is None:
                return None
            try:
                with _collecting(None):
                    if answer.rows:
                        value = answer.build(self._stored_rows(answer.key, stored.body))
                    else:
                        value = answer.build(stored.body)
                left = answer.lifetime_of(stored.body) - (time.time() - stored.fetched)
            except (KeyError, TypeError, ValueError, AttributeError, StoreFailed):
                return None  # not an answer this version of blfs can read: fetch it again
            _COLLECTOR.spare(_rows_in(stored.body, answer.rows))
        grace = left <= 0 and not callable(answer.lifetime)
        expires = self._clock() + (left if left > 0 else self.ttl if grace else 0.0)
        with self._lock:
            digest = hash(stored.body["digest"] if answer.rows else stored.text)
            kept = _Known(value, digest, expires, in_store=answer.rows)
            known = self._known.setdefault(answer.key, kept)
            self._keep_recent(answer)
        if grace and answer.fetch is not None:
            self._refreshing(answer)
        return known

    def _shared_refresh(self, answer: _Answer[V]) -> V:
        """The refreshed answer, made here unless another thread is making it."""
        future, owner = self._inflight_refresh(answer)
        if owner:
            self._settle(answer, future)
        return future.result()

    def _refreshing(self, answer: _Answer[V]) -> Future[V]:
        """The refresh of `answer`, in flight or started now by a background worker."""
        future, owner = self._inflight_refresh(answer)
        if owner:
            self._background.run(lambda: self._settle(answer, future))
        return future

    def _inflight_refresh(self, answer: _Answer[V]) -> tuple[Future[V], bool]:
        """The one refresh of the key in flight, and whether the caller is to make it."""
        with self._lock:
            future = self._inflight.get(answer.key)
            if future is not None:
                return future, False
            future = self._inflight[answer.key] = Future()
            return future, True

    def _settle(self, answer: _Answer[V], future: Future[V]) -> None:
        try:
            future.set_result(self._refresh(answer))
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with self._lock:
                del self._inflight[answer.key]

    def _refresh(self, answer: _Answer[V]) -> V:
        with self._lock:
            known = self._known.get(answer.key)
        assert answer.fetch is not None
        sources: list[Hashable] = []
        in_store = False
        try:
            with _collecting(None if answer.on_disk else sources):
                if answer.rows:
                    value, raw, in_store = self._fetched_rows(answer)
                else:
                    raw = answer.fetch()
        except _SERVE_KNOWN as exc:
            if known is None:
                raise
            self._serving_known(exc)
            with self._lock:
                known.expires = self._clock() + self.ttl
            return known.value
        # Key order kept: records are shown as the server wrote them.
        text = json.dumps(raw) if answer.on_disk else ""
        digest = hash(raw["digest"] if answer.rows else text)
        if not answer.rows:
            with _collecting(None), _COLLECTOR.paused():
                value = answer.build(raw)
                _COLLECTOR.spare(_rows_in(raw, rows=False))
            if not answer.on_disk:  # a made value (a BIDS view): what making it took is freed
                memory.give_back()
        changed = known is not None and known.digest != digest
        with self._lock:
            expires = self._clock() + answer.lifetime_of(raw)
            self._known[answer.key] = _Known(value, digest, expires, answer.rows and in_store)
            self._keep_recent(answer)
            if answer.on_disk:  # the server answered
                self._failing = None
            for source in sources:
                self._made_from.setdefault(source, set()).add(answer.key)
        if self._store is not None and answer.on_disk:
            key = _store_key(answer.key)
            if known is None or changed or answer.rows:
                self._store.save(key, text)
            else:
                self._store.touch(key)
            if answer.rows:
                self._store.drop_rows(key, keep=raw["generation"])
        if changed:
            self._changed(answer.key)
        return value

    def _fetched_rows(self, answer: _Answer[V]) -> tuple[V, dict[str, Any], bool]:
        """A listing's value, built as its records come and are saved under a new generation;
        what its answer keeps: that generation, how many rows, a digest of their texts; and
        whether the value's records are held by the store (it kept every batch)."""
        assert answer.fetch is not None
        generation = time.time_ns()
        digest = hashlib.blake2b(digest_size=16)
        count = 0
        rows = self._rows(answer.key)

        def pairs() -> Iterator[tuple[dict[str, Any], Mapping[str, Any]]]:
            nonlocal count
            batch: list[tuple[dict[str, Any], str]] = []
            for record in answer.fetch():  # type: ignore[misc]
                text = json.dumps(record)  # key order kept, as the server wrote it
                digest.update(text.encode())
                batch.append((record, text))
                count += 1
                if len(batch) == ROWS_BATCH:
                    yield from self._saved(rows, generation, batch)
                    batch = []
            yield from self._saved(rows, generation, batch)

        with _collecting(None):
            value = answer.build(pairs())
        _COLLECTOR.spare(count)
        manifest = {"generation": generation, "rows": count, "digest": digest.hexdigest()}
        return value, manifest, rows is not None and self._store_usable()

    def _saved(
        self, rows: Rows | None, generation: int, batch: list[tuple[dict[str, Any], str]]
    ) -> Iterator[tuple[dict[str, Any], Mapping[str, Any]]]:
        """Each record's head and what to hold of it: a `StoredRecord` once its row is saved,
        else (no store, or it failed) the record itself."""
        heads = [head(record) for record, _ in batch]
        saved = (
            rows is not None
            and self._store is not None
            and self._store.save_rows(
                rows.listing,
                generation,
                [(str(r["_id"]), json.dumps(h), t) for (r, t), h in zip(batch, heads, strict=True)],
            )
        )
        for (record, _), fields in zip(batch, heads, strict=True):
            yield fields, StoredRecord(record, rows) if saved and rows else record

    def _stored_rows(
        self, key: Hashable, manifest: dict[str, Any]
    ) -> Iterator[tuple[dict[str, Any], Mapping[str, Any]]]:
        """A listing's `(head, record)` pairs read back from its rows in the store."""
        rows = self._rows(key)
        assert rows is not None and self._store is not None
        count = 0
        for _, text in self._store.rows(rows.listing, int(manifest["generation"])):
            fields = json.loads(text)
            count += 1
            yield fields, StoredRecord(fields, rows)
        if count != manifest["rows"]:
            raise StoreFailed(f"{count} rows of {manifest['rows']} kept")

    def _keep_recent(self, answer: _Answer[V]) -> None:
        """Counts `answer` among the recent single answers on disk, and lets the least recent
        one beyond KNOWN_KEPT go from memory (call with the lock held): a walk of a big project
        reads one `_product.json` per object, which memory need not hold for good. Listings
        and made values stay (remaking them costs more than a read)."""
        if self._store is None or not self._store.usable or not answer.on_disk or answer.rows:
            return
        self._recent[answer.key] = None
        self._recent.move_to_end(answer.key)
        if len(self._recent) > KNOWN_KEPT:
            oldest, _ = self._recent.popitem(last=False)
            if oldest not in self._inflight:
                self._known.pop(oldest, None)

    def _store_usable(self) -> bool:
        return self._store is not None and self._store.usable

    def _rows(self, key: Hashable) -> Rows | None:
        return None if self._store is None else Rows(self._store, _store_key(key))

    def _changed(self, key: Hashable) -> None:
        """Tells the subscribers that `key` changed, and every value made from it, which is
        forgotten so that it is made again from the new answer."""
        keys, pending = [key], [key]
        with self._lock:
            while pending:
                for made in self._made_from.pop(pending.pop(), ()):
                    self._known.pop(made, None)
                    keys.append(made)
                    pending.append(made)
        for callback in self._subscribers:
            callback(frozenset(keys))

    def _serving_known(self, exc: BlfsError) -> None:
        """One warning per spell of failures of one kind (offline, or the token refused)."""
        with self._lock:
            first = self._failing is not type(exc)
            self._failing = type(exc)
        if first:
            # The token's own message (how to log in) is for what fails for want of the server.
            reason = (
                f"server unreachable ({exc})" if isinstance(exc, RemoteError) else "token refused"
            )
            log.warning("%s: serving the known listings and cached data", reason)


class _Workers:
    """A few daemon threads refreshing answers in the background (those read back from disk
    by a remount's first walk, those served past their TTL), so that no reader waits for the
    server longer than REFRESH_WAIT and the server is not flooded."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[], None]) -> None:
        with self._lock:
            if len(self._threads) < self._count:
                thread = threading.Thread(target=self._serve, name="blfs-refresh", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put(work)

    def _serve(self) -> None:
        while True:
            self._queue.get()()


class _Collector:
    """Keeps Python's cyclic garbage collector off the metadata. Large answers, and what is
    built from them, live long and hold no reference cycles, yet every full pass of the
    collector scans them: with 40,000 objects' records in memory, those passes made listing
    30,000 entries cost twice the listing's own work, and reading the records back after a
    remount half as much again. So the collector pauses while an answer is read and built
    (nothing made there is garbage), and once a large one is built, its passes stop scanning
    what is alive (`gc.freeze`, after a collection, so that no cycle is kept for good);
    refcounting still frees an answer when it is replaced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pauses = 0
        self._was_enabled = True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if self._pauses == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._pauses += 1
        try:
            yield
        finally:
            with self._lock:
                self._pauses -= 1
                if self._pauses == 0 and self._was_enabled:
                    gc.enable()

    def spare(self, rows: int) -> None:
        """After an answer of `rows` rows was built."""
        if rows >= LARGE_ANSWER:
            gc.collect()
            gc.freeze()
            memory.give_back()


_COLLECTOR = _Collector()


def _rows_in(raw: Any, rows: bool) -> int:
    """How many rows an answer holds: a listing kept row by row says, a list is its length."""
    if rows:
        return int(raw["rows"])
    return len(raw) if isinstance(raw, list) else 1


def _store_key(key: Hashable) -> str:
    return json.dumps(key)
