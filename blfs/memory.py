"""The mount's memory as the C allocator holds it: what Python frees is handed back.

Python's own objects of a walk of 40,000 objects were some 44 MB live while the mount held
twice that: glibc gives each thread that allocates its own arena (up to eight per core), and a
mount has dozens of threads (the kernel's requests, answers asked ahead, downloads), each arena
keeping what was freed in it. With two arenas and the free memory trimmed after a large answer
is built, the mount holds about what it uses. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("blfs")

_M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _glibc()


def cap_arenas() -> None:
    """Limits the allocator to ARENAS arenas: call before the mount starts its threads."""
    if _LIBC is not None and not _LIBC.mallopt(_M_ARENA_MAX, ARENAS):
        log.debug("the C allocator kept its own number of arenas")


def give_back() -> None:
    """Returns the allocator's free memory to the system (after a large answer was built and
    what it replaced was freed)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
