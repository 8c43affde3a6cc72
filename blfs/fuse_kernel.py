"""libfuse 3's low-level API: the kernel keeps listings and attributes, Python answers only what
it must (DESIGN §9, §10).

mfusepy binds libfuse's high-level (path) API, whose `opendir` drops the `cache_readdir` and
`keep_cache` flags before libfuse 3.16.1 and whose readdir drops the attributes of entries filled
at offset 0 before 3.17.1: on the libfuse 3.14 of current Debian and Ubuntu every repeated listing
and every entry of a first `ls -l` would cost a round trip into Python. This module binds the
low-level (inode) API for the few calls a read-only mount needs and answers them with the path
operations of any object that has them (`Operations`: the FUSE adapter's), adding what only the
low level can give:

- directories open without a message and the kernel keeps their listings (zero-message
  opendir, kernel ≥ 5.1): a repeated walk never reaches this process;
- a kept listing is dropped (`notify_inval_inode`) once it is older than the TTL, when the
  kernel next asks for the directory's attributes (which expire with it), and at once when a
  metadata answer it shows changes;
- `readdirplus` hands each entry's attributes with the listing when they are exact (an entry
  whose size is not known yet is listed by name and type only, so the kernel asks for it);
- entry and attribute timeouts equal the TTL on every reply;
- lookups in one directory run in parallel (asked for in `_init`, or by `_ReplyHook`);
- the kernel reads complete cache files by itself where it grants that (`passthrough`), and
  other file bytes go from the cache file to the kernel by splice.

Calls left out (`access`, `flush`, `getxattr`…) are answered by libfuse in C or remembered by
the kernel as unsupported, so they never reach Python.

Every struct and call bound here states the libfuse versions it was checked against (`CHECKED`;
`tests/test_libfuse_layout.py` compares each layout with those versions' headers). What each
version can give:

- 3.10 to 3.12: no way to ask for parallel lookups or passthrough (no reply hook either);
- 3.13 to 3.17.0: both added to libfuse's INIT reply by `_ReplyHook`;
- 3.17.1 and later: both asked for through `want_ext`, passthrough through libfuse's own
  `fuse_passthrough_open` and `fuse_file_info.backing_id`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import mfusepy

from blfs import libfuse
from blfs.errors import BlfsError
from blfs.passthrough import (
    FOPEN_PASSTHROUGH,
    FUSE_PASSTHROUGH,
    MAX_STACK_DEPTH,
    Passthrough,
    session_backing,
)

log = logging.getLogger("blfs")

# The libfuse versions every struct and call below was checked against.
CHECKED = ((3, 10, 5), (3, 14, 0), (3, 17, 2), (3, 18, 2))
HOOKED = ((3, 13, 0), (3, 17, 0))  # versions that cannot ask for what `_ReplyHook` adds
ASKS_ITSELF = (3, 17, 1)  # from here a filesystem asks for parallel lookups (`want_ext`)

ROOT = 1  # FUSE_ROOT_ID
UNKNOWN_INO = 0xFFFFFFFF  # FUSE_UNKNOWN_INO: a listed entry the kernel holds no number for
_FIRST_TABLE = 1024  # the first size of `Inodes`' table (a power of 2)
# `FUSE_CAP_*` of fuse_common.h (the same bits in every checked version).
FUSE_CAP_SPLICE_WRITE = 1 << 7
FUSE_CAP_PARALLEL_DIROPS = 1 << 18
FUSE_CAP_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_CAP_PASSTHROUGH = 1 << 29  # 3.17.0 and later
FUSE_BUF_IS_FD, FUSE_BUF_FD_SEEK = 1 << 1, 1 << 2
FUSE_PARALLEL_DIROPS = 1 << 18  # the same capability as the kernel's INIT flag
FUSE_INIT_EXT = 1 << 30
# Offsets in `struct fuse_init_out` (the 64 bytes libfuse sends to kernels of protocol ≥ 7.23).
_INIT_OUT_FLAGS, _INIT_OUT_FLAGS2, _INIT_OUT_STACK_DEPTH = 12, 32, 36
# Where an entry's name starts in a listing page (`struct fuse_dirent`, `struct fuse_direntplus`
# of the kernel's ABI): an entry takes this plus its name, rounded up to 8 bytes.
_NAME_OFFSET = 24
_NAME_OFFSET_PLUS = 128 + _NAME_OFFSET

_req = ctypes.c_void_p
_ino = ctypes.c_uint64
_off = ctypes.c_int64

# Every struct below was checked against the headers of libfuse 3.10.5, 3.14.0, 3.17.2 and
# 3.18.2 (`CHECKED`). Each names its C struct (`_c_name_`), the versions the binding uses it with
# (`_used_`, inclusive; all checked ones when absent), the fields that exist only from some
# version on (`_since_`), and whether its size must be libfuse's (`_sized_`: the binding
# allocates it, or steps through an array of it); fields named with `_` are padding.


class FileInfo(ctypes.Structure):
    """`struct fuse_file_info`, which libfuse allocates: only the fields the binding and the
    adapter use. The first three flag bits are where they are in every version (3.15 and 3.16
    moved the later ones); `backing_id` is 3.17's, the struct's padding before."""

    _c_name_ = "struct fuse_file_info"
    _since_ = {"backing_id": (3, 17, 0)}
    _sized_ = False
    _fields_ = [
        ("flags", ctypes.c_int32),
        ("writepage", ctypes.c_uint32, 1),
        ("direct_io", ctypes.c_uint32, 1),
        ("keep_cache", ctypes.c_uint32, 1),
        ("_flags", ctypes.c_uint32, 29),
        ("_padding2", ctypes.c_uint32),
        ("fh", ctypes.c_uint64),
        ("lock_owner", ctypes.c_uint64),
        ("poll_events", ctypes.c_uint32),
        ("backing_id", ctypes.c_int32),
    ]


class ConnInfo(ctypes.Structure):
    """`struct fuse_conn_info`, which libfuse allocates. 3.17 put the 64-bit capabilities and
    the passthrough stack depth where older versions have reserved (zero) words."""

    _c_name_ = "struct fuse_conn_info"
    _since_ = {
        "max_backing_stack_depth": (3, 17, 0),
        "capable_ext": (3, 17, 0),
        "want_ext": (3, 17, 0),
    }
    _sized_ = False
    _fields_ = [
        ("proto_major", ctypes.c_uint32),
        ("proto_minor", ctypes.c_uint32),
        ("max_write", ctypes.c_uint32),
        ("max_read", ctypes.c_uint32),
        ("max_readahead", ctypes.c_uint32),
        ("capable", ctypes.c_uint32),
        ("want", ctypes.c_uint32),
        ("max_background", ctypes.c_uint32),
        ("congestion_threshold", ctypes.c_uint32),
        ("time_gran", ctypes.c_uint32),
        ("max_backing_stack_depth", ctypes.c_uint32),
        ("_bits", ctypes.c_uint32),
        ("capable_ext", ctypes.c_uint64),
        ("want_ext", ctypes.c_uint64),
    ]


_file_info_p = ctypes.POINTER(FileInfo)


class _EntryParam(ctypes.Structure):
    """`struct fuse_entry_param`."""

    _c_name_ = "struct fuse_entry_param"
    _fields_ = [
        ("ino", _ino),
        ("generation", ctypes.c_uint64),
        ("attr", mfusepy.c_stat),
        ("attr_timeout", ctypes.c_double),
        ("entry_timeout", ctypes.c_double),
    ]


class _Args(ctypes.Structure):
    """`struct fuse_args`."""

    _c_name_ = "struct fuse_args"
    _fields_ = [
        ("argc", ctypes.c_int),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("allocated", ctypes.c_int),
    ]


class _Forget(ctypes.Structure):
    """`struct fuse_forget_data`: `forget_multi` hands an array of them."""

    _c_name_ = "struct fuse_forget_data"
    _fields_ = [("ino", _ino), ("nlookup", ctypes.c_uint64)]


class _LegacyLoopConfig(ctypes.Structure):
    """`struct fuse_loop_config` of libfuse < 3.12 (no thread cap there)."""

    _c_name_ = "struct fuse_loop_config"
    _used_ = ((3, 0, 0), (3, 11, 99))
    _fields_ = [("clone_fd", ctypes.c_int), ("max_idle_threads", ctypes.c_uint)]


_CALLBACKS = {
    "init": ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ConnInfo)),
    "lookup": ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p),
    "forget": ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_uint64),
    "getattr": ctypes.CFUNCTYPE(None, _req, _ino, _file_info_p),
    "open": ctypes.CFUNCTYPE(None, _req, _ino, _file_info_p),
    "read": ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t, _off, _file_info_p),
    "release": ctypes.CFUNCTYPE(None, _req, _ino, _file_info_p),
    "opendir": ctypes.CFUNCTYPE(None, _req, _ino, _file_info_p),
    "readdir": ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t, _off, _file_info_p),
    "statfs": ctypes.CFUNCTYPE(None, _req, _ino),
    "forget_multi": ctypes.CFUNCTYPE(None, _req, ctypes.c_size_t, ctypes.POINTER(_Forget)),
    "readdirplus": ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t, _off, _file_info_p),
}
# `struct fuse_lowlevel_ops` up to `readdirplus`, in order; later libfuse versions only append.
_OPS_ORDER = [
    "init", "destroy", "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
    "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush", "release",
    "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr",
    "listxattr", "removexattr", "access", "create", "getlk", "setlk", "bmap", "ioctl", "poll",
    "write_buf", "retrieve_reply", "forget_multi", "flock", "fallocate", "readdirplus",
]  # fmt: skip


class _LowLevelOps(ctypes.Structure):
    """`struct fuse_lowlevel_ops` up to `readdirplus`: its size is handed to libfuse, which
    takes the operations after it as absent."""

    _c_name_ = "struct fuse_lowlevel_ops"
    _sized_ = False
    _fields_ = [(name, _CALLBACKS.get(name, ctypes.c_void_p)) for name in _OPS_ORDER]


class _Buf(ctypes.Structure):
    """`struct fuse_buf` (`mem_size` is 3.17's: before, past the end of a one-buffer vector)."""

    _c_name_ = "struct fuse_buf"
    _since_ = {"mem_size": (3, 17, 0)}
    _sized_ = False
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", _off),
        ("mem_size", ctypes.c_size_t),
    ]


class _BufVec(ctypes.Structure):
    """`struct fuse_bufvec` of one buffer (the binding never hands more)."""

    _c_name_ = "struct fuse_bufvec"
    _sized_ = False
    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", _Buf * 1),
    ]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


_WRITEV = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_int,
    ctypes.c_void_p,
    use_errno=True,
)


class _CustomIo(ctypes.Structure):
    """`struct fuse_custom_io` of libfuse 3.13 to 3.17.0 (libfuse copies all of it)."""

    _c_name_ = "struct fuse_custom_io"
    _used_ = HOOKED
    _fields_ = [
        ("writev", _WRITEV),
        ("read", ctypes.c_void_p),
        ("splice_receive", ctypes.c_void_p),
        ("splice_send", ctypes.c_void_p),
    ]


# The calls the binding makes, with the first libfuse version that has each (3.0 for most);
# checked against the libraries of 3.10.5, 3.14.0, 3.17.2 and 3.18.2 (`CHECKED`). From 3.17 the
# headers turn `fuse_session_new` into `fuse_session_new_versioned`; the plain symbol stays
# exported, and libfuse (to 3.18.2) keeps the caller's version without reading it.
CALLS_SINCE = {
    "fuse_reply_err": (3, 0, 0),
    "fuse_reply_none": (3, 0, 0),
    "fuse_reply_entry": (3, 0, 0),
    "fuse_reply_attr": (3, 0, 0),
    "fuse_reply_open": (3, 0, 0),
    "fuse_reply_buf": (3, 0, 0),
    "fuse_reply_data": (3, 0, 0),
    "fuse_reply_statfs": (3, 0, 0),
    "fuse_add_direntry": (3, 0, 0),
    "fuse_add_direntry_plus": (3, 0, 0),
    "fuse_session_new": (3, 0, 0),
    "fuse_session_mount": (3, 0, 0),
    "fuse_session_fd": (3, 0, 0),
    "fuse_set_signal_handlers": (3, 0, 0),
    "fuse_remove_signal_handlers": (3, 0, 0),
    "fuse_session_unmount": (3, 0, 0),
    "fuse_session_destroy": (3, 0, 0),
    "fuse_lowlevel_notify_inval_inode": (3, 0, 0),
    "fuse_session_loop_mt_32": (3, 2, 0),
    "fuse_loop_cfg_create": (3, 12, 0),
    "fuse_loop_cfg_set_max_threads": (3, 12, 0),
    "fuse_loop_cfg_set_idle_threads": (3, 12, 0),
    "fuse_loop_cfg_destroy": (3, 12, 0),
    "fuse_session_loop_mt_312": (3, 12, 0),
    "fuse_session_custom_io": (3, 13, 0),
    "fuse_passthrough_open": (3, 17, 0),
}


def _library(name: str) -> ctypes.PyDLL:
    """libfuse 3 with the prototypes of the calls that never block (replies, entries,
    notifications: one quick write each). Called with the GIL held: releasing and taking it
    back around each one would let any busy thread delay every reply by a switch interval."""
    lib = ctypes.PyDLL(name, use_errno=True)
    p = ctypes.POINTER
    prototypes: dict[str, tuple[Any, list[Any]]] = {
        "fuse_reply_err": (ctypes.c_int, [_req, ctypes.c_int]),
        "fuse_reply_none": (None, [_req]),
        "fuse_reply_entry": (ctypes.c_int, [_req, p(_EntryParam)]),
        "fuse_reply_attr": (ctypes.c_int, [_req, p(mfusepy.c_stat), ctypes.c_double]),
        "fuse_reply_open": (ctypes.c_int, [_req, _file_info_p]),
        "fuse_reply_buf": (ctypes.c_int, [_req, ctypes.c_void_p, ctypes.c_size_t]),
        "fuse_reply_statfs": (ctypes.c_int, [_req, p(mfusepy.c_statvfs)]),
        "fuse_add_direntry": (
            ctypes.c_size_t,
            [_req, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, p(mfusepy.c_stat), _off],
        ),
        "fuse_add_direntry_plus": (
            ctypes.c_size_t,
            [_req, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, p(_EntryParam), _off],
        ),
        "fuse_session_new": (
            ctypes.c_void_p,
            [p(_Args), p(_LowLevelOps), ctypes.c_size_t, ctypes.c_void_p],
        ),
        "fuse_session_mount": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
        "fuse_session_fd": (ctypes.c_int, [ctypes.c_void_p]),
        "fuse_set_signal_handlers": (ctypes.c_int, [ctypes.c_void_p]),
        "fuse_remove_signal_handlers": (None, [ctypes.c_void_p]),
        "fuse_session_unmount": (None, [ctypes.c_void_p]),
        "fuse_session_destroy": (None, [ctypes.c_void_p]),
        "fuse_lowlevel_notify_inval_inode": (ctypes.c_int, [ctypes.c_void_p, _ino, _off, _off]),
    }
    if hasattr(lib, "fuse_passthrough_open"):  # one ioctl; 0 and errno when refused
        prototypes["fuse_passthrough_open"] = (ctypes.c_int, [_req, ctypes.c_int])
    for function, (restype, argtypes) in prototypes.items():
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


class _ReplyHook:
    """Completes libfuse's INIT reply with what libfuse 3.13 to 3.17.0 cannot ask for:
    - that lookups in one directory may run in parallel: those versions compute the flag and
      leave it out of the reply. The kernel then sends one lookup per directory at a time, and
      a `stat` of a member waiting for its archive holds up `_info.json` beside it for a whole
      stall timeout;
    - backing files (`passthrough`), which those versions do not know of.

    libfuse writes its replies through a hook (`fuse_session_custom_io`). This one completes
    the first reply, which is INIT's (the kernel asks nothing else before it), and hands every
    reply to libc's `writev`. Requests are read by libc's `read`, and file data is spliced by
    libc's `splice`, themselves: their arguments lead the hooks'."""

    def __init__(self, backing_files: bool) -> None:
        self.backing_files = backing_files
        self._libc = libc = ctypes.PyDLL(None, use_errno=True)  # a reply is one quick write
        self._libc.writev.restype = ctypes.c_ssize_t
        self._libc.writev.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_int]
        self._init_reply_pending = True
        self._kernel_offers = False
        self.fd = -1  # the session's /dev/fuse descriptor, once installed
        reader, splicer = (ctypes.cast(f, ctypes.c_void_p).value for f in (libc.read, libc.splice))
        self._writer = _WRITEV(self._writev)  # libfuse keeps a copy of the pointer only
        self._io = _CustomIo(writev=self._writer, read=reader, splice_send=splicer)

    @staticmethod
    def needed(version: tuple[int, int, int]) -> bool:
        return HOOKED[0] <= version <= HOOKED[1]

    def install(self, lib: ctypes.CDLL, session: int) -> None:
        lib.fuse_session_custom_io.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.fd = lib.fuse_session_fd(session)
        if lib.fuse_session_custom_io(session, ctypes.byref(self._io), self.fd) != 0:
            raise BlfsError("libfuse refused its reply hook")

    def kernel_offers(self, capable: int) -> bool:
        """What libfuse's init learnt: the flag only goes to a kernel that offered it."""
        self._kernel_offers = bool(capable & FUSE_CAP_PARALLEL_DIROPS)
        return self._kernel_offers

    def _writev(self, fd: int, iov: Any, count: int, userdata: int) -> int:
        if self._init_reply_pending:
            self._init_reply_pending = False
            if count >= 2:
                self._complete_init(iov[1].base, iov[1].length)
        # With `use_errno` on both sides, a failed write's errno reaches libfuse.
        return self._libc.writev(fd, iov, count)

    def _complete_init(self, reply: int, length: int) -> None:
        """Adds to `struct fuse_init_out` the flags a kernel that does not know them ignores."""
        if length < _INIT_OUT_STACK_DEPTH + 4:
            return
        flags = ctypes.c_uint32.from_address(reply + _INIT_OUT_FLAGS)
        if self._kernel_offers:
            flags.value |= FUSE_PARALLEL_DIROPS
        if self.backing_files and flags.value & FUSE_INIT_EXT:  # `flags2` is read only then
            ctypes.c_uint32.from_address(reply + _INIT_OUT_FLAGS2).value |= FUSE_PASSTHROUGH >> 32
            ctypes.c_uint32.from_address(reply + _INIT_OUT_STACK_DEPTH).value = MAX_STACK_DEPTH


def _data_reply(name: str) -> Any:
    """`fuse_reply_data`, called with the GIL released: it copies up to a MiB of file data into
    the kernel, and the download thread feeding a reader of a growing file runs meanwhile."""
    reply = ctypes.CDLL(name).fuse_reply_data
    reply.restype = ctypes.c_int
    reply.argtypes = [_req, ctypes.POINTER(_BufVec), ctypes.c_int]
    return reply


class Span(Protocol):
    """Where on disk a piece of a file is (for a reply that splices it)."""

    fd: int
    offset: int
    length: int


class Operations(Protocol):
    """The path operations the binding calls (the FUSE adapter's): attributes and listings as
    mfusepy-style dicts, errors as `OSError` with their errno."""

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]: ...
    def listing(
        self, path: str
    ) -> tuple[list[tuple[str, dict[str, Any], int]], bool, frozenset[Hashable]]: ...
    def on_metadata_change(self, callback: Callable[[], None]) -> None: ...
    def open(self, path: str, fi: Any) -> int: ...
    def read_piece(self, path: str, size: int, offset: int, fi: Any) -> bytes | Span: ...
    def backing_fd(self, fi: Any) -> int | None: ...
    def release(self, path: str, fi: Any) -> int: ...
    def statfs(self, path: str) -> dict[str, Any]: ...
    def destroy(self, path: str) -> None: ...


def kernel_release() -> tuple[int, int]:
    """The running kernel's (major, minor)."""
    major, minor, _ = libfuse.parse_version(os.uname().release)
    return major, minor


def may_open_backing_files() -> bool:
    """Whether this process has CAP_SYS_ADMIN, which the kernel asks of whoever opens a backing
    file."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 21))  # CAP_SYS_ADMIN
    return False


@dataclass(frozen=True)
class Features:
    """What a mount got of what it asked for, each with the reason when off."""

    library: libfuse.Libfuse
    parallel_lookups: str
    passthrough: str
    kept_listings: str

    def describe(self) -> str:
        return (
            f"{self.library.describe()}: parallel lookups {self.parallel_lookups}, "
            f"passthrough {self.passthrough}, kernel-kept listings {self.kept_listings}"
        )


Entry = tuple[str, dict[str, Any]]


class Inodes:
    """The inode numbers the kernel holds, each a name in its parent's number: counted per
    lookup, freed when the kernel forgets it, and then handed out again (as libfuse's
    passthrough_ll does), so that the numbers stay as many as those held. A name forgotten and
    looked up again may get another number. A path is made from the chain of parents when
    asked for.

    A walk of a large project leaves the kernel holding some 200,000 numbers, which it forgets
    only under memory pressure. Each is a slot of three arrays (its parent, its lookup count,
    its name, interned: `_info.json` is in every object) and of a hash table from (parent,
    name) to number: some 30 bytes besides a name of its own, where dicts of tuples and ints
    took 300."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # By number (0 is none, 1 is ROOT): the parent's number (a free number's: the next
        # free one), the lookups the kernel holds, the name (None when free).
        self._parents = array("I", [0, 0])
        self._counts = array("Q", [0, 0])
        self._names: list[str | None] = [None, ""]
        self._free = 0  # the last number freed
        # Open addressing with linear probing: a slot holds a number, or 0 when empty.
        self._table = array("I", bytes(4 * _FIRST_TABLE))
        self._used = 0

    def path(self, ino: int) -> str:
        names = []
        with self._lock:
            while ino != ROOT:
                name = self._names[ino] if ino < len(self._names) else None
                if name is None:
                    raise mfusepy.FuseOSError(errno.ESTALE)
                names.append(name)
                ino = self._parents[ino]
        return "/" + "/".join(reversed(names))

    def child(self, parent: int, name: str) -> str:
        base = self.path(parent)
        return f"{base}{name}" if base == "/" else f"{base}/{name}"

    def remember(self, parent: int, names: list[str]) -> list[int]:
        """Numbers for `names` in `parent`, each counted as one more lookup held by the kernel."""
        with self._lock:
            numbers = []
            for name in names:
                slot = self._slot(parent, name)
                ino = self._table[slot]
                if not ino:
                    ino = self._table[slot] = self._allocate(parent, sys.intern(name))
                    self._used += 1
                    if 2 * self._used > len(self._table):
                        self._rehash(2 * len(self._table))
                self._counts[ino] += 1
                numbers.append(ino)
            return numbers

    def forget(self, ino: int, count: int, freeing: Callable[[int], None]) -> bool:
        """Drops `count` lookups; True when the kernel no longer holds the number. `freeing`
        hears of a number the kernel no longer holds before it can be handed out again."""
        with self._lock:
            if ino == ROOT:
                return False
            if ino >= len(self._names) or self._names[ino] is None:
                return True
            left = self._counts[ino] - count
            if left > 0:
                self._counts[ino] = left
                return False
            freeing(ino)
            self._remove(ino)
            self._counts[ino] = 0
            self._names[ino] = None
            self._parents[ino], self._free = self._free, ino
            return True

    def _allocate(self, parent: int, name: str) -> int:
        ino = self._free
        if ino:
            self._free = self._parents[ino]
            self._parents[ino] = parent
            self._names[ino] = name
        else:
            ino = len(self._names)
            self._parents.append(parent)
            self._counts.append(0)
            self._names.append(name)
        return ino

    def _home(self, ino: int) -> int:
        return hash((self._parents[ino], self._names[ino])) & (len(self._table) - 1)

    def _slot(self, parent: int, name: str) -> int:
        """The slot of the table that holds `name` in `parent`, else the empty one it would take."""
        table, mask = self._table, len(self._table) - 1
        slot = hash((parent, name)) & mask
        while (ino := table[slot]) and (self._parents[ino] != parent or self._names[ino] != name):
            slot = (slot + 1) & mask
        return slot

    def _remove(self, ino: int) -> None:
        """Empties the slot of `ino` and moves each number after it whose probe passed it
        back into the hole (deletion without tombstones)."""
        table, mask = self._table, len(self._table) - 1
        hole = self._home(ino)
        while table[hole] != ino:
            hole = (hole + 1) & mask
        slot = hole
        while other := table[(slot := (slot + 1) & mask)]:
            if (slot - self._home(other)) & mask >= (slot - hole) & mask:
                table[hole] = other
                hole = slot
        table[hole] = 0
        self._used -= 1

    def _rehash(self, size: int) -> None:
        self._table = table = array("I", bytes(4 * size))
        for ino in range(ROOT + 1, len(self._names)):
            if self._names[ino] is not None:
                slot = self._home(ino)
                while table[slot]:
                    slot = (slot + 1) & (size - 1)
                table[slot] = ino


class _Keys(tuple[Hashable, ...]):
    """The keys a listing shows, when more than one (a listing of one holds that key)."""

    __slots__ = ()


class _Showing:
    """The listings that show one key, and that key, for them to share: a set of numbers while
    they are few, a bitmap by number once that is smaller (a project's key is shown by nearly
    every listing of its walk: a set took some 70 bytes a listing)."""

    __slots__ = ("key", "count", "_members")

    def __init__(self, key: Hashable, numbers: Iterable[int]) -> None:
        self.key = key
        self._members: set[int] | bytearray = set(numbers)
        self.count = len(self._members)

    def __iter__(self) -> Iterator[int]:
        if isinstance(self._members, set):
            return iter(self._members)
        return (
            8 * i + bit
            for i, byte in enumerate(self._members)
            if byte
            for bit in range(8)
            if byte >> bit & 1
        )

    def add(self, ino: int) -> None:
        members = self._members
        if not isinstance(members, set):
            self.count += _mark(members, ino)
            return
        members.add(ino)
        self.count = len(members)
        # A number in a set takes some 64 bytes (512 bits), in a bitmap 1 bit of the largest.
        if self.count * 512 > ino and self.count * 512 > max(members):
            self._members = bitmap = bytearray()
            for number in members:
                _mark(bitmap, number)

    def discard(self, ino: int) -> None:
        members = self._members
        if isinstance(members, set):
            members.discard(ino)
            self.count = len(members)
        elif ino >> 3 < len(members) and members[ino >> 3] >> (ino & 7) & 1:
            members[ino >> 3] &= ~(1 << (ino & 7))
            self.count -= 1


def _mark(bitmap: bytearray, ino: int) -> bool:
    """Sets the bit of `ino` in `bitmap`; True when it was not set."""
    if ino >> 3 >= len(bitmap):
        bitmap.extend(bytes((ino >> 3) + 1 - len(bitmap)))
    elif bitmap[ino >> 3] >> (ino & 7) & 1:
        return False
    bitmap[ino >> 3] |= 1 << (ino & 7)
    return True


class Listings:
    """The listings the kernel keeps, by directory number: when each was made and the metadata
    it shows (the keys `on_metadata_change` names); while the kernel reads one, its entries.

    A walk leaves some 100,000 kept until the kernel forgets their directories, so a listing
    read to its end keeps only its date (an array slot by number) and its keys (the one key
    object of each, in a tuple when more than one); a key shown by one listing maps to its
    number, by more to a `_Showing`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dates = array("d")
        self._shows: list[Hashable | _Keys | None] = []  # by number; None: not kept
        self._showing: dict[Hashable, int | _Showing] = {}  # a key -> the listings showing it
        self._reading: dict[int, tuple[list[Entry], bool]] = {}  # entries, and whether kept
        self._changes = 0  # metadata changes heard so far

    @property
    def changes(self) -> int:
        with self._lock:
            return self._changes

    def keep(
        self,
        ino: int,
        listed_at: float,
        changes: int,
        entries: list[Entry],
        stable: bool,
        sources: frozenset[Hashable],
    ) -> None:
        """Keeps the listing of `ino` made at `listed_at` after `changes` changes, while the
        kernel reads `entries`."""
        with self._lock:
            # A change heard meanwhile may be one this listing missed: it is not kept.
            stable = stable and changes == self._changes
            self._unlist(ino)
            if ino >= len(self._shows):
                grown = ino + 1 - len(self._shows)
                self._dates.frombytes(bytes(8 * grown))
                self._shows.extend([None] * grown)
            self._dates[ino] = listed_at
            keys = []
            for key in sources:
                members = self._showing.get(key)
                if members is None:
                    self._showing[key] = ino
                elif isinstance(members, _Showing):
                    members.add(ino)
                    key = members.key  # one key object for all the listings showing it
                else:
                    self._showing[key] = _Showing(key, (members, ino))
                keys.append(key)
            self._shows[ino] = keys[0] if len(keys) == 1 else _Keys(keys)
            self._reading[ino] = (entries, stable)

    def entries(self, ino: int) -> list[Entry] | None:
        """The entries of the listing of `ino` the kernel is reading, if any."""
        with self._lock:
            reading = self._reading.get(ino)
        return None if reading is None else reading[0]

    def read_out(self, ino: int, entries: list[Entry]) -> bool:
        """The kernel read `entries` to their end: only the listing's date stays. False when
        the listing may not be kept."""
        with self._lock:
            reading = self._reading.get(ino)
            if reading is None or reading[0] is not entries:  # dropped or listed afresh
                return True
            del self._reading[ino]
            return reading[1]

    def date(self, ino: int) -> float | None:
        """When the listing of `ino` kept by the kernel was made; None when none is."""
        with self._lock:
            kept = ino < len(self._shows) and self._shows[ino] is not None
            return self._dates[ino] if kept else None

    def showing(self, changed: frozenset[Hashable]) -> set[int]:
        """Counts a change of the metadata `changed`, and the listings that show it."""
        with self._lock:
            self._changes += 1
            stale: set[int] = set()
            for key in changed:
                members = self._showing.get(key)
                if isinstance(members, _Showing):
                    stale.update(members)
                elif members is not None:
                    stale.add(members)
            return stale

    def drop(self, ino: int) -> None:
        with self._lock:
            self._unlist(ino)

    def _unlist(self, ino: int) -> None:
        self._reading.pop(ino, None)
        shown = self._shows[ino] if ino < len(self._shows) else None
        if shown is None:
            return
        self._shows[ino] = None
        for key in shown if isinstance(shown, _Keys) else (shown,):
            members = self._showing[key]
            if isinstance(members, _Showing):
                members.discard(ino)
                if members.count == 1:
                    (self._showing[key],) = members
            else:
                del self._showing[key]


_worker = threading.local()


def _kept_thread_state(callback: Callable[..., None]) -> Callable[..., None]:
    """A callback whose thread keeps its Python thread state between requests. ctypes gives a
    thread Python did not start a new state for each callback and deletes it on return, with
    the frame stack it maps: an mmap, an munmap and more per request, some tenth of a walk's
    CPU. One more hold taken on the thread's first callback keeps its state for its life
    (libfuse keeps its worker threads: see `_loop`)."""

    @functools.wraps(callback)
    def wrapper(*args: Any) -> None:
        if not getattr(_worker, "kept", False):
            ctypes.pythonapi.PyGILState_Ensure()
            _worker.kept = True
        callback(*args)

    return wrapper


def _replying(handler: Callable[..., None]) -> Callable[..., None]:
    """Every request gets exactly one answer: errors become their errno, never a lost request."""

    @functools.wraps(handler)
    def wrapper(self: KernelMount, req: int, *args: Any) -> None:
        try:
            handler(self, req, *args)
        except OSError as exc:
            self._lib.fuse_reply_err(req, exc.errno or errno.EIO)
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            self._lib.fuse_reply_err(req, errno.EIO)

    return wrapper


class KernelMount:
    """Serves `operations` at `mountpoint` through libfuse 3's low-level API until unmounted.
    `report` hears, once the kernel's INIT is answered, what the mount got (`Features`)."""

    def __init__(
        self,
        operations: Operations,
        mountpoint: str,
        options: str,
        *,
        ttl: float,
        library: libfuse.Libfuse,
        max_threads: int = 64,
        passthrough: bool = True,
        report: Callable[[Features], None] = lambda features: None,
    ) -> None:
        self._ops = operations
        self._mountpoint = mountpoint
        self._options = options
        self._ttl = ttl
        self._max_threads = max_threads
        self._library = library
        self._lib = _library(library.name)
        self._reply_data = _data_reply(library.name)
        self._report = report
        self._inodes = Inodes()
        self._listings = Listings()
        self._session: int | None = None
        self._zero_message_opendir = False
        self._wants_passthrough = passthrough
        self._passthrough = Passthrough()
        self._reply_with_backing_id = False  # libfuse's own passthrough (3.17.1 and later)
        hooked = _ReplyHook.needed(library.version)
        self._reply_hook = _ReplyHook(passthrough) if hooked else None
        self._callbacks = {
            name: prototype(_kept_thread_state(getattr(self, f"_{name}")))
            for name, prototype in _CALLBACKS.items()
        }

    def serve(self) -> None:
        """Mounts, answers the kernel until unmounted or signalled, then unmounts."""
        ops = _LowLevelOps(**self._callbacks)
        argv = [b"blfs", b"-o", os.fsencode(self._options)]
        args = _Args(len(argv), (ctypes.c_char_p * len(argv))(*argv), 0)
        session = self._lib.fuse_session_new(
            ctypes.byref(args), ctypes.byref(ops), ctypes.sizeof(ops), None
        )
        if not session:
            raise BlfsError("libfuse refused the mount options (see the message above)")
        self._session = session
        self._ops.on_metadata_change(self._forget_listings)
        if self._library.version < HOOKED[0]:
            log.warning(
                "libfuse %s cannot ask the kernel for parallel lookups or passthrough: a stat "
                "beside a file that waits for its download waits with it, and cached files are "
                "read through this process (libfuse 3.13 and later give both)",
                self._library.version_text,
            )
        try:
            if self._lib.fuse_session_mount(session, os.fsencode(self._mountpoint)) != 0:
                raise BlfsError(f"cannot mount at {self._mountpoint}")
            if self._reply_hook:
                self._reply_hook.install(self._lib, session)
                if self._reply_hook.backing_files:
                    self._passthrough.start(*session_backing(self._reply_hook.fd))
            try:
                self._run(session)
            finally:
                self._lib.fuse_session_unmount(session)
        finally:
            self._lib.fuse_session_destroy(session)
            self._ops.destroy("/")

    def _run(self, session: int) -> None:
        # libfuse installs its handlers only over default ones: it then ends the loop cleanly.
        previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self._lib.fuse_set_signal_handlers(session) != 0:
            raise BlfsError("cannot install the signal handlers")
        try:
            result = self._loop(session)
        finally:
            self._lib.fuse_remove_signal_handlers(session)
            signal.signal(signal.SIGINT, previous)
        if result < 0:
            raise BlfsError(f"the FUSE session failed: {os.strerror(-result)}")

    def _loop(self, session: int) -> int:
        """The multithreaded loop with a thread cap: a few waiting downloads must not freeze
        the mount (libfuse 3.12+ defaults to 10 workers). Idle workers are kept, not ended, so
        that the thread states they keep (`_kept_thread_state`) are never left behind."""
        lib = ctypes.CDLL(self._library.name)  # the loop waits for the kernel: without the GIL
        if hasattr(lib, "fuse_loop_cfg_create"):
            lib.fuse_loop_cfg_create.restype = ctypes.c_void_p
            lib.fuse_loop_cfg_set_max_threads.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.fuse_loop_cfg_set_idle_threads.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.fuse_loop_cfg_destroy.argtypes = [ctypes.c_void_p]
            lib.fuse_session_loop_mt_312.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            config = lib.fuse_loop_cfg_create()
            lib.fuse_loop_cfg_set_max_threads(config, self._max_threads)
            lib.fuse_loop_cfg_set_idle_threads(config, self._max_threads)
            try:
                return lib.fuse_session_loop_mt_312(session, config)
            finally:
                lib.fuse_loop_cfg_destroy(config)
        legacy = _LegacyLoopConfig(0, self._max_threads)
        lib.fuse_session_loop_mt_32.argtypes = [ctypes.c_void_p, ctypes.POINTER(_LegacyLoopConfig)]
        return lib.fuse_session_loop_mt_32(session, ctypes.byref(legacy))

    # --- names and attributes ---------------------------------------------------------------

    def _init(self, userdata: int, conn: Any) -> None:
        """Asks libfuse for what the mount uses, the way its version expects, and reports what
        the mount got."""
        info = conn.contents
        self._zero_message_opendir = bool(info.capable & FUSE_CAP_NO_OPENDIR_SUPPORT)
        version = self._library.version
        if version >= ASKS_ITSELF:
            parallel, passthrough = self._ask(info)
        else:
            info.want |= info.capable & FUSE_CAP_SPLICE_WRITE
            parallel = bool(self._reply_hook and self._reply_hook.kernel_offers(info.capable))
            passthrough = bool(self._reply_hook) and kernel_release() >= (6, 9)
        unable = f"off (libfuse {self._library.version_text} cannot ask for it)"
        self._report(
            Features(
                self._library,
                parallel_lookups=_state(
                    parallel, unable if version < HOOKED[0] else "off (the kernel lacks it)"
                ),
                passthrough=self._passthrough_state(passthrough, unable),
                kept_listings=_state(self._zero_message_opendir, "off (kernel < 5.1)"),
            )
        )

    def _ask(self, info: ConnInfo) -> tuple[bool, bool]:
        """libfuse 3.17.1 and later: what `fuse_set_feature_flag` does (an inline function of
        the headers, so not in the library): each capability the kernel offers is wanted in
        `want_ext`. Passthrough is then libfuse's own: a backing id from
        `fuse_passthrough_open`, handed back in `fuse_file_info.backing_id`."""
        wanted = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_PARALLEL_DIROPS
        if self._wants_passthrough:
            wanted |= FUSE_CAP_PASSTHROUGH
        granted = info.capable_ext & wanted
        info.want_ext |= granted
        passthrough = bool(granted & FUSE_CAP_PASSTHROUGH)
        if passthrough:
            info.max_backing_stack_depth = MAX_STACK_DEPTH - 1  # libfuse sends one more
            self._reply_with_backing_id = True
            self._passthrough.start(self._open_backing, session_backing(self._fd())[1])
        return bool(granted & FUSE_CAP_PARALLEL_DIROPS), passthrough

    def _fd(self) -> int:
        return self._lib.fuse_session_fd(self._session)

    def _open_backing(self, req: int, fd: int) -> int:
        backing_id = self._lib.fuse_passthrough_open(req, fd)
        if backing_id <= 0:
            code = ctypes.get_errno() or errno.EPERM
            raise OSError(code, os.strerror(code))
        return backing_id

    def _passthrough_state(self, negotiated: bool, unable: str) -> str:
        if not self._wants_passthrough:
            return "off (-o nopassthrough)"
        if self._library.version < HOOKED[0]:
            return unable
        if not negotiated:
            return "off (kernel < 6.9)"
        if not may_open_backing_files():
            return "off (needs CAP_SYS_ADMIN: run the mount as root)"
        return "on"

    def _entry(self, attrs: dict[str, Any], ino: int) -> _EntryParam:
        """A name's attributes, for the kernel to keep (see `_attr_timeout`)."""
        timeout = self._attr_timeout(ino)
        entry = _EntryParam(ino=ino, attr_timeout=timeout, entry_timeout=self._ttl)
        mfusepy.set_st_attrs(entry.attr, attrs, use_ns=True)
        entry.attr.st_ino = ino
        return entry

    def _attr_timeout(self, ino: int) -> float:
        """The TTL; for a directory whose listing the kernel keeps, only what is left of that
        listing's TTL. The kernel asks for a directory's attributes again before it reuses its
        kept listing once they expired: a listing past its TTL is then dropped, and the kernel
        lists the directory afresh."""
        listed_at = self._listings.date(ino)
        if listed_at is None:
            return self._ttl
        left = self._ttl - (time.monotonic() - listed_at)
        if left > 0:
            return left
        self._forget_listing(ino)
        return self._ttl

    @_replying
    def _lookup(self, req: int, parent: int, name: bytes) -> None:
        decoded = os.fsdecode(name)
        attrs = self._ops.getattr(self._inodes.child(parent, decoded))
        (ino,) = self._inodes.remember(parent, [decoded])
        self._lib.fuse_reply_entry(req, ctypes.byref(self._entry(attrs, ino)))

    def _forget(self, req: int, ino: int, count: int) -> None:
        try:
            self._drop(ino, count)
        finally:
            self._lib.fuse_reply_none(req)

    def _forget_multi(self, req: int, count: int, forgets: Any) -> None:
        try:
            for i in range(count):
                self._drop(forgets[i].ino, forgets[i].nlookup)
        finally:
            self._lib.fuse_reply_none(req)

    def _drop(self, ino: int, count: int) -> None:
        self._inodes.forget(ino, count, self._listings.drop)

    @_replying
    def _getattr(self, req: int, ino: int, fi: Any) -> None:
        stat = mfusepy.c_stat()
        mfusepy.set_st_attrs(stat, self._ops.getattr(self._inodes.path(ino)), use_ns=True)
        stat.st_ino = ino
        self._lib.fuse_reply_attr(req, ctypes.byref(stat), self._attr_timeout(ino))

    @_replying
    def _statfs(self, req: int, ino: int) -> None:
        stats = mfusepy.c_statvfs()
        mfusepy.set_st_attrs(stats, self._ops.statfs(self._inodes.path(ino)))
        self._lib.fuse_reply_statfs(req, ctypes.byref(stats))

    # --- files --------------------------------------------------------------------------------

    @_replying
    def _open(self, req: int, ino: int, fi: Any) -> None:
        """A complete file is opened on its cache file for the kernel to read by itself, where
        it can (see `passthrough`); any other through this process."""
        path = self._inodes.path(ino)
        self._ops.open(path, fi.contents)
        fh = fi.contents.fh
        try:
            backing_id = self._passthrough.open(req, ino, fh, self._ops.backing_fd(fi.contents))
        except OSError:
            self._ops.release(path, fi.contents)
            raise
        if backing_id is None:
            result = self._lib.fuse_reply_open(req, fi)
        elif self._reply_with_backing_id:
            fi.contents.backing_id = backing_id
            fi.contents.keep_cache = 0  # the kernel reads the backing file, not its page cache
            result = self._lib.fuse_reply_open(req, fi)
        else:
            reply = struct.pack("QIi", fh, FOPEN_PASSTHROUGH, backing_id)  # struct fuse_open_out
            result = self._lib.fuse_reply_buf(req, reply, len(reply))
        if result == -errno.ENOENT:  # the open was interrupted
            self._passthrough.release(fh)
            with contextlib.suppress(OSError):  # answered already: nothing more to tell
                self._ops.release(path, fi.contents)

    @_replying
    def _read(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        """Bytes on disk go from the cache file to the kernel by splice, never through Python."""
        piece = self._ops.read_piece(self._inodes.path(ino), size, offset, fi.contents)
        if isinstance(piece, bytes):
            self._lib.fuse_reply_buf(req, piece, len(piece))
        elif piece.length == 0:  # the end of the file: nothing to splice
            self._lib.fuse_reply_buf(req, None, 0)
        else:
            flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK
            span = _Buf(size=piece.length, flags=flags, fd=piece.fd, pos=piece.offset)
            self._reply_data(req, ctypes.byref(_BufVec(count=1, buf=(span,))), 0)

    @_replying
    def _release(self, req: int, ino: int, fi: Any) -> None:
        self._passthrough.release(fi.contents.fh)
        self._ops.release(self._inodes.path(ino), fi.contents)
        self._lib.fuse_reply_err(req, 0)

    # --- directories --------------------------------------------------------------------------

    @_replying
    def _opendir(self, req: int, ino: int, fi: Any) -> None:
        """ "Not implemented", where the kernel takes that to mean: open directories without
        asking, and keep their listings (`FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`) until told
        otherwise. A repeated walk then never reaches this process. Older kernels open each
        directory here, uncached."""
        if self._zero_message_opendir:
            raise mfusepy.FuseOSError(errno.ENOSYS)
        self._lib.fuse_reply_open(req, fi)

    def _forget_listings(self, changed: frozenset[Hashable]) -> None:
        """Metadata answers changed: the listings the kernel keeps that show them are stale
        (and only those: a walk leaves tens of thousands kept)."""
        for ino in self._listings.showing(changed):
            self._forget_listing(ino)

    def _forget_listing(self, ino: int) -> None:
        """Makes the kernel drop the listing it keeps of `ino` (its pages): the next walk of it
        lists it from here again."""
        self._listings.drop(ino)
        self._lib.fuse_lowlevel_notify_inval_inode(self._session, ino, 0, 0)

    @_replying
    def _readdir(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        self._reply_listing(req, ino, size, offset, plus=False)

    @_replying
    def _readdirplus(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        self._reply_listing(req, ino, size, offset, plus=True)

    def _reply_listing(self, req: int, ino: int, size: int, offset: int, plus: bool) -> None:
        """One page of the listing from `offset`; an empty page ends it."""
        entries = self._listing(ino, offset)
        names, used = page(entries, offset, size, plus)
        if not names:  # the empty page that tells the kernel the listing ended
            kept = self._listings.read_out(ino, entries)
            self._lib.fuse_reply_buf(req, None, 0)
            if not kept:
                self._forget_listing(ino)
            return
        shown = entries[offset : offset + len(names)]
        if plus:
            describe: Callable[[int], Any] = self._described_plus(ino, shown)
        else:
            describe = lambda i: _type_only(shown[i][1])  # noqa: E731
        add = self._lib.fuse_add_direntry_plus if plus else self._lib.fuse_add_direntry
        buffer, room = ctypes.create_string_buffer(used), used
        used = 0
        for i, name in enumerate(names):
            position = offset + i + 1
            used += add(req, ctypes.byref(buffer, used), room - used, name, describe(i), position)
        self._lib.fuse_reply_buf(req, buffer, used)

    def _listing(self, ino: int, offset: int) -> list[Entry]:
        """The listing from its start (offset 0), else the one being read."""
        entries = self._listings.entries(ino) if offset else None
        if entries is None:
            listed_at, changes = time.monotonic(), self._listings.changes
            described, stable, sources = self._ops.listing(self._inodes.path(ino))
            entries = [(name, attrs) for name, attrs, _ in described]
            self._listings.keep(ino, listed_at, changes, entries, stable, sources)
        return entries

    def _described_plus(self, ino: int, entries: list[Entry]) -> Callable[[int], _EntryParam]:
        """Entries with exact attributes are handed over with them, each a lookup the kernel
        now holds; the others by name and type only, so the kernel asks for them."""
        exact = [i for i, (_, attrs) in enumerate(entries) if "st_size" in attrs]
        held = self._inodes.remember(ino, [entries[i][0] for i in exact])
        numbers = dict(zip(exact, held, strict=True))

        def describe(i: int) -> _EntryParam:
            if i in numbers:
                return self._entry(entries[i][1], numbers[i])
            return _EntryParam(attr=_type_only(entries[i][1]))

        return describe


def _state(on: bool, off: str) -> str:
    return "on" if on else off


def page(entries: list[Entry], offset: int, size: int, plus: bool) -> tuple[list[bytes], int]:
    """The names of the entries from `offset` that fit in a page of `size` bytes, and the bytes
    they take. A page continues where the previous one ended and looks at no entry past its
    end: a listing costs its length once, however many pages the kernel reads it in (slicing
    from the start cost 2.9 s of CPU for 30,000 entries in 4 KiB pages)."""
    start = _NAME_OFFSET_PLUS if plus else _NAME_OFFSET
    names: list[bytes] = []
    used = 0
    for index in range(offset, len(entries)):
        name = os.fsencode(entries[index][0])
        length = (start + len(name) + 7) & ~7  # FUSE_DIRENT_ALIGN
        if used + length > size:
            break
        names.append(name)
        used += length
    return names, used


def _type_only(attrs: dict[str, Any]) -> mfusepy.c_stat:
    return mfusepy.c_stat(st_mode=attrs["st_mode"], st_ino=UNKNOWN_INO)
