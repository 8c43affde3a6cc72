"""A BIDS dataset made of brainlife metadata alone (DESIGN §1.2): which file of which data-object
each BIDS name stands for, and the generated files (descriptions, sidecars, participants, README).

Follows the warehouse's own export (`POST /dataset/downscript`, API §2): a datatype's `bids` spec
names a folder (`anat`, `dwi`, `func`…) and maps archive members (`src`, maybe a glob, or
`_meta_` for the object's meta) to BIDS suffixes (`dest`); objects made by an import task, a
validator or an upload are raw data, objects made by apps are derivatives of their app. Pure: no
I/O, so what a view shows is a function of the records it is given.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blfs.nodes import json_bytes

BIDS_VERSION = "1.10.0"
META_MAP = "_meta_"
# Object meta that becomes filename entities, in the order the BIDS specification gives them.
META_ENTITIES = (("task", "TaskName"), ("acq", "acq"), ("run", "run"))
# brainlife's licence codes (publication `license`) as the SPDX names BIDS asks for.
LICENSES = {"ccby.40": "CC-BY-4.0", "cc0": "CC0-1.0", "pddl": "PDDL-1.0", "odc.by": "ODC-By-1.0"}
_NOT_LABEL = re.compile(r"[^0-9a-zA-Z]")
_PREFIX = 8


@dataclass(frozen=True, slots=True)  # one per data file: a big project has 100,000
class Member:
    """A BIDS file that is a member of an object's archive (`record`: the object's). `required`:
    the datatype requires the file, so the object holds it (brainlife stores no object without
    its required files); any other one is shown only once its object's listing says it is there."""

    record: Mapping[str, Any]
    member: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class Generated:
    """A BIDS file made from metadata (descriptions, participants, README)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Sidecar:
    """An object's JSON sidecar, made from its record when read: a big project has tens of
    thousands, whose text memory need not hold."""

    record: Mapping[str, Any]
    site: str

    @property
    def data(self) -> bytes:
        return json_bytes(sidecar(self.record, self.site))


Entry = Member | Generated | Sidecar


def label(value: object) -> str:
    """A BIDS label: letters and digits only (as the warehouse cleans a TaskName)."""
    return _NOT_LABEL.sub("", "" if value is None else str(value))


def is_import(task: Mapping[str, Any]) -> bool:
    """The warehouse's `isimporttask`: a validator, or a task without inputs."""
    service = str(task.get("service") or "")
    if "brainlife/validator-" in service or "brain-life/validator-" in service:
        return True
    deps, deps_config = task.get("deps"), task.get("deps_config")
    return (not deps and not deps_config) or (deps == [] and deps_config == [])


def app_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The app task that made an object, or None for raw data (uploads and imports)."""
    task = (record.get("prov") or {}).get("task")
    return None if not task or is_import(task) else task


def pipeline_name(task: Mapping[str, Any]) -> str:
    """A derivative folder: the app repository with "/" as "." (the warehouse's name for it)."""
    return str(task.get("service") or "unknown").replace("/", ".")


@dataclass(frozen=True, slots=True)
class Placed:
    """One object's place in the dataset: its folder, entities and maps."""

    record: Mapping[str, Any]
    root: str  # "" for raw data, "derivatives/<pipeline>/" for an app's output
    folder: str
    entities: tuple[tuple[str, str], ...]
    maps: tuple[Mapping[str, Any], ...]

    def stem(self, spread: dict[str, str]) -> str:
        """`sub-…[_ses-…]…` with `spread` labels (acq or desc) that keep objects apart."""
        values = dict(self.entities)
        for key, extra in spread.items():
            values[key] = values.get(key, "") + extra
        order = ("sub", "ses", "task", "acq", "run", "desc")
        return "_".join(f"{k}-{values[k]}" for k in order if values.get(k))

    def directory(self) -> str:
        values = dict(self.entities)
        session = f"ses-{values['ses']}/" if values.get("ses") else ""
        return f"{self.root}sub-{values['sub']}/{session}{self.folder}/"


def place(record: Mapping[str, Any], datatypes: Mapping[str, Mapping[str, Any]]) -> Placed | None:
    """Where an object goes, or None when it has no BIDS spec or no subject."""
    datatype = datatypes.get(str(record.get("datatype"))) or {}
    spec = datatype.get("bids") or {}
    meta = record.get("meta") or {}
    subject = label(meta.get("subject"))
    if not spec.get("maps") or not isinstance(spec.get("derivatives"), str) or not subject:
        return None
    entities = [("sub", subject), ("ses", label(meta.get("session")))]
    for key, field in META_ENTITIES:
        value = label(meta.get(field))
        entities.append((key, str(int(value)) if key == "run" and value.isdigit() else value))
    task = app_of(record)
    root = f"derivatives/{pipeline_name(task)}/" if task else ""
    return Placed(record, root, label(spec["derivatives"]), tuple(entities), tuple(spec["maps"]))


def spread_labels(placed: list[Placed]) -> dict[str, dict[str, str]]:
    """Labels that keep apart objects which would share names: a derivative always has a `desc-`
    (its id's first hex digits), raw objects that clash get their id's first digits added to
    `acq-`; a clash that remains takes the whole id. Depends only on the clashing objects."""
    spread: dict[str, dict[str, str]] = _Spread()  # most objects need none: not kept for them
    for item in placed:
        object_id = str(item.record["_id"])
        if item.root:
            spread[object_id] = {"desc": object_id[:_PREFIX]}
    for width in (_PREFIX, None):
        counts = Counter(_key(item, spread) for item in placed)
        for item in placed:
            if counts[_key(item, spread)] > 1:
                object_id = str(item.record["_id"])
                spread[object_id] = {"desc" if item.root else "acq": object_id[:width]}
    return spread


class _Spread(dict[str, dict[str, str]]):
    """Spread labels by object id, none for an object not in it."""

    def __missing__(self, key: str) -> dict[str, str]:
        return {}


def _key(item: Placed, spread: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    datatype = str(item.record.get("datatype"))
    return item.directory(), item.stem(spread[str(item.record["_id"])]), datatype


def resolve_source(src: str, datatype: Mapping[str, Any]) -> str | None:
    """A map's archive member: itself, or for a glob the datatype's declared file it matches."""
    if not any(c in src for c in "*?["):
        return src
    declared = [f.get("filename") or f.get("dirname") for f in datatype.get("files") or []]
    return next((name for name in declared if name and fnmatch.fnmatch(name, src)), None)


def is_required(member: str, datatype: Mapping[str, Any]) -> bool:
    """Whether the datatype declares `member` as a required file or directory: an object
    cannot be stored without it. Anything else (undeclared, optional) may be absent."""
    for declared in datatype.get("files") or []:
        if member == (declared.get("filename") or declared.get("dirname")):
            return declared.get("required") is True
    return False


def sidecar(record: Mapping[str, Any], site: str) -> dict[str, Any]:
    """The object's BIDS keys (CamelCase meta) and where it comes from on brainlife."""
    meta = record.get("meta") or {}
    keys = {k: v for k, v in meta.items() if k[:1].isupper()}
    url = f"{site}/project/{record.get('project')}/dataset/{record['_id']}"
    return {**keys, "BrainlifeObjectId": record["_id"], "BrainlifeURL": url}


def object_files(
    records: Iterable[Mapping[str, Any]],
    datatypes: Mapping[str, Mapping[str, Any]],
    site: str,
) -> dict[str, Entry]:
    """Every data and sidecar file of the objects, by path inside the dataset."""
    placed = [p for p in (place(r, datatypes) for r in records) if p is not None]
    placed.sort(key=lambda p: str(p.record["_id"]))
    spread = spread_labels(placed)
    files: dict[str, Entry] = {}
    for item in placed:
        record = item.record
        directory = item.directory()
        stem = item.stem(spread[str(record["_id"])])
        datatype = datatypes[str(record["datatype"])]
        for entry in item.maps:
            path = f"{directory}{stem}_{entry['dest']}"
            if entry["src"] == META_MAP:
                files[path] = Sidecar(record, site)
                continue
            member = resolve_source(str(entry["src"]), datatype)
            if member is not None:
                files[path] = Member(record, member, is_required(member, datatype))
    return files


def participants(
    subjects: Iterable[str], table: Mapping[str, Any] | None
) -> tuple[bytes, bytes | None]:
    """participants.tsv (one row per subject of the view) and participants.json (the published
    column descriptions, if any). A published row's columns fill the row; others get n/a."""
    rows = {label(r.get("subject")): r for r in (table or {}).get("subjects") or []}
    columns = [c for c in (table or {}).get("columns") or {} if c not in ("subject",)]
    lines = ["\t".join(["participant_id", *columns])]
    for subject in sorted(set(subjects)):
        row = rows.get(subject, {})
        values = [_cell(row.get(column)) for column in columns]
        lines.append("\t".join([f"sub-{subject}", *values]))
    described = (table or {}).get("columns") or {}
    sidecar_bytes = json_bytes({c: described[c] for c in columns}) if columns else None
    return ("\n".join(lines) + "\n").encode("utf-8"), sidecar_bytes


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    return re.sub(r"[\t\n\r]", " ", str(value))


def description(name: str, url: str, *, release: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's dataset_description.json; a release adds its licence and DOI."""
    value: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "ReferencesAndLinks": [url],
    }
    if release is not None:
        if release.get("license"):
            value["License"] = LICENSES.get(release["license"], release["license"])
        if release.get("doi"):
            value["DatasetDOI"] = f"doi:{release['doi']}"
    return value


def derivative_descriptions(records: Iterable[Mapping[str, Any]]) -> dict[str, Generated]:
    """derivatives/<pipeline>/dataset_description.json for every app with objects in the view."""
    branches: dict[str, set[str]] = defaultdict(set)
    for record in records:
        task = app_of(record)
        if task is not None:
            branches[str(task.get("service") or "unknown")].add(str(task.get("service_branch")))
    files = {}
    for service, versions in sorted(branches.items()):
        generated_by = [
            {"Name": service, "Version": version, "CodeURL": f"https://github.com/{service}"}
            for version in sorted(versions)
        ]
        value = {
            "Name": f"{service} outputs",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": generated_by,
        }
        path = f"derivatives/{pipeline_name({'service': service})}/dataset_description.json"
        files[path] = Generated(json_bytes(value))
    return files


@dataclass(frozen=True)
class Source:
    """What a view is made of: a project's or a release's stored objects and its texts."""

    name: str
    url: str
    readme: str
    records: tuple[Mapping[str, Any], ...]
    participants: Mapping[str, Any] | None
    release: Mapping[str, Any] | None = None
    # The participant table's request went unanswered: participants.tsv is left out rather
    # than shown without the table's columns (and changing once they come).
    participants_left_out: bool = False


@dataclass(frozen=True)
class Dataset:
    """A BIDS dataset: each directory's children ('' is the top; a child that is a directory
    maps to None)."""

    children: dict[str, dict[str, Entry | None]]


def dataset(source: Source, datatypes: Mapping[str, Mapping[str, Any]], site: str) -> Dataset:
    """The BIDS dataset of `source`."""
    children: dict[str, dict[str, Entry | None]] = {"": {}}
    for path, entry in sorted(dataset_files(source, datatypes, site).items()):
        parent, _, name = path.rpartition("/")
        children.setdefault(parent, {})[name] = entry
        while parent:
            above, _, directory = parent.rpartition("/")
            siblings = children.setdefault(above, {})
            if directory in siblings:
                break
            siblings[directory] = None
            parent = above
    return Dataset({d: dict(sorted(c.items())) for d, c in children.items()})


def dataset_files(
    source: Source, datatypes: Mapping[str, Mapping[str, Any]], site: str
) -> dict[str, Entry]:
    """Every file of the BIDS dataset by its path: the objects' files, the top-level files and
    each derivative's description. Participants are the subjects with raw data."""
    files = object_files(source.records, datatypes, site)
    subjects = {path.split("/", 1)[0][4:] for path in files if path.startswith("sub-")}
    table, columns = participants(subjects, source.participants)
    top = {
        "dataset_description.json": Generated(
            json_bytes(description(source.name, source.url, release=source.release))
        ),
        "README": Generated(source.readme.encode("utf-8")),
    }
    if not source.participants_left_out:
        top["participants.tsv"] = Generated(table)
    if columns is not None:
        top["participants.json"] = Generated(columns)
    derived = [r for r in source.records if place(r, datatypes) is not None]
    return {**top, **derivative_descriptions(derived), **files}
