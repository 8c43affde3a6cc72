"""Datatypes (brainlife's real names and file layouts) and the archive contents of each.

`DATATYPES` is the datatype catalogue; `write_archive` lays out one data-object's files exactly as
brainlife's archiver would (`tar hcf` of the output dir: members at the archive root).
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .nifti import image_shape, write_nifti_gz
from .tarwriter import TarWriter

LEGACY_IMAGE_BYTES = 64 * 1024
# A DWI shell as a tensor fit wants it: b=0 volumes, then directions spread over the sphere.
DWI_B0S = 3
DWI_DIRECTIONS = 32
DWI_VOLUMES = DWI_B0S + DWI_DIRECTIONS
DWI_BVALUE = 1000
BOLD_VOLUMES = 10
BOLD_TR = 2.0  # seconds: the sample's RepetitionTime and the image's time step
TRACTS = ("Left_Arcuate", "Right_Arcuate", "Forceps_Major", "Left_IFOF", "Right_IFOF")


@dataclass(frozen=True)
class Datatype:
    name: str
    files: tuple[dict, ...]
    datatype_tags: tuple[str, ...] = ()
    bids: dict | None = None
    desc: str = ""


def _file(fid: str, filename: str, required: bool = True, desc: str = "") -> dict:
    ext = "." + filename.split(".", 1)[1] if "." in filename else ""
    return {"id": fid, "filename": filename, "ext": ext, "required": required, "desc": desc}


def _dir(fid: str, dirname: str, required: bool = True, desc: str = "") -> dict:
    return {"id": fid, "dirname": dirname, "required": required, "desc": desc}


DATATYPES: tuple[Datatype, ...] = (
    Datatype(
        "neuro/anat/t1w",
        (_file("t1", "t1.nii.gz", desc="T1-weighted image"),),
        ("acpc_aligned",),
        {
            "derivatives": "anat",
            "maps": [
                {"src": "t1.nii.gz", "dest": "T1w.nii.gz"},
                {"src": "_meta_", "dest": "T1w.json"},
            ],
        },
        "T1-weighted anatomical image",
    ),
    Datatype(
        "neuro/anat/t2w",
        (_file("t2", "t2.nii.gz", desc="T2-weighted image"),),
        (),
        {
            "derivatives": "anat",
            "maps": [
                {"src": "t2.nii.gz", "dest": "T2w.nii.gz"},
                {"src": "_meta_", "dest": "T2w.json"},
            ],
        },
        "T2-weighted anatomical image",
    ),
    Datatype(
        "neuro/dwi",
        (
            _file("dwi", "dwi.nii.gz", desc="diffusion-weighted image"),
            _file("bvals", "dwi.bvals"),
            _file("bvecs", "dwi.bvecs"),
        ),
        ("preprocessed",),
        {
            "derivatives": "dwi",
            "maps": [
                {"src": "dwi.nii.gz", "dest": "dwi.nii.gz"},
                {"src": "*.bvals", "dest": "dwi.bval"},
                {"src": "*.bvecs", "dest": "dwi.bvec"},
                {"src": "_meta_", "dest": "dwi.json"},
            ],
        },
        "Diffusion-weighted MRI",
    ),
    Datatype(
        "neuro/func/task",
        (_file("bold", "bold.nii.gz"), _file("events", "events.tsv", required=False)),
        (),
        {
            "derivatives": "func",
            "maps": [
                {"src": "bold.nii.gz", "dest": "bold.nii.gz"},
                {"src": "events.tsv", "dest": "events.tsv"},
                {"src": "_meta_", "dest": "bold.json"},
            ],
        },
        "Task-based functional MRI",
    ),
    Datatype(
        "neuro/tractprofile",
        (_dir("profiles", "profiles", desc="one CSV per tract"),),
        (),
        None,
        "Tract profiles",
    ),
    Datatype(
        "neuro/freesurfer",
        (_dir("output", "output", desc="FreeSurfer subject directory"),),
        (),
        None,
        "FreeSurfer recon-all output",
    ),
    Datatype(
        "neuro/wmc",
        (_file("classification", "classification.mat"), _dir("tracts", "tracts", required=False)),
        (),
        None,
        "White matter classification",
    ),
)


def _csv(rows: int, columns: tuple[str, ...], seed: int) -> bytes:
    lines = [",".join(columns)]
    for row in range(rows):
        values = [
            f"{((row + 1) * (col + 3) * (seed + 7)) % 997 / 1000:.4f}"
            for col in range(len(columns))
        ]
        lines.append(",".join(values))
    return ("\n".join(lines) + "\n").encode()


def gradient_directions(count: int) -> list[tuple[float, float, float]]:
    """`count` distinct unit vectors spread evenly over a hemisphere (a golden-angle spiral),
    as a DWI acquisition scheme spreads its gradient directions."""
    golden = math.pi * (3 - math.sqrt(5))
    directions = []
    for i in range(count):
        z = 1 - (i + 0.5) / count  # (0, 1]: one hemisphere, no antipodal pair
        radius = math.sqrt(1 - z * z)
        directions.append((radius * math.cos(golden * i), radius * math.sin(golden * i), z))
    return directions


def dwi_gradients() -> tuple[bytes, bytes]:
    """dwi.bvals and dwi.bvecs (FSL's layout: one row of b-values, three rows of vectors)."""
    vectors = [(0.0, 0.0, 0.0)] * DWI_B0S + gradient_directions(DWI_DIRECTIONS)
    bvals = " ".join(["0"] * DWI_B0S + [str(DWI_BVALUE)] * DWI_DIRECTIONS) + "\n"
    bvecs = "".join(" ".join(f"{v[axis]:.6f}" for v in vectors) + "\n" for axis in range(3))
    return bvals.encode(), bvecs.encode()


def events_tsv(seed: int) -> bytes:
    """A block design that ends within the run (BOLD_VOLUMES × BOLD_TR seconds)."""
    run = BOLD_VOLUMES * BOLD_TR
    offset = (seed % 3) * 0.5
    rows = [
        f"{onset + offset:.1f}\t2.0\t{'left' if i % 2 else 'right'}\n"
        for i, onset in enumerate(range(0, int(run) - 4, 3))
    ]
    return ("onset\tduration\ttrial_type\n" + "".join(rows)).encode()


def _members(datatype: str, image_bytes: int, label: str, seed: int) -> list[tuple]:
    """(kind, name[, payload]) in archive order: "dir", "file" (bytes) or "image" (shape)."""
    if datatype == "neuro/anat/t1w":
        return [("image", "t1.nii.gz", image_shape(image_bytes))]
    if datatype == "neuro/anat/t2w":
        return [("image", "t2.nii.gz", image_shape(image_bytes))]
    if datatype == "neuro/dwi":
        bvals, bvecs = dwi_gradients()
        return [
            ("file", "dwi.bvals", bvals),
            ("file", "dwi.bvecs", bvecs),
            ("image", "dwi.nii.gz", image_shape(image_bytes, DWI_VOLUMES)),
        ]
    if datatype == "neuro/func/task":
        return [
            ("image", "bold.nii.gz", image_shape(image_bytes, BOLD_VOLUMES)),
            ("file", "events.tsv", events_tsv(seed)),
        ]
    if datatype == "neuro/tractprofile":
        columns = ("fa", "md", "ad", "rd", "x", "y", "z")
        return [("dir", "profiles")] + [
            ("file", f"profiles/{tract}_profiles.csv", _csv(100, columns, seed + n))
            for n, tract in enumerate(TRACTS)
        ]
    if datatype == "neuro/freesurfer":
        stats = "".join(f"# Measure {k}, {k}, {1000 + seed * k}\n" for k in range(60))
        return [
            ("dir", "output"),
            ("dir", "output/label"),
            ("file", "output/label/lh.aparc.annot", bytes(range(256)) * 8),
            ("dir", "output/mri"),
            ("image", "output/mri/aparc+aseg.nii.gz", image_shape(min(image_bytes, 256 * 1024))),
            ("dir", "output/scripts"),
            ("file", "output/scripts/recon-all.log", f"recon-all -s {label}\nfinished\n".encode()),
            ("dir", "output/stats"),
            ("file", "output/stats/aseg.stats", stats.encode()),
            ("dir", "output/surf"),
            ("file", "output/surf/lh.white", bytes(4096)),
            ("file", "output/surf/rh.white", bytes(4096)),
        ]
    if datatype == "neuro/wmc":
        mat = b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(116, b" ") + bytes(12) + b"\x00\x01IM"
        return [("file", "classification.mat", mat + bytes(2048)), ("dir", "tracts")] + [
            (
                "file",
                f"tracts/{n + 1}.json",
                json.dumps({"name": tract, "color": [n, 0.5, 1]}).encode(),
            )
            for n, tract in enumerate(TRACTS)
        ]
    raise ValueError(f"no content for datatype {datatype}")


def _write_tar(
    out, datatype: str, image_bytes: int, label: str, seed: int, mtime: int, without: frozenset
) -> None:
    tar = TarWriter(out, mtime)
    for member in _members(datatype, image_bytes, label, seed):
        if member[1] in without:
            continue
        kind, name = member[0], member[1]
        if kind == "dir":
            tar.directory(name)
        elif kind == "file":
            tar.file(name, member[2])
        else:
            tar.stream(name, lambda f, shape=member[2]: write_nifti_gz(f, shape, label))
    tar.close()


def write_archive(
    path: Path,
    datatype: str,
    image_bytes: int,
    label: str,
    seed: int,
    mtime: int,
    legacy: bool,
    without: frozenset[str] = frozenset(),
) -> None:
    """Writes the object's archive to `path` (.tar, or .tar.gz when legacy).
    `without` names optional members the object lacks (a func run without events.tsv)."""
    if legacy:
        buffer = io.BytesIO()
        small = min(image_bytes, LEGACY_IMAGE_BYTES)
        _write_tar(buffer, datatype, small, label, seed, mtime, without)
        with path.open("wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as gz:
            gz.write(buffer.getvalue())
    else:
        with path.open("wb") as out:
            _write_tar(out, datatype, image_bytes, label, seed, mtime, without)
