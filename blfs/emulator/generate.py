"""Deterministic sample data: DIR/db/<collection>.json, DIR/archives, DIR/tasks, DIR/keys.

Everything except the key pair is a function of the seed and the size options, so tests can read
DIR/db/*.json to know what the server will answer. The fixed cast (users `demo`/`alice`, the named
projects, publications, processes) exercises every access rule and quirk of the API document.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .content import BOLD_TR, DATATYPES, Datatype, write_archive
from .nifti import image_shape, write_nifti_gz
from .s3files import S3_EMBARGO, S3_STORAGE, recorded_size
from .tokens import generate_keys

COLLECTIONS = (
    "users",
    "projects",
    "datatypes",
    "datasets",
    "products",
    "pubs",
    "instances",
    "tasks",
    "taskproducts",
    "participants",
)
EPOCH = dt.datetime(2023, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
SMALL_IMAGE = 32 * 1024
DEMO, ALICE = "1", "2"
LAB_TAGS = ([], ["pilot"], ["v1.2", "qc-pass"])
LEGACY_GRID_INDEXES = (3, 10)
# BIDS Study objects (by index in BIDS_OBJECTS) stored the `s3fs-embargo` way; the others `s3fs`.
EMBARGOED_BIDS_INDEXES = (2, 6, 9)
# What apps' configs hold and no file of a mount may show (redact.py): a resource's environment,
# XNAT credentials, a password, a URL with credentials, a token in a query.
SAMPLE_SECRET = "blfs-sample-secret-4c1d9e"
SAMPLE_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2FtcGxlLXNpZ25hdHVyZQ"
SECRET_CONFIG = {
    "_envs": {"BRAINLIFE_TOKEN": SAMPLE_JWT, "AWS_SECRET_ACCESS_KEY": SAMPLE_SECRET},
    "xnat": {"hostname": "https://xnat.example.org", "token": "t-" + SAMPLE_SECRET},
    "secretEnc": SAMPLE_SECRET,
    "password": SAMPLE_SECRET,
    "source": f"https://reader:{SAMPLE_SECRET}@data.example.org/study",
    "callback": f"https://example.org/notify?at={SAMPLE_JWT}",
}


@dataclass(frozen=True)
class Options:
    seed: int = 1
    subjects: int = 4
    objects_per_subject: int = 7
    object_size: int = 64 * 1024


@dataclass(frozen=True)
class ProjectSpec:
    key: str
    name: str
    access: str = "private"
    demo_role: str | None = None
    listed: bool = False
    removed: bool = False
    agreements: bool = False
    publish_participants: bool = False


PROJECTS = (
    ProjectSpec("lab", "Lab Private", demo_role="members"),
    ProjectSpec("open", "Open Diffusion", access="public"),
    ProjectSpec("guest", "Guest Study", demo_role="guests"),
    ProjectSpec("agreement", "Agreement Study", demo_role="members", agreements=True),
    ProjectSpec("hidden", "Hidden Lab"),
    ProjectSpec("listed", "Listed Lab", listed=True),
    ProjectSpec("old", "Old Project", demo_role="members", removed=True),
    ProjectSpec("twin1", "Twin Study", access="public"),
    ProjectSpec("twin2", "Twin Study", access="public"),
    ProjectSpec("bids", "BIDS Study", demo_role="members", publish_participants=True),
)

# BIDS keys without which a datatype's objects are not BIDS (every bold run names its task).
REQUIRED_BIDS_META: dict[str, dict] = {
    "neuro/func/task": {"TaskName": "rest", "RepetitionTime": BOLD_TR}
}
# BIDS keys the BIDS Study's objects carry.
BIDS_META: dict[str, dict] = {
    "neuro/anat/t1w": {"EchoTime": 0.0029, "MagneticFieldStrength": 3, "Manufacturer": "Siemens"},
    "neuro/dwi": {"EchoTime": 0.08, "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05},
    "neuro/func/task": {"TaskName": "rest", "RepetitionTime": BOLD_TR, "EchoTime": 0.03},
}


@dataclass(frozen=True)
class Origin:
    """How an object entered brainlife: the task in its `prov` (None: uploaded, no `prov`).
    A task with inputs is an app; one without inputs, or a validator, is an import."""

    service: str
    branch: str = "1.0"
    inputs: bool = False


IMPORT = Origin("brainlife/app-bids-import")
VALIDATOR = Origin("brainlife/validator-neuro-anat-t1w", inputs=True)
ACPC = Origin("brainlife/app-acpc-align", "1.2", inputs=True)
DWI_PREP = Origin("brainlife/app-dwi-preprocess", "2.0", inputs=True)

# The BIDS Study: (subject, session, datatype, meta, origin, members left out, releases).
BIDS_OBJECTS: tuple[tuple[str, str, str, dict, Origin | None, tuple[str, ...], tuple], ...] = (
    ("01", "1", "neuro/anat/t1w", {}, IMPORT, (), ("bids/1",)),
    ("01", "1", "neuro/dwi", {}, IMPORT, (), ("bids/1",)),
    ("01", "1", "neuro/func/task", {"run": "1"}, IMPORT, (), ("bids/1",)),
    ("01", "1", "neuro/func/task", {"run": "2"}, IMPORT, ("events.tsv",), ("bids/1",)),
    ("01", "2", "neuro/anat/t1w", {"acq": "mprage"}, VALIDATOR, (), ()),
    ("01", "2", "neuro/func/task", {"TaskName": "nback", "run": "1"}, IMPORT, (), ()),
    ("02", "1", "neuro/anat/t1w", {}, None, (), ()),
    ("02", "1", "neuro/anat/t2w", {}, None, (), ()),
    ("02", "1", "neuro/dwi", {}, IMPORT, (), ()),
    ("03", "1", "neuro/anat/t1w", {}, IMPORT, (), ()),
    ("03", "1", "neuro/anat/t1w", {}, IMPORT, (), ()),
    ("01", "1", "neuro/anat/t1w", {}, ACPC, (), ("bids/1",)),
    ("02", "1", "neuro/anat/t1w", {}, ACPC, (), ()),
    ("01", "1", "neuro/dwi", {}, DWI_PREP, (), ("bids/1",)),
    ("01", "1", "neuro/tractprofile", {}, DWI_PREP, (), ()),
)

# Participant tables (GET /participant/:project): subject rows and BIDS column descriptions.
BIDS_PARTICIPANTS = (
    {"subject": "01", "age": 24, "sex": "F", "handedness": "R"},
    {"subject": "02", "age": 31, "sex": "M", "handedness": "L"},
    {"subject": "03", "age": 27, "sex": "F", "handedness": "R"},
    {"subject": "04", "age": 45, "sex": "M", "handedness": "R"},
)
PARTICIPANT_COLUMNS = {
    "age": {"LongName": "age", "Description": "age at the first scan", "Units": "year"},
    "sex": {"LongName": "sex", "Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "handedness": {
        "LongName": "handedness",
        "Description": "dominant hand",
        "Levels": {"R": "right", "L": "left"},
    },
}

# (subject, datatype, releases) of the small projects' objects; releases name publication releases.
SMALL_OBJECTS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "open": (
        ("0001", "neuro/anat/t1w", ("open/1", "open/2")),
        ("0001", "neuro/dwi", ("open/1", "open/2")),
        ("0001", "neuro/tractprofile", ()),
        ("0002", "neuro/anat/t1w", ("open/2",)),
        ("0003", "neuro/dwi", ()),
        # Group analysis over a release: products readable by anyone (the project is public).
        ("0002", "neuro/tractprofile", ("open/1", "open/2")),
        ("0003", "neuro/tractprofile", ("open/1", "open/2")),
    ),
    "guest": (
        ("0001", "neuro/anat/t1w", ()),
        ("0001", "neuro/func/task", ()),
        ("0002", "neuro/anat/t1w", ()),
    ),
    "agreement": (("0001", "neuro/anat/t1w", ()), ("0002", "neuro/dwi", ())),
    "hidden": (
        ("0001", "neuro/anat/t1w", ("hidden/1", "hidden/2")),
        ("0002", "neuro/anat/t1w", ("hidden/2",)),
        ("0003", "neuro/dwi", ("hidden/3",)),
        ("0004", "neuro/anat/t1w", ()),
        ("0005", "neuro/tractprofile", ()),
    ),
    "listed": (("0001", "neuro/anat/t1w", ()), ("0002", "neuro/anat/t2w", ())),
    "old": (("0001", "neuro/anat/t1w", ()), ("0002", "neuro/anat/t1w", ())),
    "twin1": (("0001", "neuro/anat/t1w", ()),),
    "twin2": (("0001", "neuro/anat/t1w", ()), ("0002", "neuro/dwi", ())),
}

# (publication key, project key, name, releases as (name, removed)).
PUBLICATIONS = (
    ("hidden", "hidden", "Hidden Lab Data Release", (("1", False), ("2", False), ("3", True))),
    ("open", "open", "Open Diffusion Benchmark", (("1", False), ("2", False), ("3", True))),
    ("bids", "bids", "BIDS Study Data Release", (("1", False),)),
)


def escape_dot(value: object) -> object:
    """Product keys as warehouse stores them: '.' in keys replaced by '-' (recursively)."""
    if isinstance(value, dict):
        return {k.replace(".", "-"): escape_dot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_dot(v) for v in value]
    return value


@dataclass
class Generator:
    root: Path
    options: Options
    db: dict[str, list[dict]] = field(default_factory=lambda: {c: [] for c in COLLECTIONS})
    projects: dict[str, dict] = field(default_factory=dict)
    datatypes: dict[str, dict] = field(default_factory=dict)
    releases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    counter: int = 0

    def oid(self, *parts: object) -> str:
        text = "/".join(str(p) for p in (self.options.seed, *parts))
        return hashlib.sha1(text.encode()).hexdigest()[:24]

    def date(self, minutes: int) -> str:
        moment = EPOCH + dt.timedelta(minutes=minutes)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def tick(self) -> int:
        self.counter += 1
        return self.counter

    def run(self) -> None:
        for sub in ("db", "archives", "tasks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.make_datatypes()
        self.make_projects()
        self.make_lab_objects()
        for key, objects in SMALL_OBJECTS.items():
            for n, (subject, datatype, releases) in enumerate(objects):
                self.make_dataset(
                    f"{key}/{n}",
                    key,
                    datatype,
                    {"subject": subject},
                    image_bytes=SMALL_IMAGE,
                    releases=releases,
                )
        self.make_bids_objects()
        self.make_participants()
        self.make_publications()
        self.make_project_stats()
        self.make_users()
        self.make_processes()
        for name, records in self.db.items():
            with (self.root / "db" / f"{name}.json").open("w") as out:
                json.dump(records, out, indent=1)
        generate_keys(self.root / "keys")

    def make_datatypes(self) -> None:
        for datatype in DATATYPES:
            record = {
                "_id": self.oid("datatype", datatype.name),
                "name": datatype.name,
                "desc": datatype.desc,
                "readme": "",
                "admins": [ALICE],
                "files": [
                    {"_id": self.oid("file", datatype.name, f["id"]), **f} for f in datatype.files
                ],
                "datatype_tags": [{"datatype_tag": t, "desc": ""} for t in datatype.datatype_tags],
                "_datatype_tags": list(datatype.datatype_tags),
                "validator": f"brainlife/validator-{datatype.name.replace('/', '-')}",
                "uis": [],
                "samples": [],
                "groupAnalysis": False,
                "create_date": self.date(0),
            }
            if datatype.bids:
                record["bids"] = datatype.bids
            self.datatypes[datatype.name] = record
            self.db["datatypes"].append(record)

    def make_projects(self) -> None:
        for n, spec in enumerate(PROJECTS):
            roles: dict[str, list[str]] = {"admins": [ALICE], "members": [], "guests": []}
            if spec.demo_role:
                roles[spec.demo_role].append(DEMO)
            project_id = self.oid("project", spec.key)
            record = {
                "_id": project_id,
                "user_id": ALICE,
                **roles,
                "group_id": 100 + n,
                "name": spec.name,
                "desc": f"{spec.name}: sample data for blfs",
                "readme": f"# {spec.name}\n",
                "avatar": "",
                "access": spec.access,
                "listed": spec.listed,
                "agreements": (
                    [{"_id": self.oid("agreement", spec.key), "agreement": "Do not re-identify."}]
                    if spec.agreements
                    else []
                ),
                "publishParticipantsInfo": spec.publish_participants,
                "noPublicResource": False,
                "create_date": self.date(n),
                "update_date": self.date(n + 1),
                "removed": spec.removed,
                "__v": 0,
            }
            self.projects[spec.key] = record
            self.db["projects"].append(record)

    def make_lab_objects(self) -> None:
        opts = self.options
        width = max(4, len(str(opts.subjects)))
        count = len(DATATYPES)
        for s in range(opts.subjects):
            subject = f"{s + 1:0{width}d}"
            tags = LAB_TAGS[s % len(LAB_TAGS)]
            for k in range(opts.objects_per_subject):
                datatype = DATATYPES[k % count]
                meta: dict = {"subject": subject, "age": 20 + s % 40, "sex": "FM"[s % 2]}
                if s % 2:
                    meta["session"] = str(1 + k // count)
                if datatype.name == "neuro/func/task":
                    meta["run"] = "1"
                index = s * opts.objects_per_subject + k
                self.make_dataset(
                    f"lab/{s}/{k}",
                    "lab",
                    datatype.name,
                    meta,
                    tags=tags,
                    legacy=index in LEGACY_GRID_INDEXES,
                    product=datatype.name == "neuro/anat/t1w" and s % 2 == 0,
                    prov=k % 3 != 2,
                )
        first = f"{1:0{width}d}"
        second = f"{2:0{width}d}"
        self.make_dataset(
            "lab/duplicate", "lab", DATATYPES[0].name, {"subject": first}, tags=LAB_TAGS[0]
        )
        self.make_dataset("lab/removed", "lab", "neuro/anat/t2w", {"subject": first}, removed=True)
        self.make_dataset("lab/failed", "lab", "neuro/dwi", {"subject": second}, status="failed")
        self.make_dataset(
            "lab/storing", "lab", "neuro/anat/t1w", {"subject": second}, status="storing"
        )
        self.make_dataset("lab/nosubject", "lab", "neuro/anat/t1w", {"age": 33})

    def make_bids_objects(self) -> None:
        for n, (subject, session, datatype, meta, origin, without, releases) in enumerate(
            BIDS_OBJECTS
        ):
            self.make_dataset(
                f"bids/{n}",
                "bids",
                datatype,
                {"subject": subject, "session": session, **BIDS_META.get(datatype, {}), **meta},
                image_bytes=SMALL_IMAGE,
                releases=releases,
                origin=origin,
                without=frozenset(without),
                storage=S3_EMBARGO if n in EMBARGOED_BIDS_INDEXES else S3_STORAGE,
            )

    def make_participants(self) -> None:
        """A published table for the BIDS Study, an unpublished one for Lab Private."""
        width = max(4, len(str(self.options.subjects)))
        lab = [
            {"subject": f"{s + 1:0{width}d}", "age": 20 + s % 40, "sex": "FM"[s % 2]}
            for s in range(self.options.subjects)
        ]
        columns = {k: PARTICIPANT_COLUMNS[k] for k in ("age", "sex")}
        for key, subjects, described in (
            ("bids", list(BIDS_PARTICIPANTS), PARTICIPANT_COLUMNS),
            ("lab", lab, columns),
        ):
            project_id = self.projects[key]["_id"]
            self.db["participants"].append(
                {
                    "_id": self.oid("participants", key),
                    "project": project_id,
                    "subjects": subjects,
                    "columns": described,
                    "__v": 0,
                }
            )

    def make_dataset(
        self,
        key: str,
        project: str,
        datatype_name: str,
        meta: dict,
        *,
        tags: list[str] | tuple[str, ...] = (),
        image_bytes: int | None = None,
        status: str = "stored",
        removed: bool = False,
        legacy: bool = False,
        releases: tuple[str, ...] = (),
        product: bool = False,
        prov: bool = True,
        origin: Origin | None = Origin("brainlife/app-sample"),
        without: frozenset[str] = frozenset(),
        storage: str = "local",
    ) -> dict:
        datatype: Datatype = next(d for d in DATATYPES if d.name == datatype_name)
        meta = {
            **meta,
            **{k: v for k, v in REQUIRED_BIDS_META.get(datatype_name, {}).items() if k not in meta},
        }
        dataset_id = self.oid("dataset", key)
        minute = 60 + self.tick()
        record: dict = {
            "_id": dataset_id,
            "user_id": ALICE if project != "lab" else DEMO,
            "project": self.projects[project]["_id"],
            "datatype": self.datatypes[datatype_name]["_id"],
            "datatype_tags": list(datatype.datatype_tags),
            "tags": list(tags),
            "meta": meta,
            "desc": f"{datatype_name} of {meta.get('subject', 'unknown subject')}",
            "storage": storage,
            "storage_config": {},
            "status": status,
            "status_msg": {"stored": "Successfully stored", "failed": "archive failed"}.get(
                status, "Storing"
            ),
            "download_count": 0,
            "create_date": self.date(minute),
            "update_date": self.date(minute + 1),
            "removed": removed,
            "publications": [self.oid("release", r) for r in releases],
            "__v": 0,
        }
        if removed:
            record["remove_date"] = self.date(minute + 2)
        if prov and origin is not None:
            task_id = self.oid("provtask", key)
            record["archive_task_id"] = self.oid("archivetask", key)
            record["prov"] = {
                "task": {
                    "_id": task_id,
                    "name": f"process {datatype_name}",
                    "service": origin.service,
                    "service_branch": origin.branch,
                    "config": dict(SECRET_CONFIG),
                    "instance_id": self.oid("provinstance", project),
                    "resource_id": self.oid("resource", "main"),
                    "commit_id": "0123456789abcdef0123456789abcdef01234567",
                    "finish_date": self.date(minute),
                },
                "output_id": datatype.files[0]["id"],
                "subdir": datatype.files[0]["id"],
            }
            if origin.inputs:
                record["prov"]["task"]["deps_config"] = [
                    {"task": self.oid("inputtask", key), "subdirs": ["input"]}
                ]
        if status == "stored":
            suffix = ".tar.gz" if legacy else ".tar"
            path = self.root / "archives" / f"{dataset_id}{suffix}"
            write_archive(
                path,
                datatype_name,
                self.options.object_size if image_bytes is None else image_bytes,
                f"{datatype_name} {meta.get('subject', '')} {dataset_id}",
                self.counter,
                int((EPOCH + dt.timedelta(minutes=minute)).timestamp()),
                legacy,
                without,
            )
            record["size"] = recorded_size(record, path)
            record["backup_date"] = self.date(minute + 3)
        elif status == "failed":
            record["status_msg"] = "archive failed: tar exited with code 2"
        for release in releases:
            self.releases[release].append(dataset_id)
        if product or datatype_name == "neuro/tractprofile":
            self.db["products"].append(
                {
                    "_id": self.oid("product", key),
                    "dataset_id": dataset_id,
                    "product": escape_dot(
                        {
                            "tags": list(tags),
                            "datatype_tags": list(datatype.datatype_tags),
                            "meta": meta,
                            "brainlife": [{"type": "info", "msg": f"{datatype_name} ok"}],
                            "stats.mean_fa": round(0.3 + (self.counter % 10) / 100, 3),
                        }
                    ),
                }
            )
        self.db["datasets"].append(record)
        return record

    def make_publications(self) -> None:
        datasets = {d["_id"]: d for d in self.db["datasets"]}
        names = {d["_id"]: d for d in self.db["datatypes"]}
        for n, (key, project, name, releases) in enumerate(PUBLICATIONS):
            release_records = []
            for r, (release_name, removed) in enumerate(releases):
                members = [datasets[i] for i in self.releases[f"{key}/{release_name}"]]
                sets: dict[tuple, dict] = {}
                for d in members:
                    group = (d["datatype"], tuple(d["datatype_tags"]), tuple(d["tags"]))
                    entry = sets.setdefault(
                        group,
                        {
                            "datatype": {
                                k: names[d["datatype"]][k] for k in ("_id", "name", "desc")
                            }
                            | {"groupAnalysis": False},
                            "datatype_tags": d["datatype_tags"],
                            "tags": d["tags"],
                            "subjects": [],
                            "size": 0,
                            "count": 0,
                        },
                    )
                    entry["subjects"].append(d["meta"]["subject"])
                    entry["size"] += d["size"]
                    entry["count"] += 1
                release_records.append(
                    {
                        "_id": self.oid("release", f"{key}/{release_name}"),
                        "name": release_name,
                        "desc": f"release {release_name}",
                        "create_date": self.date(5000 + 10 * n + r),
                        "removed": removed,
                        "subjects": len({d["meta"]["subject"] for d in members}),
                        "sessions": 1,
                        "sets": list(sets.values()),
                        "apps": [],
                        "gaarchives": [],
                    }
                )
            self.db["pubs"].append(
                {
                    "_id": self.oid("pub", key),
                    "user_id": ALICE,
                    "license": "ccby.40",
                    "doi": f"10.25663/brainlife.pub.{n + 1}",
                    "paper_doi": "",
                    "fundings": [{"funder": "NSF", "id": "1734853"}],
                    "project": self.projects[project]["_id"],
                    "authors": [ALICE],
                    "contributors": [DEMO],
                    "name": name,
                    "desc": f"{name} (sample publication)",
                    "tags": ["sample"],
                    "readme": f"# {name}\n",
                    "releases": release_records,
                    "create_date": self.date(5000 + 10 * n),
                    "removed": False,
                    "relatedPapers": [],
                }
            )

    def make_project_stats(self) -> None:
        for project in self.projects.values():
            shown = [
                d
                for d in self.db["datasets"]
                if d["project"] == project["_id"] and d["status"] == "stored" and not d["removed"]
            ]
            details = []
            for datatype_id in sorted({d["datatype"] for d in shown}):
                of_type = [d for d in shown if d["datatype"] == datatype_id]
                details.append(
                    {
                        "type": datatype_id,
                        "subject_count": len({d["meta"].get("subject") for d in of_type}),
                        "count": len(of_type),
                        "size": sum(d["size"] for d in of_type),
                    }
                )
            project["stats"] = {
                "datasets": {
                    "subject_count": len({d["meta"].get("subject") for d in shown}),
                    "count": len(shown),
                    "size": sum(d["size"] for d in shown),
                    "datatypes_detail": details,
                }
            }

    def make_users(self) -> None:
        agreements = {a["_id"]: True for p in self.projects.values() for a in p["agreements"]}
        self.db["users"] = [
            {
                "_id": self.oid("user", "demo"),
                "sub": 1,
                "username": "demo",
                "password": "demo",
                "email": "demo@example.org",
                "fullname": "Demo User",
                "active": True,
                "scopes": {"brainlife": ["user"]},
                "agreements": {},
            },
            {
                "_id": self.oid("user", "alice"),
                "sub": 2,
                "username": "alice",
                "password": "alice",
                "email": "alice@example.org",
                "fullname": "Alice Admin",
                "active": True,
                "scopes": {
                    "brainlife": ["user", "admin"],
                    "warehouse": ["admin"],
                    "amaretti": ["admin"],
                },
                "agreements": agreements,
            },
        ]

    def make_processes(self) -> None:
        lab, hidden = self.projects["lab"], self.projects["hidden"]
        specs = (
            ("lab", lab, DEMO, "finished", ("finished", "running", "removed", "failed")),
            ("lab-old", lab, DEMO, "removed", ()),
            ("hidden", hidden, ALICE, "finished", ("finished",)),
        )
        for n, (key, project, user, status, task_statuses) in enumerate(specs):
            instance_id = self.oid("instance", key)
            self.db["instances"].append(
                {
                    "_id": instance_id,
                    "name": f"{project['name']} analysis {n + 1}",
                    "desc": f"processes of {project['name']}",
                    "user_id": user,
                    "group_id": project["group_id"],
                    "config": {"brainlife": True, "xnat_token": SAMPLE_SECRET},
                    "status": status,
                    "create_date": self.date(6000 + n),
                    "update_date": self.date(6001 + n),
                }
            )
            t1w = self.datatypes["neuro/anat/t1w"]["_id"]
            by_subject: dict[str, dict] = {}
            for d in self.db["datasets"]:
                subject = d["meta"].get("subject")
                ours = d["project"] == project["_id"] and d["status"] == "stored"
                if ours and d["datatype"] == t1w and subject:
                    by_subject.setdefault(subject, d)
            inputs = [by_subject[subject] for subject in sorted(by_subject)]
            for t, task_status in enumerate(task_statuses):
                source = inputs[t % len(inputs)]
                self.make_task(
                    f"{key}/{t}", instance_id, project, user, task_status, 6000 + 10 * n + t, source
                )

    def make_task(
        self,
        key: str,
        instance_id: str,
        project: dict,
        user: str,
        status: str,
        minute: int,
        source: dict,
    ) -> None:
        """A run of the sample app on the t1w object `source` (its subject is the task's)."""
        task_id = self.oid("task", key)
        meta = {k: source["meta"][k] for k in ("subject", "session") if k in source["meta"]}
        inputs = [
            {
                "id": "t1",
                "task_id": self.oid("stagetask", key),
                "subdir": source["_id"],
                "dataset_id": source["_id"],
                "datatype": source["datatype"],
                "datatype_tags": source["datatype_tags"],
                "tags": source["tags"],
                "meta": source["meta"],
                "keys": ["t1"],
            }
        ]
        outputs = [
            {
                "id": "output",
                "datatype": self.datatypes["neuro/anat/t1w"]["_id"],
                "datatype_tags": [],
                "tags": [],
                "meta": meta,
                "subdir": "output",
                "archive": {"project": project["_id"], "desc": "output"},
                "files": {},
            }
        ]
        record = {
            "_id": task_id,
            "user_id": user,
            "gids": [project["group_id"]],
            "_group_id": project["group_id"],
            "instance_id": instance_id,
            "service": "brainlife/app-sample",
            "service_branch": "1.0",
            "commit_id": "0123456789abcdef0123456789abcdef01234567",
            "name": f"sample app ({status})",
            "desc": "",
            "config": {
                "_app": self.oid("app", "sample"),
                "_tid": 0,
                "_inputs": inputs,
                "_outputs": outputs,
                **SECRET_CONFIG,
            },
            "deps_config": [],
            "status": status,
            "status_msg": {"failed": "exit code 1", "running": "running"}.get(status, ""),
            "resource_id": self.oid("resource", "main"),
            "resource_ids": [self.oid("resource", "main")],
            "create_date": self.date(minute),
            "request_date": self.date(minute),
            "start_date": self.date(minute + 1),
            "update_date": self.date(minute + 2),
            "runtime": 60000,
        }
        if status in ("finished", "removed"):
            record["finish_date"] = self.date(minute + 2)
        if status == "failed":
            record["fail_date"] = self.date(minute + 2)
        if status == "removed":
            record["remove_date"] = self.date(minute + 3)
        self.db["tasks"].append(record)
        product = {"brainlife": [{"type": "info", "msg": "done"}], "count": 3, "notes": "x" * 1500}
        if status == "finished":
            self.db["taskproducts"].append(
                {"_id": self.oid("taskproduct", key), "task_id": task_id, "product": product}
            )
        if status != "removed":
            self.write_task_dir(self.root / "tasks" / instance_id / task_id, status, product)

    def write_task_dir(self, root: Path, status: str, product: dict) -> None:
        """A task work dir: nested dirs, a dotfile, symlinks, compressible files over 1 KiB."""
        files: dict[str, bytes] = {
            "_smon.out": b"".join(b"%d cpu 0.5 mem 1024\n" % i for i in range(80)),
            "config.json": json.dumps({"t1": "../input/t1.nii.gz", "padding": "y" * 1200}).encode(),
            ".hidden": b"dotfiles are listed but not put in folder tarballs\n",
        }
        if status == "finished":
            files |= {
                "product.json": json.dumps(product, indent=2).encode(),
                "output/stats.csv": b"roi,volume\n"
                + b"".join(b"roi%d,%d\n" % (i, i * 37) for i in range(200)),
                "output/notes.txt": b"notes line\n" * 200,
                "output/deep/nested/dir/result.json": json.dumps(
                    {"values": list(range(400))}
                ).encode(),
                "output/.cache/skipped.txt": b"inside a dot directory\n",
            }
        if status == "failed":
            files["error.log"] = (
                b"Traceback (most recent call last):\n  ...\nRuntimeError: boom\n" * 20
            )
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if status == "finished":
            with (root / "output" / "t1.nii.gz").open("wb") as out:
                write_nifti_gz(out, image_shape(16 * 1024), "task output")
            os.symlink("notes.txt", root / "output" / "notes-link.txt")
            os.symlink("output", root / "latest")
        stamp = int(EPOCH.timestamp()) + 86400
        for path in sorted(root.rglob("*"), reverse=True):
            os.utime(path, (stamp, stamp), follow_symlinks=False)


def generate(root: Path, options: Options) -> None:
    """Generates a data dir at `root` (created if missing)."""
    Generator(root, options).run()
