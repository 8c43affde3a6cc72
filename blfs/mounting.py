"""Process setup for a mount: wire the layers together and run FUSE, here or in the background."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blfs import mountinfo, status
from blfs.ahead import DEFAULT_WIDTH as DEFAULT_AHEAD
from blfs.errors import AccessDenied, BlfsError, RemoteError
from blfs.metastore import FILENAME as METADATA_FILE
from blfs.metastore import MetaStore
from blfs.private import FILE_MODE, private_dir

if TYPE_CHECKING:
    from blfs.api import Client
    from blfs.cache import Cache
    from blfs.fuse_ops import BlfsOperations

log = logging.getLogger("blfs")

# The API check before the mount may wait a request timeout or two (api.Client.timeout).
READY_TIMEOUT = 90.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    share: bool = False
    ahead: int = DEFAULT_AHEAD

    def argv(self) -> list[str]:
        """The `blfs mount --foreground` command line that reproduces these options."""
        args = [
            sys.executable,
            "-m",
            "blfs",
            "mount",
            str(self.mountpoint),
            "--foreground",
            "--cache-dir",
            str(self.cache_dir),
            "--ttl",
            str(self.ttl),
        ]
        if self.emulator_data is None:
            args += ["--api", self.api_url]
        if self.cache_size is not None:
            args += ["--cache-size", str(self.cache_size)]
        if self.fuse_options:
            args += ["-o", format_fuse_options(self.fuse_options)]
        if self.emulator_data is not None:
            args += ["--emulator-data", str(self.emulator_data)]
        if self.share:
            args.append("--share")
        if self.ahead != DEFAULT_AHEAD:
            args += ["--ahead", str(self.ahead)]
        return args


# Ours, not libfuse's: complete files are read through this process even where the kernel could
# read their cache files by itself (see blfs/passthrough.py).
NO_PASSTHROUGH = "nopassthrough"


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


def log_to_stderr() -> None:
    """How a mount process logs: to stderr, which a background mount sends to its log file."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def run_foreground(options: MountOptions) -> None:
    """Checks the API, then mounts and serves until unmounted or signalled."""
    from blfs.api import Client
    from blfs.auth import TokenStore

    check_mountpoint(options.mountpoint)
    with contextlib.ExitStack() as stack:
        if options.emulator_data is not None:
            from blfs import demo

            stack.enter_context(demo.serving(options))
        tokens = TokenStore(options.api_url, home=options.token_home)
        client = Client(options.api_url, tokens, parallel=max(1, options.ahead))
        check_api(client, options.cache_dir)
        _serve(options, client)


def check_api(client: Client, cache_dir: Path) -> None:
    """Refuses, with a one-line reason, a URL that is not a brainlife API, fails TLS or refuses
    the token; a server that cannot be reached passes with one warning when metadata from an
    earlier mount can be served instead."""
    assert client.tokens is not None
    if client.tokens.get() is None:
        log.warning(
            "not logged in to %s: only public projects and publications are shown"
            " (blfs login --api %s)",
            client.api_url,
            client.api_url,
        )
    try:
        client.check()
    except AccessDenied as exc:
        raise BlfsError(f"login needed: {exc} (blfs login --api {client.api_url})") from None
    except RemoteError as exc:
        if not offline_metadata(cache_dir):
            raise BlfsError(f"{exc}, and {cache_dir} holds nothing to mount offline") from None
        log.warning("%s: mounted for offline use from what %s holds", exc, cache_dir)


def offline_metadata(cache_dir: Path) -> bool:
    """Whether an earlier mount left listings in `cache_dir` that an offline mount can show."""
    return (cache_dir / METADATA_FILE).is_file()


def _serve(options: MountOptions, client: Client) -> None:
    libfuse3 = _use_libfuse3()
    from blfs.ahead import Ahead
    from blfs.cache import LOCK_WAIT, Cache
    from blfs.catalog import Catalog
    from blfs.fetch import Downloads, ObjectFetcher, TaskFiles
    from blfs.fuse_ops import BlfsOperations
    from blfs.namespace import Namespace

    cache = Cache(options.cache_dir, options.cache_size or default_cache_size(options.cache_dir))
    downloads = Downloads(cache, stall_timeout=client.timeout)
    objects = ObjectFetcher(downloads, client.download_dataset)
    task_files = TaskFiles(downloads, client.download_task_file)
    store = _metadata_store(options, client)
    catalog = Catalog(client, ttl=options.ttl, store=store, ahead=Ahead(options.ahead))
    catalog.ask_ahead_at_mount()
    namespace = Namespace(catalog, objects, task_files)
    fuse_options: dict[str, str | bool] = {
        "ro": True,
        "fsname": "blfs",
        "subtype": "blfs",
        # The kernel checks the mode bits, which are the owner's only unless asked to share.
        "default_permissions": True,
    }
    if options.share:
        fuse_options["allow_other"] = True
    fuse_options.update(options.fuse_options)
    log.info("mounting %s at %s (cache %s)", options.api_url, options.mountpoint, options.cache_dir)
    publisher = status.Publisher(
        {
            "mountpoint": os.path.realpath(options.mountpoint),
            "api": options.api_url,
            "cache_dir": str(options.cache_dir),
            "cache": {"max": cache.max_bytes},
            "started": time.time(),
        },
        lambda: {"downloads": downloads.progress()},
    )
    try:
        _run_fuse(BlfsOperations(namespace, shared=options.share), options, fuse_options, libfuse3)
    finally:
        publisher.close()
        downloads.settle(LOCK_WAIT)


def _run_fuse(
    operations: BlfsOperations,
    options: MountOptions,
    fuse_options: dict[str, str | bool],
    libfuse3: bool,
) -> None:
    """libfuse 3 through our low-level binding (the kernel keeps listings and attributes);
    libfuse 2 through mfusepy's path API, with the same timeouts."""
    passthrough = not fuse_options.pop(NO_PASSTHROUGH, False)
    if libfuse3:
        from blfs.fuse_kernel import KernelMount

        point, text = str(options.mountpoint), format_fuse_options(fuse_options)
        KernelMount(operations, point, text, ttl=options.ttl, passthrough=passthrough).serve()
        return
    import mfusepy

    timeouts = {"entry_timeout": str(options.ttl), "attr_timeout": str(options.ttl)}
    point = str(options.mountpoint)
    mfusepy.FUSE(operations, point, raw_fi=True, foreground=True, **fuse_options, **timeouts)


def _metadata_store(options: MountOptions, client: Client) -> MetaStore:
    """The cache dir's metadata store, scoped to this server and the token's user."""
    from blfs.catalog import token_subject

    try:
        user = token_subject(client.tokens.get() if client.tokens else None)
    except AccessDenied:
        user = None
    scope = f"{options.api_url.rstrip('/')} {user or 'guest'}"
    return MetaStore(options.cache_dir / METADATA_FILE, scope)


def default_cache_size(cache_dir: Path) -> int:
    """A bound that never fills the disk: half of what is free now, at most 50 GiB."""
    private_dir(cache_dir)
    stats = os.statvfs(cache_dir)
    return min(50 * 2**30, stats.f_bavail * stats.f_frsize // 2)


def open_cache(root: Path) -> Cache:
    """The cache in `root`, with the bound of the mount that uses it (else the default one)."""
    from blfs.cache import Cache

    bound = status.cache_bound(root)
    return Cache(root, bound if bound is not None else default_cache_size(root))


def spawn(options: MountOptions, log_path: Path) -> list[str]:
    """Starts `blfs mount --foreground` detached and returns, once the mount is ready, the
    warnings it logged while starting. If it does not start, raises with its one-line reason."""
    check_mountpoint(options.mountpoint)
    private_dir(log_path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    with open(os.open(log_path, flags, FILE_MODE), "ab") as log_file:
        start = log_file.tell()
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
            raise BlfsError(_start_failure(_run_output(log_path, start)))
        time.sleep(0.05)
    return [
        line.split(" WARNING blfs: ", 1)[1]
        for line in _run_output(log_path, start)
        if " WARNING blfs: " in line
    ]


def _run_output(log_path: Path, start: int) -> list[str]:
    """The lines this run added to the (shared, appended) log file."""
    with open(log_path, "rb") as log_file:
        log_file.seek(start)
        return log_file.read().decode(errors="replace").splitlines()


def _start_failure(lines: list[str]) -> str:
    """The mount's own one-line reason (`blfs: …`, as the command line ends), else the tail."""
    reasons = [line for line in lines if re.match(r"blfs( \w+)?: ", line)]
    if reasons:
        return reasons[-1].removeprefix("blfs: ")
    return "the mount did not start:\n" + "\n".join(lines[-15:])
