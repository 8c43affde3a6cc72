"""Members of objects stored on S3 through a real mount: their sizes come from the object's file
listing, so `stat` downloads nothing; a name the listing lacks is ENOENT; and an archive that
disagrees with a size once shown is never served with another size (DESIGN §9)."""

from __future__ import annotations

import errno
import os
import time

import pytest
from test_bids_mount import FILES, downloads, listings
from test_fetch import tar_bytes
from test_mount import archive_members


def s3_object(emulator, datatype: str) -> dict:
    """A stored BIDS Study object of `datatype` (the study is stored the `s3fs` way)."""
    datatype_id = next(d["_id"] for d in emulator.db("datatypes") if d["name"] == datatype)
    return next(
        d
        for d in emulator.db("datasets")
        if d["storage"] == "s3fs" and d["status"] == "stored" and d["datatype"] == datatype_id
    )


def test_stat_of_every_member_downloads_nothing_and_reads_match(mount, emulator):
    obj = s3_object(emulator, "neuro/dwi")
    root = mount.path / "objects" / obj["_id"]
    members = archive_members(emulator, obj["_id"])
    assert len(members) == 3
    for name, data in members.items():
        assert (root / name).stat().st_size == len(data)
    with pytest.raises(FileNotFoundError):
        (root / "dwi.json").stat()
    assert downloads(emulator) == []
    assert [r["path"] for r in listings(emulator)] == [f"{FILES}{obj['project']}/{obj['_id']}"]
    for name, data in members.items():
        assert (root / name).read_bytes() == data
        assert (root / name).stat().st_size == len(data)
    assert downloads(emulator) == [obj["_id"]]


def test_a_folder_and_its_files_are_known_from_the_listing(mount, emulator):
    obj = s3_object(emulator, "neuro/tractprofile")
    root = mount.path / "objects" / obj["_id"]
    members = archive_members(emulator, obj["_id"])
    assert (root / "profiles").is_dir()
    for name, data in members.items():
        assert name.startswith("profiles/") and os.stat(root / name).st_size == len(data)
    with pytest.raises(FileNotFoundError):
        (root / "profiles" / "absent.csv").stat()
    assert downloads(emulator) == []


def test_an_archive_that_disagrees_with_the_listing_is_never_served(
    mount, emulator, replace_archive
):
    """The listed size was shown by stat: the member's reads fail rather than serve another
    size, stat keeps the shown one, and the mount's log says why."""
    obj = s3_object(emulator, "neuro/anat/t2w")
    image = mount.path / "objects" / obj["_id"] / "t2.nii.gz"
    shown = image.stat().st_size
    replace_archive(obj["_id"], tar_bytes({"t2.nii.gz": b"\x1f\x8b" + bytes(shown + 100)}))
    with pytest.raises(OSError) as caught:
        image.read_bytes()
    assert caught.value.errno == errno.EIO
    assert image.stat().st_size == shown
    assert downloads(emulator) == [obj["_id"]]
    assert f"{shown + 102} bytes in the archive but {shown}" in mount.log()


def test_a_listing_alone_never_hides_what_the_local_archive_holds(mount, emulator, replace_archive):
    """An accepted listing that lacks a file (here an empty one the archive gained after the
    listing was taken: the sizes still add up) does not make it ENOENT once the archive is
    local: the archive answers for what the listing does not name."""
    obj = s3_object(emulator, "neuro/anat/t2w")
    root = mount.path / "objects" / obj["_id"]
    members = archive_members(emulator, obj["_id"])
    name, data = next(iter(members.items()))
    assert (root / name).stat().st_size == len(data)  # the listing is taken
    replace_archive(obj["_id"], tar_bytes({**members, "notes.txt": b""}))
    assert (root / name).read_bytes() == data  # the archive is fetched
    deadline = time.monotonic() + 30
    while obj["_id"] not in mount.blfs("cache", "ls", "--cache-dir", str(mount.cache_dir)).stdout:
        assert time.monotonic() < deadline, "the archive was never committed"
        time.sleep(0.05)
    assert (root / "notes.txt").stat().st_size == 0
    assert (root / "notes.txt").read_bytes() == b""
    assert [r["path"] for r in listings(emulator)] == [f"{FILES}{obj['project']}/{obj['_id']}"]
