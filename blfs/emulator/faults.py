"""Knobs: injected latency, errors, bandwidth limits, truncations and stalls, and `variants`:
per route, one of the answers a real brainlife server may give where no public source says which
(API §2), in place of the emulator's own.

Set at start (`serve --knobs FILE`) or while running (`/_admin/knobs`). Rules with a `path` regex
apply to matching request paths; `times` counts down on each use (null = for ever).
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

DEFAULTS: dict = {
    "bandwidth": None,
    "latency": 0.0,
    "fail": [],
    "fail_fraction": 0.0,
    "truncate": [],
    "stall": [],
    "expire_tokens": False,
    "login_delay": 2.0,
    "hang_seconds": 30.0,
    "variants": {},
}
RULE_KEYS = ("fail", "truncate", "stall")
# The variants each route can be switched to (the emulator's own answer when none is set).
VARIANTS: dict[str, tuple[str, ...]] = {
    # The S3 "files" route: absent (404 "Cannot GET"), 200 with empty lists, full S3 keys as
    # names, S3's own shape (`Contents`/`Key`), HTTP 500, a continuation token that never
    # changes, pages truncated without a token.
    "files": ("absent", "empty", "full_keys", "raw_s3", "error", "stuck_token", "no_token"),
    # Object downloads sent without Content-Length.
    "download": ("no_length",),
    # amaretti's texts for a task it cannot serve (task.js `find_resource`), on /task/ls and
    # /task/download of every task.
    "amaretti": ("no_such_task", "no_resource"),
    # A guest's participants request for a project without a participants record never answers
    # (participant.js reads `req.user.sub`).
    "participants": ("guest_hang",),
}


class KnobError(ValueError):
    """A knob update that is not understood; nothing is changed."""


def _check(key: str, value: object) -> object:
    if key not in DEFAULTS:
        raise KnobError(f"unknown knob: {key}")
    if value is None:
        return copy.deepcopy(DEFAULTS[key])
    if key in RULE_KEYS:
        if not isinstance(value, list) or not all(
            isinstance(r, dict) and isinstance(r.get("path"), str) for r in value
        ):
            raise KnobError(f"{key} must be a list of objects with a 'path' regex")
        for rule in value:
            re.compile(rule["path"])
        return copy.deepcopy(value)
    if key == "expire_tokens":
        return bool(value)
    if key == "variants":
        if not isinstance(value, dict):
            raise KnobError("variants must be an object of route: variant")
        for route, variant in value.items():
            if variant not in VARIANTS.get(route, ()):
                raise KnobError(f"no variant {variant!r} of route {route!r}: see VARIANTS")
        return dict(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise KnobError(f"{key} must be a non-negative number")
    return value


@dataclass(frozen=True)
class BodyPlan:
    """How one response body is to be sent; `plain` = full speed, no fault."""

    bandwidth: float | None = None
    truncate_at: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0

    @property
    def plain(self) -> bool:
        return self.bandwidth is None and self.truncate_at is None and self.stall_after is None


class Knobs:
    """The current knob values; rule lookups consume `times` atomically."""

    def __init__(self, initial: dict | None = None) -> None:
        self._lock = threading.Lock()
        self._values = copy.deepcopy(DEFAULTS)
        self._random = random.Random()
        if initial:
            self.merge(initial)

    def snapshot(self) -> dict:
        with self._lock:
            return copy.deepcopy(self._values)

    def merge(self, update: dict) -> dict:
        checked = {key: _check(key, value) for key, value in update.items()}
        with self._lock:
            self._values.update(checked)
            return copy.deepcopy(self._values)

    def reset(self) -> dict:
        with self._lock:
            self._values = copy.deepcopy(DEFAULTS)
            return copy.deepcopy(self._values)

    def __getitem__(self, key: str):
        with self._lock:
            return self._values[key]

    def variant(self, route: str) -> str | None:
        """The variant set for `route`, or None for the emulator's own answer."""
        with self._lock:
            return self._values["variants"].get(route)

    def _take(self, key: str, path: str) -> dict | None:
        """The first live rule of `key` matching `path`, with one use consumed."""
        with self._lock:
            for rule in self._values[key]:
                times = rule.get("times")
                if times is not None and times <= 0:
                    continue
                if re.search(rule["path"], path):
                    if times is not None:
                        rule["times"] = times - 1
                    return dict(rule)
        return None

    def failure(self, path: str, api: bool) -> tuple[int, str] | None:
        """(status, message) when this request must fail instead of being handled."""
        rule = self._take("fail", path)
        if rule:
            return int(rule.get("status", 500)), rule.get("message") or "injected failure"
        with self._lock:
            fraction = self._values["fail_fraction"]
            if api and fraction and self._random.random() < fraction:
                return 500, "injected random failure"
        return None

    def body_plan(self, path: str) -> BodyPlan:
        truncate = self._take("truncate", path)
        stall = self._take("stall", path)
        return BodyPlan(
            bandwidth=self["bandwidth"] or None,
            truncate_at=int(truncate.get("at", 0)) if truncate else None,
            stall_after=int(stall.get("after", 0)) if stall else None,
            stall_seconds=float(stall.get("seconds", 0)) if stall else 0.0,
        )


class Truncated(Exception):
    """The body was cut as a `truncate` rule asked; the connection must be closed."""


class ShapedWriter:
    """Writes a body through a BodyPlan: paces to `bandwidth`, stalls once, cuts at `truncate_at`.

    `sent` counts body bytes actually written (what the request log reports).
    """

    def __init__(self, out: BinaryIO, plan: BodyPlan) -> None:
        self._out = out
        self._plan = plan
        self._stalled = False
        self._start = time.monotonic()
        self.sent = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        plan = self._plan
        slice_size = max(1024, int(plan.bandwidth / 50)) if plan.bandwidth else len(view) or 1
        while view:
            room = len(view)
            if plan.truncate_at is not None:
                room = min(room, plan.truncate_at - self.sent)
                if room <= 0:
                    raise Truncated()
            if plan.stall_after is not None and not self._stalled:
                if self.sent >= plan.stall_after:
                    self._stalled = True
                    time.sleep(plan.stall_seconds)
                    self._start += plan.stall_seconds
                    continue
                room = min(room, plan.stall_after - self.sent)
            room = min(room, slice_size)
            self._out.write(view[:room])
            self.sent += room
            view = view[room:]
            if plan.bandwidth:
                ahead = self.sent / plan.bandwidth - (time.monotonic() - self._start)
                if ahead > 0:
                    time.sleep(ahead)
        return len(data)

    def finish(self) -> None:
        """Called after the last byte: a truncation point at or past the end still closes."""
        if self._plan.truncate_at is not None and self.sent >= self._plan.truncate_at:
            raise Truncated()

    def flush(self) -> None:
        self._out.flush()
