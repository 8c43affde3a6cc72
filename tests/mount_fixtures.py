"""Real FUSE mounts of blfs for tests: mounted in a subprocess, always unmounted in teardown."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blfs import libfuse, mountinfo
from blfs.errors import BlfsError

READY_TIMEOUT = 20.0


def fuse_missing() -> str | None:
    """Why FUSE mounts cannot work here, or None when they can."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no read-write /dev/fuse"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "no fusermount3 (apt install fuse3)"
    try:
        libfuse.find()
    except BlfsError as exc:
        return str(exc)
    return None


def unavailable(reason: str) -> None:
    """Skips a test that cannot run here, but fails it under CI, so that a broken CI never
    passes by skipping."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run under CI: {reason}")
    pytest.skip(reason)


def require_fuse() -> None:
    reason = fuse_missing()
    if reason:
        unavailable(f"FUSE is required: {reason}")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`, for a test to fill up (mounting one takes root)."""
    path.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def user_env(home: Path) -> dict[str, str]:
    """An environment whose HOME, cache and runtime dirs are the test's own."""
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(home / "run"),
        PYTHONUNBUFFERED="1",
    )
    (home / "run").mkdir(parents=True, exist_ok=True)
    return env


def save_token(home: Path, api_url: str, token: str) -> None:
    from blfs.auth import TokenStore

    TokenStore(api_url, home=home).save(token)


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    home: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def env(self) -> dict[str, str]:
        return user_env(self.home)

    def blfs(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
        """Runs the blfs command line as this mount's user."""
        return subprocess.run(
            [sys.executable, "-m", "blfs", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )


def _teardown(mount: Mount) -> None:
    if mountinfo.is_mounted(mount.path):
        subprocess.run(
            [mountinfo.fusermount(), "-u", str(mount.path)], capture_output=True, timeout=30
        )
    try:
        mount.process.wait(10)
    except subprocess.TimeoutExpired:
        mount.process.kill()
        mount.process.wait(10)
    if mountinfo.is_mounted(mount.path):
        subprocess.run(
            [mountinfo.fusermount(), "-uz", str(mount.path)], capture_output=True, timeout=30
        )
    assert not mountinfo.is_mounted(mount.path), f"{mount.path} is still mounted"


@contextlib.contextmanager
def mounted(
    api_url: str,
    home: Path,
    *,
    cache_dir: Path | None = None,
    ttl: float = 60.0,
    extra: tuple[str, ...] = (),
    name: str = "mnt",
    prefix: tuple[str, ...] = (),
) -> Iterator[Mount]:
    """Mounts blfs in the foreground in a subprocess (run by `prefix`, e.g. in another network
    namespace); unmounts whatever happens."""
    require_fuse()
    path = home / name
    path.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or home / "cache"
    log_path = home / f"{name}.log"
    command = [
        *prefix, sys.executable, "-m", "blfs", "mount", str(path), "--foreground",
        "--api", api_url, "--cache-dir", str(cache_dir), "--ttl", str(ttl), *extra,
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, env=user_env(home), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    mount = Mount(path, cache_dir, home, log_path, process)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not mountinfo.is_mounted(path):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mount did not come up:\n{mount.log()}")
            time.sleep(0.02)
        yield mount
    finally:
        _teardown(mount)


@pytest.fixture
def user_home(tmp_path: Path, emulator) -> Path:
    """A HOME holding the demo user's token for the emulator, as `blfs login` leaves it."""
    home = tmp_path / "home"
    home.mkdir()
    save_token(home, emulator.url, emulator.token("demo"))
    return home


@pytest.fixture
def mount(emulator, user_home: Path) -> Iterator[Mount]:
    """blfs mounted over the emulator, logged in as demo."""
    with mounted(emulator.url, user_home) as mount:
        yield mount


@pytest.fixture
def mount_factory(emulator, user_home: Path) -> Iterator[Callable[..., Mount]]:
    """Mounts with custom options; every mount is taken down at the end of the test."""
    with contextlib.ExitStack() as stack:
        count = itertools.count()

        def make(**kwargs) -> Mount:
            kwargs.setdefault("name", f"mnt{next(count)}")
            kwargs.setdefault("home", user_home)
            return stack.enter_context(mounted(kwargs.pop("api_url", emulator.url), **kwargs))

        yield make


@pytest.fixture
def replace_archive(emulator) -> Iterator[Callable[[str, bytes], None]]:
    """Serves a crafted archive for a dataset; the generated one is put back after the test."""
    originals: dict[str, bytes] = {}

    def replace(dataset_id: str, data: bytes) -> None:
        if dataset_id not in originals:
            (path,) = (emulator.data / "archives").glob(f"{dataset_id}.*")
            originals[dataset_id] = path.read_bytes()
        emulator.put_archive(dataset_id, data)

    yield replace
    for dataset_id, data in originals.items():
        emulator.put_archive(dataset_id, data)
