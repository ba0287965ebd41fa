"""NIfTI images with JSON sidecars, FSL bval/bvec gradient files and TRK tractograms.

Every writer is atomic (a temporary sibling renamed into place). Conventions
(shared/design.md): b-vectors in memory are unit vectors in the image's voxel (ijk)
frame; on disk they follow FSL (the first component flipped when the affine's 3x3 has a
positive determinant). Streamlines in memory are in voxel coordinates (voxel centres at
integers); TRK files store them with the image's affine, dimensions and voxel sizes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from validation.errors import UserError

__all__ = [
    "NiftiImage",
    "load_gradients",
    "load_nifti",
    "load_trk",
    "save_gradients",
    "save_json",
    "save_nifti",
    "save_trk",
    "sidecar_path",
]


@dataclass(frozen=True)
class NiftiImage:
    """``data`` ndarray, ``affine`` (4, 4) voxel -> world mm, ``voxel_size`` (3,) mm,
    ``sidecar`` dict or None."""

    data: np.ndarray
    affine: np.ndarray
    voxel_size: np.ndarray
    sidecar: dict[str, Any] | None


def _tmp(path: Path) -> Path:
    name = path.name
    return path.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")


def _check_affine(affine: Any, what: str) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise UserError(f"{what}: affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise UserError(f"{what}: affine is singular")
    return a


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an image: ``x.nii.gz`` -> ``x.json``."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".trk", ".bval", ".bvec"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    p = Path(path)
    tmp = _tmp(p)
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, p)
    return p


def save_nifti(
    path: str | os.PathLike,
    data: Any,
    affine: Any,
    sidecar: dict[str, Any] | None = None,
) -> Path:
    """Write a NIfTI-1 image (``.nii`` or ``.nii.gz``) and, if given, its JSON sidecar.

    Parameters
    ----------
    path : path-like
        Output file, ending in ``.nii`` or ``.nii.gz``.
    data : array_like, shape (X, Y, Z) or (X, Y, Z, N)
        Stored with its dtype (bool is stored as uint8); never rescaled.
    affine : (4, 4) array_like
        Voxel -> world (RAS+ mm); written as both qform and sform.
    sidecar : dict, optional
        Written as JSON beside the image (``x.nii.gz`` -> ``x.json``).
    """
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise UserError(f"{p}: a NIfTI path must end in .nii or .nii.gz")
    a = _check_affine(affine, str(p))
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim < 3:
        raise UserError(f"{p}: data must have at least 3 dimensions, got shape {arr.shape}")
    img = nib.Nifti1Image(arr, a)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.set_qform(a, code=1)
    img.set_sform(a, code=1)
    tmp = _tmp(p)
    nib.save(img, str(tmp))
    os.replace(tmp, p)
    if sidecar is not None:
        save_json(sidecar_path(p), sidecar)
    return p


def load_nifti(path: str | os.PathLike, *, dtype: Any = None) -> NiftiImage:
    """Read a NIfTI image and its JSON sidecar (None when absent)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        img: Any = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for bad files
        raise UserError(f"{p}: not a readable NIfTI image ({exc})") from None
    data = np.asanyarray(img.dataobj)
    if dtype is not None:
        data = data.astype(dtype)
    side = sidecar_path(p)
    sidecar = json.loads(side.read_text()) if side.exists() else None
    affine = np.asarray(img.affine, dtype=np.float64)
    return NiftiImage(data, affine, np.asarray(img.header.get_zooms()[:3], float), sidecar)


def _fsl_flip(affine: np.ndarray) -> bool:
    return bool(np.linalg.det(affine[:3, :3]) > 0)


def save_gradients(
    prefix: str | os.PathLike, bvals: Any, bvecs: Any, affine: Any
) -> tuple[Path, Path]:
    """Write ``prefix.bval`` and ``prefix.bvec`` (FSL convention).

    Parameters
    ----------
    prefix : path-like
        Path without extension (``dwi`` -> ``dwi.bval``, ``dwi.bvec``); a trailing
        ``.nii``/``.nii.gz`` is removed.
    bvals : (N,) s/mm^2
    bvecs : (N, 3)
        Unit vectors in the image's voxel (ijk) frame (zero rows allowed for b0).
    affine : (4, 4)
        The image affine; the first component is flipped on disk when its 3x3 has a
        positive determinant (FSL).
    """
    p = Path(prefix)
    for ext in (".nii.gz", ".nii"):
        if p.name.endswith(ext):
            p = p.with_name(p.name[: -len(ext)])
    a = _check_affine(affine, str(p))
    bv = np.asarray(bvals, dtype=np.float64).reshape(-1)
    vec = np.asarray(bvecs, dtype=np.float64)
    if vec.shape != (bv.size, 3):
        raise UserError(f"{p}: bvecs must have shape ({bv.size}, 3), got {vec.shape}")
    vec = vec.copy()
    if _fsl_flip(a):
        vec[:, 0] = -vec[:, 0]
    vec[vec == 0] = 0.0  # no "-0" on disk
    bval_path = p.with_name(p.name + ".bval")
    bvec_path = p.with_name(p.name + ".bvec")
    for target, text in (
        (bval_path, " ".join(f"{b:.6g}" for b in bv) + "\n"),
        (bvec_path, "\n".join(" ".join(f"{x:.8f}" for x in row) for row in vec.T) + "\n"),
    ):
        tmp = _tmp(target)
        tmp.write_text(text)
        os.replace(tmp, target)
    return bval_path, bvec_path


def load_gradients(
    bval_path: str | os.PathLike, bvec_path: str | os.PathLike, affine: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL bval/bvec files into bvals (N,) and bvecs (N, 3) in the voxel (ijk) frame.

    b-vectors at b <= 50 are returned as zero rows; others must be unit length within 1e-2.
    """
    a = _check_affine(affine, str(bvec_path))
    try:
        bvals = np.loadtxt(bval_path, dtype=np.float64, ndmin=1).reshape(-1)
        bvecs = np.loadtxt(bvec_path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise UserError(f"{bval_path}/{bvec_path}: unreadable gradient files ({exc})") from None
    if bvecs.shape == (3, bvals.size):  # FSL: one row per component
        bvecs = bvecs.T
    elif bvecs.shape != (bvals.size, 3):
        raise UserError(f"{bvec_path}: expected 3 x {bvals.size} values, got {bvecs.shape}")
    bvecs = bvecs.copy()
    b0 = bvals <= 50
    bvecs[b0] = 0.0
    norms = np.linalg.norm(bvecs[~b0], axis=1)
    if norms.size and np.any(np.abs(norms - 1.0) > 1e-2):
        raise UserError(f"{bvec_path}: b-vectors at b > 50 must be unit length within 1e-2")
    if _fsl_flip(a):
        bvecs[:, 0] = -bvecs[:, 0]
    bvecs[bvecs == 0] = 0.0
    return bvals, bvecs


def save_trk(
    path: str | os.PathLike,
    streamlines_vox: Sequence[np.ndarray],
    affine: Any,
    shape: Sequence[int],
) -> Path:
    """Write streamlines given in voxel coordinates (voxel centres at integers) as TRK.

    The header carries ``affine`` (voxel -> RAS+ mm), the grid ``shape`` and voxel sizes.
    """
    p = Path(path)
    a = _check_affine(affine, str(p))
    shape3 = tuple(int(s) for s in shape)[:3]
    if len(shape3) != 3 or min(shape3) < 1:
        raise UserError(f"{p}: shape must have 3 positive sizes, got {tuple(shape)}")
    lines = []
    for s in streamlines_vox:
        arr = np.asarray(s, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise UserError(f"{p}: each streamline must have shape (n, 3), got {arr.shape}")
        lines.append(arr)
    tractogram = nib.streamlines.Tractogram(lines, affine_to_rasmm=a)
    header = {
        nib.streamlines.Field.VOXEL_TO_RASMM: a,
        nib.streamlines.Field.DIMENSIONS: np.array(shape3, dtype=np.int16),
        nib.streamlines.Field.VOXEL_SIZES: np.sqrt((a[:3, :3] ** 2).sum(axis=0)).astype(
            np.float32
        ),
        nib.streamlines.Field.VOXEL_ORDER: "".join(nib.aff2axcodes(a)),
    }
    tmp = _tmp(p)
    nib.streamlines.save(tractogram, str(tmp), header=header)
    os.replace(tmp, p)
    return p


def load_trk(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray, tuple[int, ...]]:
    """Read a TRK file: streamlines in voxel coordinates, affine (4, 4), grid shape."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        trk = nib.streamlines.load(str(p))
    except Exception as exc:
        raise UserError(f"{p}: not a readable TRK file ({exc})") from None
    hdr = trk.header
    affine = np.asarray(hdr[nib.streamlines.Field.VOXEL_TO_RASMM], dtype=np.float64)
    shape = tuple(int(s) for s in hdr[nib.streamlines.Field.DIMENSIONS])
    inv = np.linalg.inv(affine)
    lines = [np.asarray(s, float) @ inv[:3, :3].T + inv[:3, 3] for s in trk.streamlines]
    return lines, affine, shape
