"""Valid NIfTI-1 images of any size, gzip-compressed and streamed to a file.

Headers are built once per shape with nibabel; the voxel data is a repeated pseudo-random block,
so a 3 GB image costs disk bandwidth, not memory or CPU. Deflate level 0 keeps the `.nii.gz`
size predictable (about the image size) and the writing fast. Each header has a real
orientation (qform and sform, scanner coordinates, RAS+, the volume centred on the origin), so
MRtrix, Workbench and nilearn take it as it is instead of warning and guessing one.
"""

from __future__ import annotations

import functools
import gzip
from typing import BinaryIO

import nibabel as nib
import numpy as np

VOX_OFFSET = 352
DESCRIP_OFFSET = 148
DESCRIP_LENGTH = 80
BLOCK_BYTES = 1 << 20
MAX_DIM = 32767
SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT


def image_shape(nbytes: int, volumes: int = 1) -> tuple[int, ...]:
    """A roughly cubic int16 shape whose data takes about `nbytes` (NIfTI-1 dims are int16)."""
    voxels = max(1, (nbytes - VOX_OFFSET) // 2 // volumes)
    side = min(MAX_DIM, max(1, round(voxels ** (1 / 3))))
    depth = min(MAX_DIM, max(1, voxels // (side * side)))
    return (side, side, depth) + ((volumes,) if volumes > 1 else ())


@functools.lru_cache(maxsize=64)
def _header(shape: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0,) * 3 + (2.0,) * (len(shape) - 3))
    affine = np.eye(4)
    affine[:3, 3] = [-(n - 1) / 2 for n in shape[:3]]  # 1 mm voxels, centred on the origin
    header.set_qform(affine, code=SCANNER)
    header.set_sform(affine, code=SCANNER)
    header["vox_offset"] = VOX_OFFSET
    header.set_xyzt_units("mm", "sec")
    return header.binaryblock + bytes(VOX_OFFSET - 348)


@functools.lru_cache(maxsize=1)
def _noise() -> bytes:
    rng = np.random.default_rng(20240101)
    return rng.integers(0, 1200, size=BLOCK_BYTES // 2, dtype=np.int16).tobytes()


def write_nifti_gz(out: BinaryIO, shape: tuple[int, ...], description: str) -> None:
    """Writes a `.nii.gz` of `shape` (int16) whose header description is `description`."""
    header = bytearray(_header(shape))
    text = description.encode()[: DESCRIP_LENGTH - 1]
    header[DESCRIP_OFFSET : DESCRIP_OFFSET + DESCRIP_LENGTH] = text.ljust(DESCRIP_LENGTH, b"\0")
    remaining = int(np.prod(shape)) * 2
    noise = _noise()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=0, mtime=0) as gz:
        gz.write(bytes(header))
        while remaining:
            chunk = noise[: min(remaining, len(noise))]
            gz.write(chunk)
            remaining -= len(chunk)
