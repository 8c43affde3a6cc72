"""Process setup for a mount: wire the layers together and run FUSE, here or in the background."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blfs import libfuse, memory, mountinfo, status
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
    verbose: bool = False
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
        if self.verbose:
            args.append("--verbose")
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
    """Refuses a stale or busy mountpoint with the command that clears it; makes a missing one
    (with its parents, as `mkdir -p`)."""
    if mountinfo.is_mounted(mountpoint):
        if mountinfo.is_stale(mountpoint):
            raise BlfsError(
                f"{mountpoint} is a stale mount (Transport endpoint is not connected); "
                f"clear it with: blfs umount {mountpoint}"
            )
        raise BlfsError(
            f"{mountpoint} is busy: something is already mounted there;"
            f" unmount it with: blfs umount {mountpoint}"
        )
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BlfsError(f"mountpoint {mountpoint} is a file, not a directory") from None
    except OSError as exc:
        raise BlfsError(f"cannot make the mountpoint {mountpoint}: {exc.strerror}") from None


FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"  # where fusermount3 reads user_allow_other (its build's FUSE_CONF)


def check_fuse_device() -> None:
    """Refuses, saying what to do, a machine or container where this user cannot use FUSE.

    libfuse (and the setuid fusermount3, which drops its privileges for this) opens the device as
    this user, so opening it here tells what the mount would meet."""
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise BlfsError(
            f"there is no {FUSE_DEVICE} here ({exc.strerror}), so nothing can be mounted: load"
            " FUSE (modprobe fuse), or give a container the device"
            " (docker run --device /dev/fuse --cap-add SYS_ADMIN)"
        ) from None
    except PermissionError:
        raise BlfsError(
            f"you may not use {FUSE_DEVICE} (permission denied): ask the administrator for"
            " FUSE access (often the fuse group)"
        ) from None
    except OSError as exc:
        raise BlfsError(f"cannot use {FUSE_DEVICE}: {exc.strerror}") from None
    os.close(fd)


def user_allow_other() -> bool:
    """Whether fusermount3 lets users other than root mount with allow_other."""
    try:
        with open(FUSE_CONF, encoding="utf-8", errors="replace") as conf:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def check_can_mount(options: MountOptions) -> None:
    """What can be checked before a mount starts, each refused with one line saying what to do:
    the mountpoint, the FUSE device, and allow_other where fusermount3 would refuse it."""
    check_mountpoint(options.mountpoint)
    check_fuse_device()
    asked = [name for name in ("allow_other", "allow_root") if options.fuse_options.get(name)]
    if options.share:
        asked.append("allow_other (--share)")
    if asked and os.getuid() != 0 and not user_allow_other():
        raise BlfsError(
            f"{asked[0]} needs the line user_allow_other in {FUSE_CONF}, which only root can"
            " add: ask the administrator, or mount without it"
        )


# What libfuse and fusermount3 print when a mount fails (their wording since libfuse 3.10),
# each as the one line a user can act on.
_LIBFUSE_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"unknown option\(s\): `(?:-o )?(.*)'"), "unknown mount option: {0}"),
    (re.compile(r"fusermount3?: unknown option '(.*)'"), "unknown mount option: {0}"),
    (re.compile(r"fusermount3?: option (\S+) is privileged"), "only root may use -o {0}"),
    (
        re.compile(r"option (\S+) only allowed if 'user_allow_other' is set in (\S+)"),
        "{0} needs the line user_allow_other in {1}, which only root can add",
    ),
    (
        re.compile(r"(?:fuse|fusermount3?): mount failed: (Operation not permitted)"),
        "the kernel refused the mount ({0}): a container needs --cap-add SYS_ADMIN to mount",
    ),
    (
        re.compile(r"(?:fuse|fusermount3?): mount failed: (.*)"),
        "the kernel refused the mount ({0}): check the -o options",
    ),
    (re.compile(r"fusermount3?: (mountpoint .* not owned by user)"), "{0}"),
    (re.compile(r"fusermount3?: (user has no write access to mountpoint .*)"), "{0}"),
    (re.compile(r"device not found, try 'modprobe fuse' first"), "there is no /dev/fuse here"),
    (re.compile(r"failed to open /dev/fuse: (.*)"), "cannot use /dev/fuse: {0}"),
]


def libfuse_reason(lines: list[str]) -> str | None:
    """Why libfuse or fusermount3 refused a mount, from what they printed; None if they did not."""
    for line in reversed(lines):
        for pattern, reason in _LIBFUSE_REASONS:
            found = pattern.search(line)
            if found:
                return reason.format(*found.groups())
    said = [line for line in lines if re.match(r"(fuse|fusermount3?): ", line)]
    return said[-1] if said else None


def log_to_stderr(verbose: bool = False) -> None:
    """How a mount process logs: to stderr, which a background mount sends to its log file;
    verbose adds every request to the server."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if verbose:
        log.setLevel(logging.DEBUG)


def run_foreground(options: MountOptions) -> None:
    """Checks the API, then mounts and serves until unmounted or signalled."""
    from blfs.api import Client
    from blfs.auth import TokenStore

    check_can_mount(options)
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
    memory.cap_arenas()  # before any thread is started
    library = libfuse.select()  # before mfusepy is imported, so that it loads the same one
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

    def report(line: str) -> None:
        log.info("%s", line)
        try:
            publisher.update(libfuse=line)
        except OSError as exc:  # the next publish tries again; the mount goes on
            log.warning("cannot update the status record: %s", exc)

    try:
        operations = BlfsOperations(namespace, shared=options.share)
        _run_fuse(operations, options, fuse_options, library, report)
    finally:
        publisher.close()
        downloads.settle(LOCK_WAIT)
        # Background refreshes and answers asked ahead may still be saving: the store ends the
        # one in progress and takes no more, so no transaction is cut off by the exit.
        store.close()


def _run_fuse(
    operations: BlfsOperations,
    options: MountOptions,
    fuse_options: dict[str, str | bool],
    library: libfuse.Libfuse,
    report: Callable[[str], None],
) -> None:
    """libfuse 3 through our low-level binding (the kernel keeps listings and attributes);
    libfuse 2 through mfusepy's path API, with the same timeouts. `report` hears which
    library and which of its features the mount uses."""
    passthrough = not fuse_options.pop(NO_PASSTHROUGH, False)
    if library.major == 3:
        from blfs.fuse_kernel import KernelMount

        point, text = str(options.mountpoint), format_fuse_options(fuse_options)
        KernelMount(
            operations,
            point,
            text,
            ttl=options.ttl,
            library=library,
            passthrough=passthrough,
            report=lambda features: report(features.describe()),
        ).serve()
        return
    import mfusepy

    report(
        f"{library.describe()}: mfusepy's path API (no parallel lookups, passthrough or "
        "kernel-kept listings)"
    )

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
    """Starts `blfs mount --foreground` detached and returns, once the mount is ready, what it
    logged while starting. If it does not start, raises with its one-line reason and the log."""
    check_can_mount(options)
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
            reason = _start_failure(_run_output(log_path, start))
            raise BlfsError(f"cannot mount at {options.mountpoint}: {reason} (log: {log_path})")
        time.sleep(0.05)
    return _run_output(log_path, start)


def warnings(lines: list[str]) -> list[str]:
    """The warnings among a mount's log lines."""
    return [line.split(" WARNING blfs: ", 1)[1] for line in lines if " WARNING blfs: " in line]


def _run_output(log_path: Path, start: int) -> list[str]:
    """The lines this run added to the (shared, appended) log file."""
    with open(log_path, "rb") as log_file:
        log_file.seek(start)
        return log_file.read().decode(errors="replace").splitlines()


def _start_failure(lines: list[str]) -> str:
    """Why the mount did not start, in one line: libfuse's reason, else the mount's own
    (`blfs: …`, as the command line ends), else the last line it logged."""
    reason = libfuse_reason(lines)
    if reason:
        return reason
    reasons = [line for line in lines if re.match(r"blfs( \w+)?: ", line)]
    if reasons:
        return reasons[-1].removeprefix("blfs: ")
    return lines[-1] if lines else "it ended without a word"
