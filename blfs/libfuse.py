"""Which libfuse this process uses, chosen once for mfusepy and for our binding alike.

Two copies of libfuse in one process would each keep their own state (sessions, signal
handlers), and a binding checked against one version would drive the other. So the choice is
made here, once, and handed to mfusepy through the variable it reads at import
(`FUSE_LIBRARY_PATH`):

- `FUSE_LIBRARY_PATH`, a path to the library, picks it;
- otherwise the system's libfuse 3 by soname: `libfuse3.so.4` (3.17 and later), then
  `libfuse3.so.3` (3.0 to 3.16); a dynamic loader search, so `LD_LIBRARY_PATH` counts;
- otherwise libfuse 2, which only mfusepy's path API drives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import sys
from dataclasses import dataclass

from blfs.errors import BlfsError

ENV = "FUSE_LIBRARY_PATH"  # the variable mfusepy reads; ours is the same
_SONAMES = ("libfuse3.so.4", "libfuse3.so.3")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a libfuse version string: `3.14.0`, `3.17.1-rc1` (a
    pre-release of 3.17.1), `3.18.2+git5`, `3.10` (patch 0)."""
    found = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if found is None:
        raise BlfsError(f"cannot read the libfuse version {text!r}")
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class Libfuse:
    """The libfuse this process loaded: what was asked for, the file it is, its version."""

    name: str  # as handed to the dynamic loader (and to mfusepy)
    file: str  # the real file
    version_text: str
    version: tuple[int, int, int]

    @property
    def major(self) -> int:
        return self.version[0]

    def describe(self) -> str:
        return f"libfuse {self.version_text} ({self.file})"


class _DlInfo(ctypes.Structure):
    """glibc's `Dl_info`."""

    _fields_ = [
        ("fname", ctypes.c_char_p),
        ("fbase", ctypes.c_void_p),
        ("sname", ctypes.c_char_p),
        ("saddr", ctypes.c_void_p),
    ]


def _file_of(library: ctypes.CDLL, symbol: str) -> str:
    """The real file a loaded library was read from (dladdr of one of its functions)."""
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    address = ctypes.cast(getattr(library, symbol), ctypes.c_void_p)
    if not libc.dladdr(address, ctypes.byref(info)) or not info.fname:
        return library._name
    return os.path.realpath(os.fsdecode(info.fname))


def _load(name: str) -> Libfuse:
    try:
        library = ctypes.CDLL(name)
    except OSError as exc:
        raise BlfsError(f"cannot load libfuse {name}: {exc}") from None
    if not hasattr(library, "fuse_version"):
        raise BlfsError(f"{name} is not libfuse")
    if hasattr(library, "fuse_pkgversion"):  # libfuse 3
        library.fuse_pkgversion.restype = ctypes.c_char_p
        text = library.fuse_pkgversion().decode(errors="replace")
    else:
        number = library.fuse_version()  # libfuse 2: 29 for 2.9
        text = f"{number // 10}.{number % 10}"
    return Libfuse(name, _file_of(library, "fuse_version"), text, parse_version(text))


def _system_name() -> str:
    for soname in _SONAMES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            continue
        return soname
    name = ctypes.util.find_library("fuse3") or ctypes.util.find_library("fuse")
    if name is None:
        raise BlfsError("libfuse is not installed (apt install fuse3)")
    return name


def find() -> Libfuse:
    """The libfuse `select` would choose (loaded, to learn its version and file)."""
    return _load(os.environ.get(ENV) or _system_name())


@functools.cache
def select() -> Libfuse:
    """The process's libfuse, loaded on the first call; mfusepy, imported after it, loads the
    same one. Refuses to go on if mfusepy was imported first with another."""
    chosen = find()
    os.environ[ENV] = chosen.name
    mfusepy = sys.modules.get("mfusepy")
    if mfusepy is not None:
        loaded = _file_of(mfusepy._libfuse, "fuse_version")
        if loaded != chosen.file:
            raise BlfsError(f"mfusepy already loaded {loaded}, not {chosen.file}")
    return chosen
