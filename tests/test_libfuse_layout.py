"""The libfuse binding against the headers and libraries it binds: every struct it declares has,
field by field, the offsets (and flag bits) of the C struct of each libfuse version built here, its
size where the binding allocates it, and every call it makes is in each library from the version
it says. A tiny C probe compiled with each version's headers gives the C side.

The versions: the system's libfuse 3 headers, and each install prefix in `BLFS_LIBFUSE_PREFIXES`
(colon-separated; `.ci/libfuse-matrix` sets it to the vendored versions it builds)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mount_fixtures import unavailable

from blfs import fuse_kernel, libfuse

STRUCTS = [
    value
    for value in vars(fuse_kernel).values()
    if isinstance(value, type) and issubclass(value, ctypes.Structure) and "_c_name_" in vars(value)
]


@dataclass(frozen=True)
class Headers:
    version: tuple[int, int, int]
    cflags: list[str]
    library: Path


def _pkg_config(*args: str, libdir: str | None = None) -> str:
    env = dict(os.environ)
    if libdir:
        env["PKG_CONFIG_LIBDIR"] = libdir
    done = subprocess.run(["pkg-config", *args, "fuse3"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _headers(prefix: str | None) -> Headers:
    libdir = f"{prefix}/lib/pkgconfig" if prefix else None
    version = libfuse.parse_version(_pkg_config("--modversion", libdir=libdir))
    cflags = _pkg_config("--cflags", libdir=libdir).split()
    lib_dir = Path(_pkg_config("--variable=libdir", libdir=libdir))
    (library,) = {p.resolve() for p in lib_dir.glob("libfuse3.so.*")}
    return Headers(version, cflags, library)


def header_sets() -> list[str | None]:
    prefixes = os.environ.get("BLFS_LIBFUSE_PREFIXES", "")
    return [None, *filter(None, prefixes.split(":"))]


def needs_a_compiler() -> None:
    missing = [tool for tool in ("cc", "pkg-config", "nm") if shutil.which(tool) is None]
    if missing:
        unavailable(f"the layout checks need {missing}")


def _checked(struct: type, version: tuple[int, int, int]) -> bool:
    first, last = getattr(struct, "_used_", ((3, 0, 0), (99, 0, 0)))
    return first <= version <= last


def _fields(struct: type, version: tuple[int, int, int]) -> list[tuple]:
    since = getattr(struct, "_since_", {})
    return [
        field
        for field in struct._fields_
        if not field[0].startswith("_") and since.get(field[0], (0, 0, 0)) <= version
    ]


def _probe_source(version: tuple[int, int, int]) -> str:
    """C that prints `struct.field offset` (a flag: its bit number) and `struct size`."""
    lines = [
        "#define FUSE_USE_VERSION 31",
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <string.h>",
        "#include <fuse_lowlevel.h>",
        "static int first_bit(const void *p, size_t n) {",
        "  const unsigned char *b = p;",
        "  for (size_t i = 0; i < n * 8; i++) if (b[i / 8] >> (i % 8) & 1) return (int)i;",
        "  return -1;",
        "}",
        "int main(void) {",
    ]
    for struct in STRUCTS:
        if not _checked(struct, version):
            continue
        c = struct._c_name_
        lines.append(f'  printf("{c} %zu\\n", sizeof({c}));')
        for name, *kind in _fields(struct, version):
            if len(kind) == 2:  # a flag bit
                lines.append(
                    f"  {{ {c} s; memset(&s, 0, sizeof s); s.{name} = 1;"
                    f' printf("{c}.{name} %d\\n", first_bit(&s, sizeof s)); }}'
                )
            else:
                lines.append(f'  printf("{c}.{name} %zu\\n", offsetof({c}, {name}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _python_side(version: tuple[int, int, int]) -> dict[str, int]:
    said = {}
    for struct in STRUCTS:
        if not _checked(struct, version):
            continue
        c = struct._c_name_
        if getattr(struct, "_sized_", True):
            said[c] = ctypes.sizeof(struct)
        for name, *kind in _fields(struct, version):
            if len(kind) == 2:
                bits = int.from_bytes(bytes(struct(**{name: 1})), "little")
                said[f"{c}.{name}"] = (bits & -bits).bit_length() - 1
            else:
                said[f"{c}.{name}"] = getattr(struct, name).offset
    return said


@pytest.mark.parametrize("prefix", header_sets(), ids=lambda p: p or "system")
def test_every_declared_struct_matches_the_headers_of_each_version(prefix, tmp_path):
    needs_a_compiler()
    headers = _headers(prefix)
    assert fuse_kernel.CHECKED[0][:2] <= headers.version[:2] <= fuse_kernel.CHECKED[-1][:2]
    source = tmp_path / "probe.c"
    source.write_text(_probe_source(headers.version))
    probe = tmp_path / "probe"
    compiled = subprocess.run(
        ["cc", *headers.cflags, str(source), "-o", str(probe)], capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stderr
    printed = subprocess.run([str(probe)], capture_output=True, text=True, check=True).stdout
    c_side = dict(line.rsplit(" ", 1) for line in printed.splitlines())
    said = _python_side(headers.version)
    assert said, "no struct is checked"
    assert {key: int(c_side[key]) for key in said} == said


@pytest.mark.parametrize("prefix", header_sets(), ids=lambda p: p or "system")
def test_every_call_the_binding_makes_is_in_each_version_from_where_it_says(prefix):
    needs_a_compiler()
    headers = _headers(prefix)
    listed = subprocess.run(
        ["nm", "-D", "--defined-only", str(headers.library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = {line.split()[-1].split("@")[0] for line in listed.splitlines()}
    calls = {name for name, since in fuse_kernel.CALLS_SINCE.items() if since <= headers.version}
    assert calls - exported == set()
    later = {name for name, since in fuse_kernel.CALLS_SINCE.items() if since > headers.version}
    assert later & exported == set()  # what the binding takes as absent there is absent
