"""Which libfuse a mount uses and what it gets of it, version by version (README's libfuse table):
the version string read whatever its suffix, one library per process, and the features line the
log and `blfs status` show. `.ci/libfuse-matrix` runs these against every vendored libfuse."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_fetch import wait_until

import blfs
from blfs import libfuse
from blfs.errors import BlfsError
from blfs.fuse_kernel import kernel_release, may_open_backing_files


@pytest.mark.parametrize(
    "text, version",
    [
        ("3.14.0", (3, 14, 0)),
        ("3.17.1-rc1", (3, 17, 1)),
        ("3.18.2+git20251020", (3, 18, 2)),
        ("3.10.5-4ubuntu1", (3, 10, 5)),
        ("3.10", (3, 10, 0)),
    ],
)
def test_release_pre_release_and_distribution_versions_parse(text, version):
    assert libfuse.parse_version(text) == version


def test_a_version_that_is_no_version_is_refused_in_one_line():
    with pytest.raises(BlfsError, match="cannot read the libfuse version 'fuse'"):
        libfuse.parse_version("fuse")


def test_a_library_path_that_is_not_libfuse_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(libfuse.ENV, str(tmp_path / "libfuse3.so.9"))
    with pytest.raises(BlfsError, match="cannot load libfuse .*libfuse3.so.9"):
        libfuse.find()


def expected_features(library: libfuse.Libfuse) -> str:
    """What a mount should get of `library` on this machine, as README's table says."""
    unable = f"off (libfuse {library.version_text} cannot ask for it)"
    asks = library.version >= (3, 13, 0)
    if not asks:
        passthrough = unable
    elif kernel_release() < (6, 9):
        passthrough = "off (kernel < 6.9)"
    elif not may_open_backing_files():
        passthrough = "off (needs CAP_SYS_ADMIN: run the mount as root)"
    else:
        passthrough = "on"
    return (
        f"libfuse {library.version_text} ({library.file}): "
        f"parallel lookups {'on' if asks else unable}, passthrough {passthrough}, "
        "kernel-kept listings on"
    )


def features_line(mount) -> str:
    wait_until(lambda: "libfuse " in mount.log(), what="the features line")
    (line,) = re.findall(r"INFO blfs: (libfuse .*)", mount.log())
    return line


def test_the_log_and_status_say_which_libfuse_and_what_the_mount_got(mount):
    library = libfuse.find()
    expected = os.environ.get("BLFS_EXPECT_LIBFUSE")  # set by .ci/libfuse-matrix
    if expected:
        assert library.version_text == expected
    line = features_line(mount)
    assert line == expected_features(library)
    said = mount.log().count(f"WARNING blfs: libfuse {library.version_text} cannot ask")
    assert said == (1 if library.version < (3, 13, 0) else 0)
    shown = mount.blfs("status")
    assert f"  {line}\n" in shown.stdout


def mapped_libfuse(mount) -> set[str]:
    features_line(mount)  # serving: every library it loads is loaded
    with open(f"/proc/{mount.process.pid}/maps") as maps:
        return {line.split()[-1] for line in maps if "libfuse" in line}


def test_a_mount_maps_exactly_the_libfuse_its_variable_names(mount_factory, monkeypatch):
    library = libfuse.find()
    monkeypatch.setenv(libfuse.ENV, library.file)
    assert mapped_libfuse(mount_factory()) == {library.file}


def test_without_the_variable_a_mount_maps_exactly_the_systems_libfuse(mount_factory, monkeypatch):
    monkeypatch.delenv(libfuse.ENV, raising=False)
    # Asked in a new process: this one may hold a libfuse3.so.4 that a soname would find.
    find = "from blfs import libfuse; print(libfuse.find().file)"
    system = subprocess.run(
        [sys.executable, "-c", find], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert mapped_libfuse(mount_factory()) == {system}


def test_the_binding_imports_no_layer_above_it():
    """binding ← adapter ← namespace: the binding drives any object with the operations."""
    allowed = {"blfs.errors", "blfs.libfuse", "blfs.passthrough"}
    for module in ("fuse_kernel", "passthrough", "libfuse"):
        tree = ast.parse((Path(blfs.__file__).parent / f"{module}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "blfs":  # from blfs import x
                imported |= {f"blfs.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        ours = {name for name in imported if name.split(".")[0] == "blfs"}
        assert ours - allowed == set(), module
