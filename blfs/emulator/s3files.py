"""The S3 "files" API of projects whose objects are stored on S3 (API §2, "S3 files API").

brainlife's archiver copies an `s3fs` object's files one by one to `archive/<project>/<object>/`
(app-archive `handleS3FS`; `s3fs-embargo` ones to `embargoed/<project>/<object>/`), so the
project's S3 keys, seen from its root, are `<object>/<path in the object>`. Here those files are
the regular members of the object's stored archive, so a download holds exactly the listed files
with exactly the listed sizes. A listing is delimited by '/' like S3's: the files right under the
prefix, and its sub-folders by name. `variant` reshapes a page into the other answers a real
server may give (faults.VARIANTS).
"""

from __future__ import annotations

import datetime as dt
import tarfile
from dataclasses import dataclass
from pathlib import Path

S3_STORAGE = "s3fs"
S3_EMBARGO = "s3fs-embargo"
S3_KINDS = (S3_STORAGE, S3_EMBARGO)
MAX_KEYS = 1000


@dataclass(frozen=True)
class File:
    size: int
    mtime: int


def archive_files(archive: Path) -> dict[str, File]:
    """The regular files of a stored archive by path (directories are only key prefixes)."""
    with tarfile.open(archive) as tar:
        return {m.name: File(m.size, m.mtime) for m in tar if m.isfile()}


def recorded_size(record: dict, archive: Path) -> int:
    """A stored object's `size`: its files' total on S3, else its archive's length."""
    if record.get("storage") in S3_KINDS:
        return sum(file.size for file in archive_files(archive).values())
    return archive.stat().st_size


def listing(files: dict[str, File], prefix: str, limit: int, token: str | None) -> dict | None:
    """One page of `files` (keys from the project root) under `prefix`, names relative to it;
    None when nothing is stored under the prefix. `token` is where the previous page ended."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    entries: dict[str, File | None] = {}
    for key, file in files.items():
        if key.startswith(base):
            head, folder, _ = key[len(base) :].partition("/")
            entries[head] = None if folder else file
    if not entries and base:
        return None
    start = int(token) if token else 0
    shown = sorted(entries.items())[start : start + limit]
    truncated = start + limit < len(entries)
    return {
        "objects": [_object(name, file) for name, file in shown if file is not None],
        "folders": [{"Name": name} for name, file in shown if file is None],
        "isTruncated": truncated,
        "nextContinuationToken": str(start + limit) if truncated else None,
        "prefix": base,
    }


def _object(name: str, file: File) -> dict:
    moment = dt.datetime.fromtimestamp(file.mtime, dt.timezone.utc)
    return {
        "Name": name,
        "Size": file.size,
        "LastModified": moment.isoformat().replace("+00:00", "Z"),
    }


def key_root(project_id: str, storage: str | None) -> str:
    """Where the archiver puts a project's objects of this storage kind in the bucket."""
    return f"{'embargoed' if storage == S3_EMBARGO else 'archive'}/{project_id}/"


def variant(page: dict, name: str, root: str) -> dict:
    """A page as another server would give it; `root` is the key of the project's root."""
    base = page["prefix"]
    if name == "empty":
        return {**page, "objects": [], "folders": [], "isTruncated": False}
    if name == "full_keys":
        objects = [{**o, "Name": root + base + o["Name"]} for o in page["objects"]]
        folders = [{"Name": f"{root}{base}{f['Name']}/"} for f in page["folders"]]
        return {**page, "objects": objects, "folders": folders, "prefix": root + base}
    if name == "raw_s3":
        return {
            "Name": "brainlife-archive",
            "Prefix": root + base,
            "Delimiter": "/",
            "Contents": [
                {
                    "Key": root + base + o["Name"],
                    "Size": o["Size"],
                    "LastModified": o["LastModified"],
                }
                for o in page["objects"]
            ],
            "CommonPrefixes": [{"Prefix": f"{root}{base}{f['Name']}/"} for f in page["folders"]],
            "IsTruncated": page["isTruncated"],
            "NextContinuationToken": page["nextContinuationToken"],
        }
    if name == "stuck_token":
        return {**page, "isTruncated": True, "nextContinuationToken": "1"}
    if name == "no_token":
        return {**page, "isTruncated": True, "nextContinuationToken": None}
    raise ValueError(f"no files variant {name!r}")
