"""The `blfs` command line: argument parsing, then one call into the layer that does the work."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import time
from pathlib import Path

from blfs import mountinfo, mounting, status, units
from blfs.errors import BlfsError
from blfs.ids import last_object_id
from blfs.units import human


def parse_size(text: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mount_options(args: argparse.Namespace) -> mounting.MountOptions:
    return mounting.MountOptions(
        mountpoint=Path(args.mountpoint).absolute(),
        api_url=args.api,
        cache_dir=Path(args.cache_dir).absolute(),
        cache_size=args.cache_size,
        ttl=args.ttl,
        fuse_options=mounting.parse_fuse_options(",".join(args.o or [])),
        emulator_data=Path(args.emulator_data).absolute() if args.emulator_data else None,
    )


def _log_path(cache_dir: Path, mountpoint: Path) -> Path:
    return cache_dir / "logs" / (str(mountpoint.absolute()).strip("/").replace("/", "_") + ".log")


def cmd_mount(args: argparse.Namespace) -> None:
    options = _mount_options(args)
    if args.foreground:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        mounting.run_foreground(options)
        return
    log_path = _log_path(options.cache_dir, options.mountpoint)
    mounting.spawn(options, log_path)
    print(f"mounted {options.api_url} at {options.mountpoint} (log: {log_path})")


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

    username = args.username or input("username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    tokens = TokenStore(args.api)
    tokens.save(Client(args.api).login(username, password, ttl_days=args.ttl_days))
    print(f"logged in as {username}; token saved to {tokens.path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from blfs.emulator.control import generated_data

    cache_dir = Path(args.cache_dir).absolute()
    Path(args.mountpoint).mkdir(parents=True, exist_ok=True)  # a newcomer's one command
    options = mounting.MountOptions(
        mountpoint=Path(args.mountpoint).absolute(),
        api_url="",
        cache_dir=cache_dir / "demo-cache",
        ttl=args.ttl,
        emulator_data=generated_data(cache_dir / "demo-data", seed=1),
    )
    mounting.check_mountpoint(options.mountpoint)
    log_path = _log_path(cache_dir, options.mountpoint)
    mounting.spawn(options, log_path)
    print(
        f"brainlife demo mounted at {options.mountpoint} (log: {log_path})\n"
        f"  try:  ls {options.mountpoint}/projects\n"
        f"  stop: blfs umount {options.mountpoint}"
    )


def cmd_status(args: argparse.Namespace) -> None:
    mounts = status.running_mounts()
    if not mounts:
        print("no blfs mounts")
    for record in mounts:
        cache = record.get("cache", {})
        print(f"{record['mountpoint']}  (pid {record['pid']}, {record['api']})")
        print(
            f"  cache {record['cache_dir']}: {human(cache.get('used', 0))}"
            f" of {human(cache.get('max', 0))}"
        )
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

    failed = prefetch([Path(p) for p in args.paths], parallel=args.parallel)
    if failed:
        raise SystemExit(f"blfs: {failed} object(s) could not be fetched")


def _cache(args: argparse.Namespace):
    from blfs.cache import Cache

    root = Path(args.cache_dir)
    record = next(
        (r for r in status.running_mounts() if Path(r["cache_dir"]) == root.absolute()), None
    )
    bound = record["cache"]["max"] if record else mounting.default_cache_size(root)
    return Cache(root, bound)


def _cache_keys(targets: list[str]) -> list[str]:
    """Cache keys of objects named by id or by any path inside their directory."""
    from blfs.cache import object_key

    keys = []
    for target in targets:
        object_id = last_object_id(Path(target).parts)
        if object_id is None:
            raise SystemExit(f"blfs: {target} names no data-object")
        keys.append(object_key(object_id))
    return keys


def cmd_cache(args: argparse.Namespace) -> None:
    cache = _cache(args)
    if args.action == "du":
        used, bound = cache.usage()
        print(f"{human(used)} of {human(bound)} in {cache.root} ({len(cache.entries())} entries)")
    elif args.action == "ls":
        for entry in cache.entries():
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_use))
            print(f"{human(entry.size):>10}  {used}  {entry.key}")
    else:
        removed = cache.clear(_cache_keys(args.targets) if args.targets else None)
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blfs", description="brainlife.io as a read-only filesystem"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_api(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--api",
            default=mounting.default_api_url(),
            help="API base URL (default https://$BLHOST/api, BLHOST defaults to brainlife.io)",
        )

    def add_cache_dir(command: argparse.ArgumentParser) -> None:
        command.add_argument("--cache-dir", default=str(mounting.default_cache_dir()))

    def add_ttl(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--ttl",
            type=float,
            default=60.0,
            help="seconds a listing is trusted before asking the server again (default 60)",
        )

    mount = commands.add_parser("mount", help="mount brainlife at MOUNTPOINT")
    mount.add_argument("mountpoint")
    add_api(mount)
    add_cache_dir(mount)
    mount.add_argument("--cache-size", type=parse_size, help="cache bound, e.g. 20G")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", action="append", metavar="OPT[,OPT…]", help="FUSE mount options")
    add_ttl(mount)
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

    demo = commands.add_parser("demo", help="mount the bundled sample server: no account needed")
    demo.add_argument("mountpoint")
    add_cache_dir(demo)
    add_ttl(demo)
    demo.set_defaults(func=cmd_demo)

    commands.add_parser("status", help="mounts, downloads and cache use").set_defaults(
        func=cmd_status
    )

    prefetch = commands.add_parser("prefetch", help="fetch every object under mounted paths")
    prefetch.add_argument("paths", nargs="+")
    prefetch.add_argument("--parallel", "-j", type=int, default=4)
    prefetch.set_defaults(func=cmd_prefetch)

    cache = commands.add_parser("cache", help="cache usage, contents, clearing")
    cache.add_argument("action", nargs="?", choices=("du", "ls", "clear"), default="du")
    cache.add_argument("targets", nargs="*", help="clear: object ids or paths (default: all)")
    add_cache_dir(cache)
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BlfsError as exc:
        raise SystemExit(f"blfs: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
