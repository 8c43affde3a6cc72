"""Owner-only files and directories: what blfs keeps may be a private project's data.

Modes are given at creation (a umask can only take bits away, never add them) and set again on
directories that already existed, so a cache made by an older version or a loose umask is
tightened the next time it is used.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Creates `path` and its missing parents owner-only, and tightens `path` (only) if it
    existed: the parents that were there are the user's own business."""
    _create(path)
    tighten(path)
    return path


def _create(path: Path) -> None:
    if path.is_dir():
        return
    _create(path.parent)
    with suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)


def tighten(path: Path | str) -> None:
    """Takes group and other bits off an existing file or directory (not a symlink's target)."""
    with suppress(FileNotFoundError):
        mode = os.stat(path, follow_symlinks=False).st_mode
        if mode & 0o077 and not stat.S_ISLNK(mode):
            os.chmod(path, stat.S_IMODE(mode) & 0o700)


def tighten_children(directory: Path) -> None:
    """Tightens every direct child of `directory`: closing a directory hides all below it."""
    with suppress(FileNotFoundError, NotADirectoryError), os.scandir(directory) as children:
        for child in children:
            tighten(child.path)


def write_private(path: Path, data: bytes) -> None:
    """Writes a new or replaced file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
