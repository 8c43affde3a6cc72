"""A passthrough FUSE filesystem with the faults of real shared filesystems, for tests: `flock`
refused with ENOLCK (NFS mounted without a lock manager), and the first `fsync` of each file
failing with a chosen errno (a full disk, a quota, an I/O error found at writeback), after
which, as Linux does, a new descriptor's fsync reports success.

    python tests/faultfs.py ROOT MOUNTPOINT [--refuse-locks] [--fail-fsync ERRNO --under DIR]

`fault_filesystem(...)` mounts one for a test and always unmounts it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

READY_TIMEOUT = 20.0


def _operations(root: str, refuse_locks: bool, fail_fsync: int | None, under: str):
    """The filesystem's operations (mfusepy registers only the ones a class defines, so `flock`
    exists only when it is to be refused; the kernel keeps other flocks itself)."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy
    from mfusepy import FuseOSError, Operations

    def real(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    def errors(function):
        def wrapped(*args):
            try:
                return function(*args)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from None

        return wrapped

    class Passthrough(Operations):
        use_ns = True

        def __init__(self) -> None:
            self._synced: set[str] = set()
            self._lock = threading.Lock()

        @errors
        def getattr(self, path, fh=None):
            st = os.lstat(real(path)) if fh is None else os.fstat(fh)
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")
            attrs = {key: getattr(st, key) for key in keys}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return attrs

        @errors
        def readdir(self, path, fh):
            return [".", "..", *os.listdir(real(path))]

        @errors
        def mkdir(self, path, mode):
            return os.mkdir(real(path), mode)

        @errors
        def rmdir(self, path):
            return os.rmdir(real(path))

        @errors
        def unlink(self, path):
            return os.unlink(real(path))

        @errors
        def rename(self, old, new):
            return os.rename(real(old), real(new))

        @errors
        def chmod(self, path, mode):
            return os.chmod(real(path), mode)

        @errors
        def chown(self, path, uid, gid):
            return os.chown(real(path), uid, gid)

        @errors
        def utimens(self, path, times=None):
            return os.utime(real(path), ns=times)

        @errors
        def truncate(self, path, length, fh=None):
            return os.truncate(real(path) if fh is None else fh, length)

        @errors
        def open(self, path, flags):
            return os.open(real(path), flags)

        @errors
        def create(self, path, mode, fi=None):
            return os.open(real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

        @errors
        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        @errors
        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        @errors
        def release(self, path, fh):
            return os.close(fh)

        @errors
        def flush(self, path, fh):
            return 0

        @errors
        def fsync(self, path, datasync, fh):
            self._fault(path)
            return os.fsync(fh)

        @errors
        def opendir(self, path):
            return os.open(real(path), os.O_RDONLY | os.O_DIRECTORY)

        @errors
        def releasedir(self, path, fh):
            return os.close(fh)

        @errors
        def fsyncdir(self, path, datasync, fh):
            self._fault(path)
            return os.fsync(fh)

        @errors
        def statfs(self, path):
            st = os.statvfs(real(path))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            return {key: getattr(st, key) for key in (*keys, "f_ffree", "f_favail", "f_namemax")}

        def _fault(self, path: str) -> None:
            """The first fsync of each path under `under` fails, as a lost writeback does."""
            if fail_fsync is None or not path.lstrip("/").startswith(under):
                return
            with self._lock:
                first = path not in self._synced
                self._synced.add(path)
            if first:
                raise OSError(fail_fsync, os.strerror(fail_fsync))

    class RefusingLocks(Passthrough):
        def flock(self, path, fh, op):
            raise FuseOSError(errno.ENOLCK)

        def lock(self, path, fh, cmd, lock):
            raise FuseOSError(errno.ENOLCK)

    return mfusepy, RefusingLocks() if refuse_locks else Passthrough()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("mountpoint")
    parser.add_argument("--refuse-locks", action="store_true")
    parser.add_argument("--fail-fsync", choices=("ENOSPC", "EDQUOT", "EIO"))
    parser.add_argument("--under", default="", help="fail fsync only below this path")
    args = parser.parse_args()
    fail = getattr(errno, args.fail_fsync) if args.fail_fsync else None
    mfusepy, operations = _operations(args.root, args.refuse_locks, fail, args.under)
    mfusepy.FUSE(operations, args.mountpoint, foreground=True, raw_fi=False)


@contextlib.contextmanager
def fault_filesystem(directory: Path, *options: str) -> Iterator[Path]:
    """`directory`/root served at `directory`/mnt by this filesystem with `options`, unmounted
    (and its process ended) whatever happens."""
    from mount_fixtures import require_fuse

    from blfs import mountinfo

    require_fuse()
    root, point = directory / "root", directory / "mnt"
    root.mkdir(parents=True)
    point.mkdir()
    log = directory / "faultfs.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, __file__, str(root), str(point), *options],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not mountinfo.is_mounted(point):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faultfs did not mount: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        yield point
    finally:
        if mountinfo.is_mounted(point):
            subprocess.run([mountinfo.fusermount(), "-u", str(point)], capture_output=True)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if mountinfo.is_mounted(point):
            subprocess.run([mountinfo.fusermount(), "-uz", str(point)], capture_output=True)


if __name__ == "__main__":
    main()
