"""b-value / b-vector files (FSL ``.bval`` / ``.bvec``), read the way MRtrix reads them.

Convention (shared/design.md): a ``.bvec`` file follows FSL's definition, whose voxel
frame is radiological: when the image affine's 3x3 part has a positive determinant
(neurological storage) the first component is negated. MRtrix undoes that flip when it
imports ``-fslgrad``; we do the same and return b-vectors as unit vectors with
components along the image's array axes (i, j, k), the frame dipy models assume. So a
dipy-based and an MRtrix-based model see the same physical directions.

Volumes with ``b <= b0_threshold`` (default 50 s/mm^2) are b0 volumes whatever their
b-vector holds (zero, NaN, a direction): their vector is set to zero. Every other
b-vector must be finite and of unit length within ``unit_tolerance`` (default 1e-2);
it is then normalised exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

__all__ = [
    "Gradients",
    "bvecs_fsl_to_ijk",
    "bvecs_ijk_to_fsl",
    "check_gradients",
    "default_gradient_paths",
    "read_bvals_bvecs",
    "write_bvals_bvecs",
]

#: b-values at or below this (s/mm^2) are b0 volumes.
B0_THRESHOLD = 50.0
#: Allowed deviation of a diffusion-weighted b-vector's length from 1.
UNIT_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Gradients:
    """A checked gradient table.

    Attributes
    ----------
    bvals : ndarray of shape (N,)
        b-values in s/mm^2, float64, finite and >= 0.
    bvecs : ndarray of shape (N, 3)
        Unit b-vectors with components along the image array axes (i, j, k); zero rows
        for b0 volumes.
    b0_threshold : float
        b-values at or below it are b0 volumes (s/mm^2).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    b0_threshold: float = B0_THRESHOLD

    @property
    def b0_mask(self) -> np.ndarray:
        """Boolean (N,): True for b0 volumes."""
        return self.bvals <= self.b0_threshold

    def world_bvecs(self, affine: np.ndarray) -> np.ndarray:
        """b-vectors in world (RAS+) coordinates for an image with ``affine``, (N, 3).

        Uses ``normalise(A[:3, :3] @ (v / s))`` (design.md), correct under shear.
        """
        a = np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing = np.linalg.norm(a, axis=0)
        world = (self.bvecs / spacing) @ a.T
        norms = np.linalg.norm(world, axis=1, keepdims=True)
        return np.divide(world, norms, out=np.zeros_like(world), where=norms > 0)

    def to_dipy(self) -> Any:
        """A ``dipy.core.gradients.GradientTable`` with the same b0 threshold."""
        from dipy.core.gradients import gradient_table

        return gradient_table(self.bvals, bvecs=self.bvecs, b0_threshold=self.b0_threshold)


def _flip_needed(affine: Any, where: str) -> bool:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise UserError(f"{where}: image affine must be a finite 4x4 matrix")
    det = float(np.linalg.det(a[:3, :3]))
    if not np.isfinite(det) or abs(det) < 1e-12:
        raise UserError(f"{where}: image affine is singular (det of its 3x3 part = {det:g})")
    return det > 0


def bvecs_fsl_to_ijk(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL b-vectors (N, 3) to our (i, j, k) frame: negate x when det(affine[:3,:3]) > 0."""
    out = np.array(bvecs, dtype=np.float64, copy=True)
    if _flip_needed(affine, "bvecs_fsl_to_ijk"):
        out[:, 0] = -out[:, 0]
    return out


def bvecs_ijk_to_fsl(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bvecs_fsl_to_ijk` (the flip is its own inverse)."""
    return bvecs_fsl_to_ijk(bvecs, affine)


def _read_table(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        text = path.read_text()
        rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
        values = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"{path}: {what} file holds a value that is not a number ({exc})") from None
    if values.ndim != 2 or values.size == 0:
        raise UserError(f"{path}: {what} file has rows of different lengths or is empty")
    return values


def check_gradients(
    bvals: Any,
    bvecs: Any,
    *,
    n_volumes: int | None = None,
    b0_threshold: float = B0_THRESHOLD,
    unit_tolerance: float = UNIT_TOLERANCE,
    where: str = "gradients",
) -> Gradients:
    """Check a gradient table already in the (i, j, k) frame and return it cleaned.

    Parameters
    ----------
    bvals : array-like of shape (N,)
        b-values in s/mm^2.
    bvecs : array-like of shape (N, 3)
        b-vectors, array-axis frame.
    n_volumes : int, optional
        Number of volumes of the DWI; must equal N.
    b0_threshold, unit_tolerance : float
        See the module docstring.
    where : str
        Names the input in error messages (e.g. the bvec file).

    Returns
    -------
    Gradients
        b0 rows zeroed, the others normalised to unit length.

    Raises
    ------
    UserError
        Count mismatch, NaN/Inf or negative b-values, a zero, NaN or non-unit b-vector at
        b > ``b0_threshold``.
    """
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise UserError(f"{where}: b-vectors of shape {bvecs.shape} are not (N, 3)")
    if bvals.shape[0] != bvecs.shape[0]:
        raise UserError(
            f"{where}: {bvals.shape[0]} b-values but {bvecs.shape[0]} b-vectors"
        )
    if n_volumes is not None and bvals.shape[0] != n_volumes:
        raise UserError(
            f"{where}: {bvals.shape[0]} b-values/b-vectors but the DWI has {n_volumes} volumes"
        )
    bad = np.flatnonzero(~np.isfinite(bvals))
    if bad.size:
        raise UserError(f"{where}: b-value of volume {int(bad[0])} is {bvals[bad[0]]} (not finite)")
    bad = np.flatnonzero(bvals < 0)
    if bad.size:
        raise UserError(f"{where}: b-value of volume {int(bad[0])} is negative ({bvals[bad[0]]:g})")
    b0 = bvals <= b0_threshold
    dw = ~b0
    norms = np.linalg.norm(bvecs, axis=1)
    nonfinite = np.flatnonzero(dw & ~np.all(np.isfinite(bvecs), axis=1))
    if nonfinite.size:
        i = int(nonfinite[0])
        raise UserError(
            f"{where}: b-vector of volume {i} is {bvecs[i].tolist()} (not finite) at "
            f"b = {bvals[i]:g} > {b0_threshold:g}"
        )
    zero = np.flatnonzero(dw & (norms == 0))
    if zero.size:
        i = int(zero[0])
        raise UserError(
            f"{where}: b-vector of volume {i} is zero at b = {bvals[i]:g} > {b0_threshold:g}"
        )
    nonunit = np.flatnonzero(dw & (np.abs(norms - 1.0) > unit_tolerance))
    if nonunit.size:
        i = int(nonunit[0])
        raise UserError(
            f"{where}: b-vector of volume {i} has length {norms[i]:.4g}, not unit within "
            f"{unit_tolerance:g} (b = {bvals[i]:g})"
        )
    clean = np.zeros_like(bvecs)
    clean[dw] = bvecs[dw] / norms[dw, None]
    return Gradients(bvals=bvals, bvecs=clean, b0_threshold=float(b0_threshold))


def default_gradient_paths(dwi_path: str | os.PathLike) -> tuple[Path, Path]:
    """``.bval`` / ``.bvec`` beside a DWI (FSL and BIDS naming: same stem)."""
    dwi_path = Path(dwi_path)
    name = dwi_path.name
    for suffix in (".nii.gz", ".nii", ".mif.gz", ".mif"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return dwi_path.with_name(name + ".bval"), dwi_path.with_name(name + ".bvec")


def read_bvals_bvecs(
    bval_path: str | os.PathLike,
    bvec_path: str | os.PathLike,
    *,
    affine: Any,
    n_volumes: int | None = None,
    b0_threshold: float = B0_THRESHOLD,
    unit_tolerance: float = UNIT_TOLERANCE,
) -> Gradients:
    """Read FSL ``.bval`` / ``.bvec`` files into a checked gradient table.

    Parameters
    ----------
    bval_path, bvec_path : path-like
        Text files. ``.bval``: one row (or one column) of N numbers. ``.bvec``: 3 rows of
        N numbers (FSL) or N rows of 3 (accepted, as dipy and MRtrix do); with N = 3 the
        FSL layout is assumed.
    affine : array-like of shape (4, 4)
        The DWI's voxel -> world (RAS+ mm) affine; decides the FSL x flip.
    n_volumes : int, optional
        Number of DWI volumes, checked against N.
    b0_threshold, unit_tolerance : float
        b <= ``b0_threshold`` are b0 volumes; other b-vectors must be unit within
        ``unit_tolerance``.

    Returns
    -------
    Gradients
        b-values (s/mm^2) and unit b-vectors in the (i, j, k) frame of the DWI.

    Raises
    ------
    UserError
        Missing or malformed files, count mismatches, bad vectors; the message names the
        file.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "dwi.bval").write_text("0 1000\\n")
    >>> _ = (d / "dwi.bvec").write_text("0 1\\n0 0\\n0 0\\n")
    >>> g = read_bvals_bvecs(d / "dwi.bval", d / "dwi.bvec", affine=np.eye(4))
    >>> g.bvecs[1].tolist()   # det > 0: FSL's x is flipped back
    [-1.0, 0.0, 0.0]
    """
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    bvals = _read_table(bval_path, "b-value")
    if 1 not in bvals.shape:
        raise UserError(f"{bval_path}: b-values of shape {bvals.shape} are not one row or column")
    bvals = bvals.reshape(-1)
    table = _read_table(bvec_path, "b-vector")
    if table.shape[0] == 3:
        vecs = table.T
    elif table.shape[1] == 3:
        vecs = table
    else:
        raise UserError(f"{bvec_path}: b-vectors of shape {table.shape} are not 3 x N or N x 3")
    if vecs.shape[0] != bvals.shape[0]:
        raise UserError(
            f"{bvec_path}: {vecs.shape[0]} b-vectors but {bval_path.name} has "
            f"{bvals.shape[0]} b-values"
        )
    if _flip_needed(affine, str(bvec_path)):
        vecs = vecs.copy()
        vecs[:, 0] = -vecs[:, 0]
    if n_volumes is not None and bvals.shape[0] != n_volumes:
        raise UserError(
            f"{bval_path}: {bvals.shape[0]} b-values but the DWI has {n_volumes} volumes"
        )
    bad_b = np.flatnonzero(~np.isfinite(bvals) | (bvals < 0))
    if bad_b.size:
        raise UserError(
            f"{bval_path}: b-value of volume {int(bad_b[0])} is {bvals[bad_b[0]]} "
            "(must be finite and >= 0)"
        )
    return check_gradients(
        bvals,
        vecs,
        n_volumes=n_volumes,
        b0_threshold=b0_threshold,
        unit_tolerance=unit_tolerance,
        where=str(bvec_path),
    )


def write_bvals_bvecs(
    bval_path: str | os.PathLike,
    bvec_path: str | os.PathLike,
    gradients: Gradients,
    *,
    affine: Any,
) -> None:
    """Write FSL ``.bval`` / ``.bvec`` (3 rows) from a table in the (i, j, k) frame.

    The inverse of :func:`read_bvals_bvecs`: the x component is negated when
    det(affine[:3, :3]) > 0. Each file is written to a temporary sibling and renamed.
    """
    vecs = bvecs_ijk_to_fsl(gradients.bvecs, affine)
    for path, text in (
        (Path(bval_path), " ".join(f"{b:.10g}" for b in gradients.bvals) + "\n"),
        (Path(bvec_path), "\n".join(" ".join(f"{v:.10g}" for v in row) for row in vecs.T) + "\n"),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
