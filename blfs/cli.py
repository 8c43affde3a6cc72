"""The `blfs` command line: argument parsing, then one call into the layer that does the work."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from blfs import mountinfo, mounting, status
from blfs.errors import BlfsError

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'500M', '20G', '1.5T' or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 500M, 20G)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


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
    mountinfo.unmount(mountpoint, lazy=args.lazy)
    if record:
        deadline = time.monotonic() + 15
        while status.mount_record(str(mountpoint)) and time.monotonic() < deadline:
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


def _demo_data(cache_dir: Path) -> Path:
    """Generates the sample data once; a half-generated copy never looks finished."""
    data = cache_dir / "demo-data"
    if data.is_dir():
        return data
    staging = cache_dir / f"demo-data.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "blfs.emulator", "generate", str(staging), "--seed", "1"], check=True
    )
    staging.rename(data)
    return data


def cmd_demo(args: argparse.Namespace) -> None:
    cache_dir = Path(args.cache_dir).absolute()
    options = mounting.MountOptions(
        mountpoint=Path(args.mountpoint).absolute(),
        api_url="",
        cache_dir=cache_dir / "demo-cache",
        ttl=args.ttl,
        emulator_data=_demo_data(cache_dir),
    )
    mounting.check_mountpoint(options.mountpoint)
    log_path = _log_path(cache_dir, options.mountpoint)
    mounting.spawn(options, log_path)
    print(
        f"brainlife demo mounted at {options.mountpoint} (log: {log_path})\n"
        f"  try:  ls {options.mountpoint}/projects\n"
        f"  stop: blfs umount {options.mountpoint}"
    )


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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BlfsError as exc:
        raise SystemExit(f"blfs: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
