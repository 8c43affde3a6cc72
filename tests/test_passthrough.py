"""Complete cache files read by the kernel itself (FUSE passthrough): through real mounts, the
same bytes and mappings, and never an open refused for mixing it with reads through the mount;
and reads through the mount where the kernel does not grant it, or the libfuse in use cannot ask
for it (3.10 to 3.12: README's libfuse table)."""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

from mount_fixtures import Mount, unavailable
from test_fetch import wait_until
from test_mount import an_object, archive_members

from blfs import libfuse
from blfs.fuse_kernel import kernel_release
from blfs.passthrough import Passthrough, session_backing

GRANTED = "cached files are read by the kernel itself (passthrough)"
NOT_GRANTED = "cached files are read through this process (no passthrough"


def needs_root() -> None:
    """The kernel grants backing files to a process with CAP_SYS_ADMIN only, from Linux 6.9."""
    missing = None
    if os.geteuid() != 0:
        missing = "the kernel grants passthrough to root only"
    elif kernel_release() < (6, 9):
        missing = "the kernel has no passthrough before Linux 6.9"
    if missing:
        unavailable(missing)


def assert_read_as_this_libfuse_can(mount: Mount) -> None:
    """Passthrough granted from libfuse 3.13 on; before, files read through the mount and the
    features line saying why."""
    library = libfuse.find()
    if library.version >= (3, 13, 0):
        assert GRANTED in mount.log()
    else:
        assert GRANTED not in mount.log()
        assert f"passthrough off (libfuse {library.version_text} cannot ask" in mount.log()


def cached_image(mount, emulator) -> tuple[Path, bytes]:
    """An object's image read once through `mount` (so it is downloaded and committed)."""
    obj = an_object(emulator)
    image = mount.path / "objects" / obj["_id"] / "t1.nii.gz"
    expected = archive_members(emulator, obj["_id"])["t1.nii.gz"]
    assert image.read_bytes() == expected
    wait_until((mount.cache_dir / "objects" / obj["_id"] / "index.json").exists, what="commit")
    return image, expected


def cached_on_a_new_mount(mount_factory, emulator) -> tuple[Mount, Path, bytes]:
    """A second mount on the cache of a first that read an object's image, with that image."""
    needs_root()
    first = mount_factory()
    image, expected = cached_image(first, emulator)
    second = mount_factory(cache_dir=first.cache_dir)
    return second, second.path / image.relative_to(first.path), expected


def test_a_cached_file_is_read_by_the_kernel_itself_with_the_same_bytes(mount_factory, emulator):
    mount, image, expected = cached_on_a_new_mount(mount_factory, emulator)
    assert image.read_bytes() == expected
    with open(image, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == expected
    assert_read_as_this_libfuse_can(mount)


def test_handles_open_together_on_a_cached_file_read_the_same_bytes(mount_factory, emulator):
    mount, image, expected = cached_on_a_new_mount(mount_factory, emulator)
    with open(image, "rb") as one, open(image, "rb") as other:
        assert one.read() == expected
        assert other.read() == expected
    with open(image, "rb") as last:  # after both were released
        assert last.read() == expected
    assert_read_as_this_libfuse_can(mount)


def test_a_file_open_while_it_downloads_is_opened_again_once_complete(mount_factory, emulator):
    needs_root()
    obj = an_object(emulator, "neuro/dwi")
    expected = archive_members(emulator, obj["_id"])["dwi.nii.gz"]
    mount = mount_factory()
    image = mount.path / "objects" / obj["_id"] / "dwi.nii.gz"
    emulator.set(bandwidth=len(expected) // 2)
    try:
        with open(image, "rb") as early:  # opened before its bytes are all there
            assert early.read(1) == expected[:1]
            os.listdir(image.parent)  # answered once the archive's end is verified
            assert image.read_bytes() == expected  # opened complete, the early one still open
            assert early.read() == expected[1:]
    finally:
        emulator.set(bandwidth=None)
    assert image.read_bytes() == expected  # alone now: read by the kernel itself
    assert_read_as_this_libfuse_can(mount)


def test_nopassthrough_has_cached_files_read_through_the_mount(mount_factory, emulator):
    first = mount_factory(extra=("-o", "nopassthrough"))
    image, expected = cached_image(first, emulator)
    assert image.read_bytes() == expected
    assert GRANTED not in first.log()
    assert "passthrough off (-o nopassthrough)" in first.log()


def test_a_refused_backing_file_turns_passthrough_off_for_the_mount(tmp_path, caplog):
    passthrough = Passthrough()
    cached = tmp_path / "cached"
    cached.write_bytes(b"bytes")
    with open(os.devnull, "rb") as not_fuse, open(cached, "rb") as file:
        passthrough.start(*session_backing(not_fuse.fileno()))  # refused, as without the right
        with caplog.at_level(logging.INFO, logger="blfs"):
            assert passthrough.open(0, 2, 1, file.fileno()) is None
            assert passthrough.open(0, 2, 2, file.fileno()) is None
            assert passthrough.open(0, 3, 3, None) is None
    for handle in (1, 2, 3):
        passthrough.release(handle)
    assert caplog.text.count(NOT_GRANTED) == 1
