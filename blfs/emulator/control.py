"""Driving an emulator from Python: generate data, start/stop a server process, set its knobs.

Used by the test fixtures, the benchmarks and `blfs demo`. Only talks HTTP to the server and runs
`python -m blfs.emulator`, so it works with any server started by the CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

READY_TIMEOUT = 30.0


def generate_data(directory: Path, timeout: float = 600, **options: int) -> Path:
    """Runs `generate` (options: seed, subjects, objects_per_subject, object_size)."""
    args = [sys.executable, "-m", "blfs.emulator", "generate", str(directory)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    subprocess.run(args, check=True, timeout=timeout)
    return directory


def generated_data(directory: Path, timeout: float = 3600, **options: int) -> Path:
    """`directory` generated once and reused afterwards; a half-generated one never looks done."""
    if directory.is_dir():
        return directory
    staging = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    generate_data(staging, timeout, **options)
    staging.rename(directory)
    return directory


def _die_with_parent() -> None:
    """Runs in the server child so it never outlives its parent, even one killed with -9."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Emulator:
    """A running emulator: its base URL, its data dir, its admin endpoints and its login."""

    def __init__(self, url: str, data: Path, verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self.root = self.url.removesuffix("/api")
        self.data = Path(data)
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: no proxies, and CA bundles from the
        self.http.verify = verify  # environment would override `verify` (requests quirk)

    def _admin(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.http.request(method, f"{self.root}/_admin/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def knobs(self) -> dict:
        return self._admin("GET", "knobs").json()

    def set(self, **knobs: object) -> dict:
        """Merges knobs (a None value resets that knob)."""
        return self._admin("PUT", "knobs", json=knobs).json()

    def reset(self) -> dict:
        return self._admin("DELETE", "knobs").json()

    def requests(self) -> list[dict]:
        """The request log: {t, method, path, query, status, bytes, end} per non-admin request,
        in order of arrival; `status` is None until answered (for ever after a hang), `bytes`
        counts the body once it has been sent and `end` (epoch seconds, like `t`) is when it was."""
        return self._admin("GET", "log").json()

    def clear_requests(self) -> None:
        self._admin("DELETE", "log")

    def token(
        self, username: str = "demo", password: str | None = None, ttl_ms: int | None = None
    ) -> str:
        """A JWT from the real login endpoint (the fixed users' password is their name)."""
        body: dict = {"username": username, "password": username if password is None else password}
        if ttl_ms is not None:
            body["ttl"] = ttl_ms
        response = self.http.post(f"{self.url}/auth/local/auth", json=body, timeout=30)
        response.raise_for_status()
        return response.json()["jwt"]

    def get(self, path: str, token: str | None = None, **kwargs) -> requests.Response:
        """GET `{url}{path}` (e.g. "/warehouse/dataset"), Bearer `token` if given; dict values
        in `params` are sent as JSON text (as clients send `find`), lists as repeated keys."""
        params = {
            k: json.dumps(v) if isinstance(v, dict) else v
            for k, v in (kwargs.pop("params", None) or {}).items()
        }
        headers = dict(kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return self.http.get(f"{self.url}{path}", params=params, headers=headers, **kwargs)

    def db(self, collection: str) -> list[dict]:
        """Records of DIR/db/<collection>.json (what the server was started with, plus upserts)."""
        return json.loads((self.data / "db" / f"{collection}.json").read_text())

    def put_records(self, collection: str, records: list[dict]) -> None:
        """Inserts or replaces records by `_id` (also written to DIR/db)."""
        self._admin("POST", f"db/{collection}", json=records)

    def put_archive(self, dataset_id: str, data: bytes) -> None:
        """Replaces a dataset's stored archive; its `size` becomes what the warehouse records."""
        self._admin("PUT", f"archive/{dataset_id}", data=data)


def in_flight_peak(entries: list[dict]) -> int:
    """The most of `entries` (request log entries) that were being served at one moment: how
    many requests a client had in flight at once. An entry not yet answered counts until now."""
    events = sorted(
        [(e["t"], 1) for e in entries] + [(e.get("end") or time.time(), -1) for e in entries],
        key=lambda event: (event[0], event[1]),
    )
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def round_trips(entries: list[dict], began: float, ended: float) -> int:
    """How many of `entries` (request log entries) a reader busy from `began` to `ended` (epoch
    seconds) waited for one after another: the longest chain of them, each starting after the
    one before it ended. One still in flight when the reader began counts as a wait."""
    during = sorted(
        (e for e in entries if e.get("end") and e["end"] > began and e["t"] < ended),
        key=lambda entry: entry["end"],
    )
    chain, last_end = 0, float("-inf")
    for entry in during:
        if entry["t"] >= last_end:
            chain, last_end = chain + 1, entry["end"]
    return chain


class EmulatorProcess:
    """`python -m blfs.emulator serve` as a child process; `stop()` ends it (SIGTERM, then kill)."""

    def __init__(
        self,
        data: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
        knobs_file: Path | None = None,
        stderr: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        args = [sys.executable, "-m", "blfs.emulator", "serve", str(data), "--host", host]
        args += ["--port", str(port)]
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if knobs_file:
            args += ["--knobs", str(knobs_file)]
        error_log = stderr.open("ab") if stderr else None
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=error_log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        if error_log:
            error_log.close()
        self.pid = self.process.pid
        self.url = self._read_url()
        self.emulator = Emulator(self.url, data, verify=str(tls[0]) if tls else True)

    def _read_url(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT
        stdout = self.process.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], 0.1)
            if ready:
                line = stdout.readline().decode().strip()
                if line:
                    return line
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"emulator did not start (exit code {self.process.returncode})")

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


@contextlib.contextmanager
def start_emulator(data: Path, **knobs: object) -> Iterator[Emulator]:
    """Serves `data` for the duration of the block, with `knobs` set before it is handed out."""
    server = EmulatorProcess(Path(data))
    try:
        if knobs:
            server.emulator.set(**knobs)
        yield server.emulator
    finally:
        server.stop()
