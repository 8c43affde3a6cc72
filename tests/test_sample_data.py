"""The demo's sample data is data a neuroscientist would trust: every image has a real
orientation, every DWI a gradient scheme a tensor fit can use, every run's events end within it,
and MRtrix reads them without a warning about the image itself."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

MIN_DIRECTIONS = 30


def objects(data: Path) -> dict[str, dict[str, bytes]]:
    """Every stored object's regular files, by object id."""
    found = {}
    for path in sorted((data / "archives").iterdir()):
        with tarfile.open(path) as archive:
            found[path.name.split(".")[0]] = {
                m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()
            }
    return found


def image(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def test_every_sample_image_has_a_real_orientation(emulator_data):
    images = [
        (object_id, name, image(data))
        for object_id, files in objects(emulator_data).items()
        for name, data in files.items()
        if name.endswith(".nii.gz")
    ]
    assert len(images) > 50
    for object_id, name, nifti in images:
        header = nifti.header
        assert header["qform_code"] > 0 and header["sform_code"] > 0, (object_id, name)
        qform, sform = header.get_qform(), header.get_sform()
        assert np.allclose(qform, sform) and np.all(np.isfinite(sform))
        assert abs(np.linalg.det(sform[:3, :3])) > 0.1, (object_id, name)
        assert nib.aff2axcodes(sform) == ("R", "A", "S")


def test_every_sample_dwi_has_enough_distinct_directions_and_b0s(emulator_data):
    dwis = [files for files in objects(emulator_data).values() if "dwi.bvecs" in files]
    assert dwis
    for files in dwis:
        bvals = np.array(files["dwi.bvals"].split(), dtype=float)
        bvecs = np.loadtxt(io.BytesIO(files["dwi.bvecs"]))
        volumes = image(files["dwi.nii.gz"]).shape[3]
        assert bvecs.shape == (3, volumes) and bvals.shape == (volumes,)
        weighted = bvecs[:, bvals > 0].T
        assert np.allclose(np.linalg.norm(weighted, axis=1), 1, atol=1e-4)
        # Distinct up to sign: a direction and its opposite measure the same thing.
        signed = np.where(weighted[:, 2:3] < 0, -weighted, weighted)
        assert len(np.unique(np.round(signed, 3), axis=0)) >= MIN_DIRECTIONS
        assert (bvals == 0).sum() >= 1


def test_every_sample_runs_events_end_within_the_run(emulator_data):
    runs = [files for files in objects(emulator_data).values() if "events.tsv" in files]
    assert runs
    for files in runs:
        bold = image(files["bold.nii.gz"])
        length = bold.shape[3] * bold.header.get_zooms()[3]
        rows = [line.split("\t") for line in files["events.tsv"].decode().splitlines()[1:]]
        assert rows and all(float(onset) + float(duration) <= length for onset, duration, _ in rows)


def mrinfo() -> str:
    """mrinfo's path: a test that needs it fails under CI rather than skipping (apt: mrtrix3)."""
    found = shutil.which("mrinfo")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mrinfo is required under CI: apt-get install mrtrix3")
        pytest.skip("no mrinfo (apt-get install mrtrix3)")
    return found


def test_mrtrix_reads_each_kind_of_sample_image_without_a_warning(emulator_data, tmp_path):
    program = mrinfo()
    kinds: dict[str, dict[str, bytes]] = {}
    for files in objects(emulator_data).values():
        for name in files:
            if name.endswith(".nii.gz"):
                kinds.setdefault(name, files)
    assert {"t1.nii.gz", "dwi.nii.gz", "bold.nii.gz"} <= set(kinds)
    for name, files in kinds.items():
        where = tmp_path / name.replace("/", "_").removesuffix(".nii.gz")
        where.mkdir()
        for member, data in files.items():
            (where / member.replace("/", "_")).write_bytes(data)
        command = [program, str(where / name.replace("/", "_"))]
        if name == "dwi.nii.gz":
            command[1:1] = ["-fslgrad", str(where / "dwi.bvecs"), str(where / "dwi.bvals")]
            command += ["-shell_sizes"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "WARNING" not in result.stderr, (name, result.stderr)
