"""What the kernel says is mounted, and how to take a FUSE mount down."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path


def _unescape(field: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem `path` is on (`ext4`, `nfs4`, `fuse.sshfs`…): that of the
    deepest mount holding it."""
    return mount_of(path)[0]


def mount_of(path: str | Path, table: str = "/proc/self/mountinfo") -> tuple[str, frozenset[str]]:
    """The type and the options (the mount's and its filesystem's) of the deepest mount holding
    `path`, as `table` (a mountinfo file) lists them."""
    target = os.path.realpath(path)
    best, found = "", ("", frozenset[str]())
    with open(table, encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            point = _unescape(fields[4])
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                rest = fields[fields.index("-") + 1 :]
                options = fields[5].split(",") + (rest[2].split(",") if len(rest) > 2 else [])
                best, found = point, (rest[0], frozenset(options))
    return found


def _fuse_mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, type, super options) of every FUSE mount, from mountinfo (os.path.ismount
    lies about dead mounts)."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            rest = fields[fields.index("-") + 1 :]
            if rest[0] == "fuse" or rest[0].startswith("fuse."):
                mounts.append((_unescape(fields[4]), rest[0], rest[2] if len(rest) > 2 else ""))
    return mounts


def fuse_mountpoints() -> list[str]:
    """Every FUSE mountpoint."""
    return [point for point, _, _ in _fuse_mounts()]


def blfs_mountpoints(uid: int) -> list[str]:
    """The blfs mounts (type fuse.blfs) that the user `uid` made, live or stale."""
    return [
        point
        for point, kind, options in _fuse_mounts()
        if kind == "fuse.blfs" and f"user_id={uid}" in options.split(",")
    ]


def is_mounted(mountpoint: str | Path) -> bool:
    return os.path.realpath(mountpoint) in fuse_mountpoints()


def is_stale(mountpoint: str | Path) -> bool:
    """A mount whose process died answers ENOTCONN ("Transport endpoint is not connected").

    statfs always reaches the daemon; stat could be answered from the kernel's attribute cache.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("neither fusermount3 nor fusermount is installed (apt install fuse3)")


def unmount(mountpoint: str | Path, *, lazy: bool = False) -> None:
    """Unmounts, raising with fusermount's own message when it refuses (e.g. busy)."""
    args = [fusermount(), "-uz" if lazy else "-u", str(mountpoint)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"{' '.join(args)} failed")
