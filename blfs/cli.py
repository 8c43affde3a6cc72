"""The `blfs` command line: argument parsing, then one call into the layer that does the work."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import pwd
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from blfs import __version__, demo, mountinfo, mounting, status, units
from blfs.errors import BlfsError
from blfs.ids import last_object_id
from blfs.units import human

if TYPE_CHECKING:
    from blfs.cache import Cache

N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    """Bad input gets one line: what is wrong, and where the help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parse_size(text: str) -> int:
    """A cache bound: a size above zero."""
    try:
        size = units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a cache of {text!r} could hold nothing")
    return size


def _number(text: str, kind: Callable[[str], N], valid: Callable[[N], bool], what: str) -> N:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
    return value


def parse_ttl(text: str) -> float:
    """Seconds a listing is trusted: finite and not negative (0 asks the server every time)."""
    return _number(text, float, lambda s: math.isfinite(s) and s >= 0, "a number of seconds")


def parse_api_url(text: str) -> str:
    """An http(s) URL with a host, such as https://brainlife.io/api."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"not an API URL: {text!r} (expected e.g. https://brainlife.io/api)"
        )
    return text


def parse_cache_dir(text: str) -> Path:
    """A directory, or a path where one can be made: nothing on the way may be a file."""
    path = Path(text).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is not a directory")
    return path


def parse_parallel(text: str) -> int:
    return _number(text, int, lambda count: count >= 1, "a number of parallel fetches")


def parse_ahead(text: str) -> int:
    """Requests asked ahead at once (0: none)."""
    return _number(text, int, lambda count: 0 <= count <= 128, "a number from 0 to 128")


def _mount_options(args: argparse.Namespace) -> mounting.MountOptions:
    return mounting.MountOptions(
        mountpoint=Path(args.mountpoint).absolute(),
        api_url=args.api,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        ttl=args.ttl,
        fuse_options=mounting.parse_fuse_options(",".join(args.o or [])),
        emulator_data=Path(args.emulator_data).absolute() if args.emulator_data else None,
        share=args.share,
        verbose=args.verbosity > 0,
        ahead=args.ahead,
    )


def _log_path(cache_dir: Path, mountpoint: Path) -> Path:
    """One log per host and mountpoint: hosts sharing a cache dir may mount at the same path."""
    name = str(mountpoint.absolute()).strip("/").replace("/", "_") + ".log"
    return cache_dir / "logs" / socket.gethostname() / name


def cmd_mount(args: argparse.Namespace) -> None:
    options = _mount_options(args)
    if args.foreground:
        mounting.log_to_stderr(verbose=options.verbose)
        mounting.run_foreground(options)
        return
    log_path = _log_path(options.cache_dir, options.mountpoint)
    _started(mounting.spawn(options, log_path), args.verbosity)
    if args.verbosity >= 0:
        print(f"mounted {options.api_url} at {options.mountpoint} (log: {log_path})")


def _started(lines: list[str], verbosity: int) -> None:
    """What a mount logged while starting: its warnings, or (verbose) every line."""
    if verbosity > 0:
        for line in lines:
            print(line, file=sys.stderr)
    else:
        _warn(mounting.warnings(lines))


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"blfs: warning: {warning}", file=sys.stderr)


def cmd_umount(args: argparse.Namespace) -> None:
    mountpoint = Path(args.mountpoint).absolute()
    if not mountinfo.is_mounted(mountpoint):
        raise SystemExit(f"blfs: {mountpoint} is not mounted")
    record = status.mount_record(str(mountpoint))
    try:
        mountinfo.unmount(mountpoint, lazy=args.lazy)
    except OSError as exc:
        raise SystemExit(
            f"blfs: cannot unmount {mountpoint}: {exc}\n"
            "  close the programs using it (see: fuser -vm MOUNTPOINT), or: blfs umount --lazy"
        ) from None
    if record:
        # The mount process (and a demo's server) ends after the kernel lets go: wait for it.
        deadline = time.monotonic() + 15
        while status.alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    print(f"unmounted {mountpoint}")


def cmd_login(args: argparse.Namespace) -> None:
    from blfs.api import Client
    from blfs.auth import TokenStore

    try:
        username = args.username or input("username: ")
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("password: ")
    except EOFError:
        raise SystemExit("\nblfs: login needs a username and a password") from None
    tokens = TokenStore(args.api)
    tokens.save(Client(args.api).login(username, password, ttl_days=args.ttl_days))
    print(f"logged in as {username}; token saved to {tokens.path}")


def cmd_demo(args: argparse.Namespace) -> None:
    mountpoint = Path(args.mountpoint).absolute()
    options = demo.options(mountpoint, args.cache_dir, args.ttl)
    options.verbose = args.verbosity > 0
    log_path = _log_path(args.cache_dir, mountpoint)
    _started(mounting.spawn(options, log_path), args.verbosity)
    if args.verbosity >= 0:
        print(
            f"brainlife demo mounted at {mountpoint} (log: {log_path})\n"
            f"  try:  ls {mountpoint}/projects\n"
            f"  stop: {_own_command()} umount {mountpoint}"
        )


def _own_command() -> str:
    """How to run this blfs again from the same shell: `blfs` where that is the one on PATH,
    else as it was run (`.venv/bin/blfs`, or through its Python)."""
    invoked = sys.argv[0]
    if os.path.basename(invoked) != "blfs":
        return f"{sys.executable} -m blfs"
    on_path = shutil.which("blfs")
    if on_path and os.path.realpath(on_path) == os.path.realpath(invoked):
        return "blfs"
    return invoked


def cmd_status(args: argparse.Namespace) -> None:
    mounts = status.running_mounts()
    stale = status.stale_mounts(mounts)
    if not mounts and not stale:
        print("no blfs mounts")
    for point in stale:
        print(f"{point}  stale: its process has ended; clear it with: blfs umount {point}")
    for record in mounts:
        cache = mounting.open_cache(Path(record["cache_dir"]))
        used, bound = cache.usage()
        print(f"{record['mountpoint']}  (pid {record['pid']}, {record['api']})")
        print(f"  {record.get('libfuse', 'libfuse: starting')}")
        print(f"  cache {cache.root}: {human(used)} of {human(bound)}")
        downloads = record.get("downloads", [])
        if not downloads:
            print("  no downloads")
        for item in downloads:
            print("  " + describe_download(item))


def describe_download(item: dict) -> str:
    done, total = item.get("bytes_done", 0), item.get("total")
    rate = item.get("rate") or 0.0
    line = f"{item.get('id', '?')}  {human(done)}"
    if total:
        line += f" of {human(total)} ({100 * done // max(total, 1)}%)"
    if item.get("error"):
        return f"{line}  failed: {item['error']}"
    line += f"  {human(rate)}/s"
    if total and rate > 0:
        line += f"  ETA {max(total - done, 0) / rate:.0f}s"
    return line


def cmd_prefetch(args: argparse.Namespace) -> None:
    from blfs.prefetch import prefetch

    failed = prefetch(
        [Path(p) for p in args.paths], parallel=args.parallel, verbosity=args.verbosity
    )
    if failed:
        raise SystemExit(f"blfs: {failed} object(s) could not be fetched")


def _caches(args: argparse.Namespace) -> list[Cache]:
    """--cache-dir, else the default cache dir and those of the running mounts."""
    if args.cache_dir is not None:
        return [mounting.open_cache(args.cache_dir)]
    default = mounting.default_cache_dir()
    roots = [default] if default.is_dir() else []
    roots += [root for root in status.cache_dirs() if root not in roots]
    return [mounting.open_cache(root) for root in roots or [default]]


def _cache_keys(targets: list[str]) -> list[str]:
    """Cache keys of objects named by id, or by a path in a blfs mount (as `prefetch` takes
    them: the objects under a directory, or the one holding a file), or by a path that holds an
    object's id (a mount that is gone)."""
    from blfs.cache import object_key
    from blfs.prefetch import objects_at

    keys = []
    for target in targets:
        path = Path(target)
        if path.exists() and status.mount_holding(path) is not None:
            keys += [object_key(found.name) for found in objects_at(path).objects]
            continue
        object_id = last_object_id(path.parts)
        if object_id is None:
            raise BlfsError(f"{target} names no data-object and is not inside a blfs mount")
        keys.append(object_key(object_id))
    return keys


def cmd_cache(args: argparse.Namespace) -> None:
    caches = _caches(args)
    keys = _cache_keys(args.targets) if args.targets else None
    for cache in caches:
        if args.action == "du":
            used, bound = cache.usage()
            entries = len(cache.entries())
            print(f"{human(used)} of {human(bound)} in {cache.root} ({entries} entries)")
        elif args.action == "ls":
            if len(caches) > 1:
                print(f"{cache.root}:")
            for entry in cache.entries():
                used_at = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_use))
                print(f"{human(entry.size):>10}  {used_at}  {entry.key}")
        else:
            removed = cache.clear(keys)
            noun = "entry" if len(removed) == 1 else "entries"
            print(f"removed {len(removed)} {noun} from {cache.root}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blfs", description="brainlife.io as a read-only filesystem")
    parser.add_argument("--version", action="version", version=f"blfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # How much commands with long output say; the others always say the same.
    talk = _Parser(add_help=False)
    loudness = talk.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        default=0,
        help="say more: every object fetched; what a mount logs, every request included",
    )
    loudness.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, help="warnings only"
    )

    def add_api(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--api",
            type=parse_api_url,
            default=mounting.default_api_url(),
            help="API base URL (default https://$BLHOST/api, BLHOST defaults to brainlife.io)",
        )

    def add_cache_dir(command: argparse.ArgumentParser, default: Path | None) -> None:
        command.add_argument("--cache-dir", type=parse_cache_dir, default=default)

    def add_ttl(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--ttl",
            type=parse_ttl,
            default=60.0,
            help="seconds a listing is trusted before asking the server again (default 60)",
        )

    mount = commands.add_parser("mount", parents=[talk], help="mount brainlife at MOUNTPOINT")
    mount.add_argument("mountpoint")
    add_api(mount)
    add_cache_dir(mount, mounting.default_cache_dir())
    mount.add_argument("--cache-size", type=parse_size, help="cache bound, e.g. 20G")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", action="append", metavar="OPT[,OPT…]", help="FUSE mount options")
    mount.add_argument(
        "--share",
        action="store_true",
        help="let every user of this machine read the mount (allow_other and r-x for all):"
        " they see what your token can read",
    )
    add_ttl(mount)
    mount.add_argument(
        "--ahead",
        type=parse_ahead,
        default=mounting.DEFAULT_AHEAD,
        metavar="N",
        help="metadata requests asked ahead of a walk at once, hiding the server's latency"
        f" (default {mounting.DEFAULT_AHEAD}; 0 asks only when needed)",
    )
    mount.add_argument("--emulator-data", help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser("umount", help="unmount a blfs mount")
    umount.add_argument("mountpoint")
    umount.add_argument("--lazy", action="store_true", help="detach now even if busy")
    umount.set_defaults(func=cmd_umount)

    login = commands.add_parser("login", help="log in and store a token where `bl` keeps it")
    add_api(login)
    login.add_argument("--username")
    login.add_argument("--password-stdin", action="store_true")
    login.add_argument("--ttl-days", type=float, default=7.0)
    login.set_defaults(func=cmd_login)

    sample = commands.add_parser(
        "demo", parents=[talk], help="mount the bundled sample server: no account needed"
    )
    sample.add_argument("mountpoint")
    add_cache_dir(sample, mounting.default_cache_dir())
    add_ttl(sample)
    sample.set_defaults(func=cmd_demo)

    commands.add_parser("status", help="mounts, downloads and cache use").set_defaults(
        func=cmd_status
    )

    prefetch = commands.add_parser(
        "prefetch",
        parents=[talk],
        help="fetch every object under mounted paths (or holding a mounted file)",
    )
    prefetch.add_argument("paths", nargs="+")
    prefetch.add_argument("--parallel", "-j", type=parse_parallel, default=4)
    prefetch.set_defaults(func=cmd_prefetch)

    cache = commands.add_parser("cache", help="cache usage, contents, clearing")
    cache.add_argument("action", nargs="?", choices=("du", "ls", "clear"), default="du")
    cache.add_argument("targets", nargs="*", help="clear: object ids or paths (default: all)")
    add_cache_dir(cache, None)
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if helper_call(argv):
        _helper_home()
        try:
            argv = helper_mount_args(argv)
        except BlfsError as exc:
            raise SystemExit(f"blfs: {exc}") from None
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _end_quietly()
    except BlfsError as exc:
        raise SystemExit(f"blfs: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"blfs: {sentence(exc)}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def sentence(exc: OSError) -> str:
    """An OSError as a user reads it: the path and what is wrong with it, no errno tuple."""
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def _end_quietly() -> None:
    """The reader of our output went away (`blfs cache ls | head -1`): that is its choice, not
    an error. Later writes, and the flush at exit, go nowhere instead of raising again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.dup2(devnull, sys.stderr.fileno())
    raise SystemExit(0)


# --- mount(8)'s helper: `mount -t fuse.blfs SOURCE DIR -o OPTIONS`, /etc/fstab ---------------

# mount(8)'s and mount.fuse3's own options, which say nothing to a blfs mount: it is always
# read-only, nosuid and nodev (libfuse's defaults), whatever an fstab line says.
_MOUNT8_ONLY = {"defaults", "rw", "ro", "user", "users", "nouser", "auto", "noauto", "_netdev",
                "nofail", "dev", "suid"}  # fmt: skip
# `-o` options of the helper that are `blfs mount` flags; the rest are FUSE options.
_HELPER_FLAGS = {"api": "--api", "cache_dir": "--cache-dir", "cache_size": "--cache-size",
                 "ttl": "--ttl", "share": "--share"}  # fmt: skip


def helper_call(argv: list[str]) -> bool:
    """Whether blfs was called as mount(8) calls a helper (`mount.fuse.blfs SOURCE DIR -o …`,
    or `blfs SOURCE DIR -o …` from mount.fuse3 for the type fuse.blfs): SOURCE is `blfs` or
    the API's URL, never a command name."""
    return len(argv) >= 2 and (argv[0] == "blfs" or argv[0].startswith(("http://", "https://")))


def _helper_home() -> None:
    """mount(8) drops HOME, and mount.fuse3 puts /root in its place whoever mounts: the home
    that holds this user's token and cache is then the password database's."""
    home = os.environ.get("HOME", "")
    try:
        own = os.stat(home).st_uid == os.getuid() if home else False
    except OSError:
        own = False
    if not own:
        os.environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir


def helper_mount_args(argv: list[str]) -> list[str]:
    """The `blfs mount` command line a helper call stands for."""
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    args = ["mount", mountpoint, "--quiet"]
    if source != "blfs":
        args += ["--api", source]
    fuse: list[str] = []
    words = iter(rest)
    for word in words:
        if word in ("-o", "-t", "-N"):  # -t fuse.blfs, -N a namespace: mount(8) has done it
            value = next(words, "")
            if word == "-o":
                fuse += _helper_options(value, args)
        elif word not in ("-n", "-s", "-v", "-f"):
            raise BlfsError(f"mount helper: unexpected argument {word!r}")
    if fuse:
        args += ["-o", ",".join(fuse)]
    return args


def _helper_options(text: str, args: list[str]) -> list[str]:
    """Adds the blfs flags among mount options to `args`; returns the FUSE options."""
    fuse = []
    for option in filter(None, text.split(",")):
        key, sep, value = option.partition("=")
        if key in _HELPER_FLAGS:
            args += [_HELPER_FLAGS[key], value] if sep else [_HELPER_FLAGS[key]]
        elif option not in _MOUNT8_ONLY and not key.startswith(("x-", "comment")):
            fuse.append(option)
    return fuse


def mount_helper() -> None:
    """`mount.fuse.blfs SOURCE MOUNTPOINT [-o OPTIONS]`: the program mount(8) runs for the
    type fuse.blfs, as for any helper (mount.fuse3 runs `blfs` itself the same way)."""
    if not helper_call(sys.argv[1:]):
        raise SystemExit(
            "usage: mount.fuse.blfs SOURCE MOUNTPOINT [-o OPTIONS]"
            " (SOURCE: blfs, or the API URL such as https://brainlife.io/api)"
        )
    main()
