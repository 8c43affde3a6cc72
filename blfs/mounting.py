"""Process setup for a mount: wire the layers together and run FUSE, here or in the background."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blfs import mountinfo, status
from blfs.errors import AccessDenied, BlfsError

if TYPE_CHECKING:
    from blfs.api import Client
    from blfs.cache import Cache
    from blfs.fuse_ops import BlfsOperations
    from blfs.metastore import MetaStore

log = logging.getLogger("blfs")

READY_TIMEOUT = 30.0


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blfs"


def default_api_url() -> str:
    return f"https://{os.environ.get('BLHOST', 'brainlife.io')}/api"


@dataclass
class MountOptions:
    """Everything a mount needs; the CLI fills it, run_foreground and spawn consume it."""

    mountpoint: Path
    api_url: str
    cache_dir: Path
    cache_size: int | None = None
    ttl: float = 60.0
    fuse_options: dict[str, str | bool] = field(default_factory=dict)
    token_home: Path | None = None
    emulator_data: Path | None = None

    def argv(self) -> list[str]:
        """The `blfs mount --foreground` command line that reproduces these options."""
        args = [
            sys.executable,
            "-m",
            "blfs",
            "mount",
            str(self.mountpoint),
            "--foreground",
            "--api",
            self.api_url,
            "--cache-dir",
            str(self.cache_dir),
            "--ttl",
            str(self.ttl),
        ]
        if self.cache_size is not None:
            args += ["--cache-size", str(self.cache_size)]
        if self.fuse_options:
            args += ["-o", format_fuse_options(self.fuse_options)]
        if self.emulator_data is not None:
            args += ["--emulator-data", str(self.emulator_data)]
        return args


def parse_fuse_options(text: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        options[key] = value if sep else True
    return options


def format_fuse_options(options: dict[str, str | bool]) -> str:
    return ",".join(key if value is True else f"{key}={value}" for key, value in options.items())


def check_mountpoint(mountpoint: Path) -> None:
    """Refuses a stale or busy mountpoint with the command that clears it."""
    if mountinfo.is_mounted(mountpoint):
        if mountinfo.is_stale(mountpoint):
            raise SystemExit(
                f"blfs: {mountpoint} is a stale mount (Transport endpoint is not connected); "
                f"clear it with: blfs umount {mountpoint}"
            )
        raise SystemExit(
            f"blfs: {mountpoint} is already mounted; unmount it with: blfs umount {mountpoint}"
        )
    if not mountpoint.is_dir():
        raise SystemExit(f"blfs: mountpoint {mountpoint} is not a directory")


def _use_libfuse3() -> bool:
    """mfusepy picks its libfuse at import; libfuse 3 when present (DESIGN §10)."""
    if ctypes.util.find_library("fuse3"):
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    return os.environ.get("FUSE_LIBRARY_NAME") == "fuse3"


@contextlib.contextmanager
def bundled_server(data_dir: Path, token_home: Path) -> Iterator[str]:
    """Serves the demo data on a free loopback port and logs in as `demo`; yields the API URL."""
    from blfs.api import Client
    from blfs.auth import TokenStore
    from blfs.emulator.control import EmulatorProcess

    server = EmulatorProcess(data_dir, die_with_parent=True)
    try:
        TokenStore(server.url, home=token_home).save(Client(server.url).login("demo", "demo"))
        yield server.url
    finally:
        server.stop()


def run_foreground(options: MountOptions) -> None:
    """Mounts and serves until unmounted or signalled."""
    check_mountpoint(options.mountpoint)
    with contextlib.ExitStack() as stack:
        if options.emulator_data is not None:
            token_home = options.token_home or options.cache_dir / "demo-home"
            options.api_url = stack.enter_context(bundled_server(options.emulator_data, token_home))
            options.token_home = token_home
        _serve(options)


def _serve(options: MountOptions) -> None:
    libfuse3 = _use_libfuse3()
    from blfs.api import Client
    from blfs.auth import TokenStore
    from blfs.cache import Cache
    from blfs.catalog import Catalog
    from blfs.fetch import ObjectFetcher, TaskFiles
    from blfs.fuse_ops import BlfsOperations
    from blfs.namespace import Namespace

    client = Client(options.api_url, TokenStore(options.api_url, home=options.token_home))
    cache = Cache(options.cache_dir, options.cache_size or default_cache_size(options.cache_dir))
    objects = ObjectFetcher(cache, client.download_dataset)
    task_files = TaskFiles(cache, client.download_task_file)
    catalog = Catalog(client, ttl=options.ttl, store=_metadata_store(options, client))
    namespace = Namespace(catalog, objects, task_files)
    fuse_options: dict[str, str | bool] = {"ro": True, "fsname": "blfs", "subtype": "blfs"}
    fuse_options.update(options.fuse_options)
    log.info("mounting %s at %s (cache %s)", options.api_url, options.mountpoint, options.cache_dir)
    publisher = status.Publisher(
        {
            "mountpoint": os.path.realpath(options.mountpoint),
            "api": options.api_url,
            "cache_dir": str(options.cache_dir),
            "started": time.time(),
        },
        lambda: {"downloads": objects.progress(), "cache": _usage(cache)},
    )
    try:
        _run_fuse(BlfsOperations(namespace), options, fuse_options, libfuse3)
    finally:
        publisher.close()


def _run_fuse(
    operations: BlfsOperations,
    options: MountOptions,
    fuse_options: dict[str, str | bool],
    libfuse3: bool,
) -> None:
    """libfuse 3 through our low-level binding (the kernel keeps listings and attributes);
    libfuse 2 through mfusepy's path API, with the same timeouts."""
    if libfuse3:
        from blfs.fuse_kernel import KernelMount

        point, text = str(options.mountpoint), format_fuse_options(fuse_options)
        KernelMount(operations, point, text, ttl=options.ttl).serve()
        return
    import mfusepy

    timeouts = {"entry_timeout": str(options.ttl), "attr_timeout": str(options.ttl)}
    point = str(options.mountpoint)
    mfusepy.FUSE(operations, point, raw_fi=True, foreground=True, **fuse_options, **timeouts)


def _metadata_store(options: MountOptions, client: Client) -> MetaStore:
    """The cache dir's metadata store, scoped to this server and the token's user."""
    from blfs.catalog import token_subject
    from blfs.metastore import FILENAME, MetaStore

    try:
        user = token_subject(client.tokens.get() if client.tokens else None)
    except AccessDenied:
        user = None
    scope = f"{options.api_url.rstrip('/')} {user or 'guest'}"
    return MetaStore(options.cache_dir / FILENAME, scope)


def _usage(cache: Cache) -> dict[str, int]:
    used, bound = cache.usage()
    return {"used": used, "max": bound}


def default_cache_size(cache_dir: Path) -> int:
    """A bound that never fills the disk: half of what is free now, at most 50 GiB."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(cache_dir)
    return min(50 * 2**30, stats.f_bavail * stats.f_frsize // 2)


def spawn(options: MountOptions, log_path: Path) -> subprocess.Popen[bytes]:
    """Starts `blfs mount --foreground` detached and returns once the mount is ready."""
    check_mountpoint(options.mountpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            options.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while not mountinfo.is_mounted(options.mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise BlfsError("the mount did not start:\n" + "\n".join(tail))
        time.sleep(0.05)
    return process
