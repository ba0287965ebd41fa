"""Orientation maps from NIfTI for ``xscale compare``: FOD SH coefficients or peaks.

Each map is converted at this boundary to the in-memory conventions of design.md:
SH in dipy ``descoteaux07`` with ``legacy=False`` in the voxel (ijk) frame, peaks as
``(X, Y, Z, K, 3)`` vectors in the voxel frame with zero rows for absent peaks.

What a file holds is read from its JSON sidecar (``x.nii.gz`` -> ``x.json``):
BEP016-style ``OrientationEncoding`` ``{"Type": "sh" | "peaks" | "unit3vector" |
"3vector", "SphericalHarmonicsBasis": "descoteaux07" | "tournier07" | "mrtrix3",
"Legacy": bool, "SphericalHarmonicsDegree": int, "Reference": "ijk" | "xyz"}`` or the
flat keys ``sh_basis``, ``legacy``, ``sh_order_max``, ``frame`` (what ``xscale fod``
writes; an ``n_peaks`` key marks its peak maps). Without a sidecar: a 5-D
``(X, Y, Z, K, 3)`` image is peaks; a 4-D image whose last axis is an even-order SH
size (1, 6, 15, 28, 45, ...) is SH in the convention above; any other 4-D image with
``3 K`` volumes is peaks in MRtrix's layout. MRtrix
files (``tournier07``, world frame, ``Legacy`` true by default for ``mrtrix3``) are
converted; a world-frame (``xyz``) map is reoriented into the voxel frame with the
affine (``v_ijk ~ s * A3^-1 v_world``, design.md, correct under shear).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["OrientationMap", "read_orientation_map", "sh_world_to_voxel_matrix"]

_SH_SIZES = {(n + 1) * (n + 2) // 2: n for n in range(0, 21, 2)}


@dataclass(frozen=True)
class OrientationMap:
    """An FOD or peak map in the in-memory conventions.

    Attributes
    ----------
    kind : {"sh", "peaks"}
    data : ndarray
        ``(X, Y, Z, n_coeffs)`` float64 SH (descoteaux07, legacy=False, ijk frame) or
        ``(X, Y, Z, K, 3)`` float64 peaks (ijk frame, zero rows absent).
    affine : ndarray of shape (4, 4)
        Voxel -> world (RAS+ mm).
    sh_order_max : int or None
    path : Path
    """

    kind: str
    data: np.ndarray
    affine: np.ndarray
    sh_order_max: int | None
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]


def _lower_keys(d: dict[str, Any] | None) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in (d or {}).items()}


def _encoding(sidecar: dict[str, Any] | None) -> dict[str, Any]:
    """Normalised description: type, basis, legacy, order, frame (None = not stated)."""
    side = _lower_keys(sidecar)
    enc = _lower_keys(side.get("orientationencoding") if isinstance(
        side.get("orientationencoding"), dict) else None)
    out: dict[str, Any] = {
        "type": enc.get("type", side.get("type", side.get("kind"))),
        "basis": enc.get("sphericalharmonicsbasis", side.get("sh_basis", side.get("basis"))),
        "legacy": enc.get("legacy", side.get("legacy")),
        "order": enc.get(
            "sphericalharmonicsdegree",
            enc.get("sphericalharmonicsorder", side.get("sh_order_max")),
        ),
        "frame": enc.get("reference", side.get("frame", side.get("reference"))),
    }
    if out["type"] is None and ("n_peaks" in side or "npeaks" in side):
        out["type"] = "peaks"  # what `xscale fod` writes beside its peak maps
    if isinstance(out["type"], str):
        t = out["type"].lower()
        out["type"] = "peaks" if t in ("peaks", "unit3vector", "3vector", "vector") else t
    return out


def sh_world_to_voxel_matrix(affine, sh_order_max: int, *, basis: str = "descoteaux07",
                             legacy: bool = False) -> np.ndarray:
    """Matrix M with ``sh_ijk = sh_world @ M`` for a function given in the world frame.

    The function's value for voxel-frame direction u is its world-frame value at
    ``normalise(A3 (u / s))`` (design.md); M is fitted by least squares on a dense
    sphere (exact for a rotation, a reorientation for shear / anisotropic scaling) and
    maps into descoteaux07, legacy=False.

    Parameters
    ----------
    affine : (4, 4) array_like
    sh_order_max : int
    basis : {"descoteaux07", "tournier07"}
        Basis of the world-frame coefficients.
    legacy : bool
        Whether those coefficients use dipy's legacy definition.
    """
    from dipy.core.sphere import Sphere
    from dipy.data import get_sphere
    from dipy.reconst.shm import sh_to_sf_matrix

    a3 = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((a3**2).sum(axis=0))
    dense = get_sphere(name="repulsion724").subdivide(n=1)
    u = dense.vertices
    world = (a3 @ (u / spacing).T).T
    world /= np.linalg.norm(world, axis=1, keepdims=True)
    b_world = sh_to_sf_matrix(Sphere(xyz=world), sh_order_max=sh_order_max, basis_type=basis,
                              legacy=legacy, return_inv=False)
    b_ijk = sh_to_sf_matrix(dense, sh_order_max=sh_order_max, basis_type="descoteaux07",
                            legacy=False, return_inv=False)
    return b_world @ np.linalg.pinv(b_ijk)


def _peaks_world_to_voxel(peaks: np.ndarray, affine: np.ndarray) -> np.ndarray:
    a3 = affine[:3, :3]
    spacing = np.sqrt((a3**2).sum(axis=0))
    conv = spacing[:, None] * np.linalg.inv(a3)  # v_ijk ~ s * A3^-1 v_world
    norm_in = np.linalg.norm(peaks, axis=-1, keepdims=True)
    out = peaks @ conv.T
    norm_out = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(norm_out > 0, out / np.where(norm_out > 0, norm_out, 1) * norm_in, 0.0)


def read_orientation_map(path: str | os.PathLike, *, kind: str | None = None) -> OrientationMap:
    """Read an FOD SH or peak map (NIfTI + optional JSON sidecar) into the conventions.

    Parameters
    ----------
    path : path-like
        ``.nii`` / ``.nii.gz`` file.
    kind : {"sh", "peaks"}, optional
        Overrides what the sidecar says or the shape suggests.

    Returns
    -------
    OrientationMap

    Raises
    ------
    UserError
        Unreadable files, shapes that fit neither kind, unknown bases or frames, NaN.
    """
    from validation.io.nifti import load_nifti

    p = Path(path)
    img = load_nifti(p)
    data = np.asarray(img.data)
    enc = _encoding(img.sidecar)
    if kind is not None and kind not in ("sh", "peaks"):
        raise UserError(f"{p}: kind {kind!r} is not 'sh' or 'peaks'")
    what = kind or enc["type"]
    if what is None:
        if data.ndim == 5:
            what = "peaks"
        elif data.ndim == 4 and data.shape[3] in _SH_SIZES:
            what = "sh"
        elif data.ndim == 4 and data.shape[3] % 3 == 0:
            what = "peaks"
        else:
            raise UserError(
                f"{p}: shape {data.shape} is neither SH (X, Y, Z, n_coeffs) nor peaks "
                "(X, Y, Z, K, 3); add a JSON sidecar saying which"
            )
        if img.sidecar is None:
            log.info("%s: no sidecar; read as %s in the default convention", p, what)
    if what not in ("sh", "peaks"):
        raise UserError(f"{p}: sidecar type {what!r} is not sh or peaks")
    frame = str(enc["frame"] or "ijk").lower()
    if frame in ("voxel", "ijk"):
        frame = "ijk"
    elif frame in ("xyz", "world", "scanner", "ras"):
        frame = "xyz"
    else:
        raise UserError(f"{p}: orientation frame {enc['frame']!r} is not 'ijk' or 'xyz'")
    if data.dtype.kind not in "biuf":
        raise UserError(f"{p}: data type {data.dtype} is not numeric")
    arr = data.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{p}: contains NaN or infinite values")

    if what == "peaks":
        if arr.ndim == 4 and arr.shape[3] % 3 == 0:
            arr = arr.reshape(arr.shape[:3] + (arr.shape[3] // 3, 3))
        if arr.ndim != 5 or arr.shape[4] != 3:
            raise UserError(f"{p}: peaks must have shape (X, Y, Z, K, 3) or (X, Y, Z, 3K), "
                            f"got {data.shape}")
        if frame == "xyz":
            arr = _peaks_world_to_voxel(arr, img.affine)
        return OrientationMap("peaks", arr, img.affine, None, p)

    if arr.ndim != 4 or arr.shape[3] not in _SH_SIZES:
        raise UserError(f"{p}: SH data must be (X, Y, Z, n_coeffs) of an even order, got "
                        f"{data.shape}")
    order = _SH_SIZES[arr.shape[3]]
    if enc["order"] is not None and int(enc["order"]) != order:
        raise UserError(f"{p}: sidecar says SH order {enc['order']} but the file has "
                        f"{arr.shape[3]} coefficients (order {order})")
    if img.sidecar:
        # one reader of SH conventions (validation.io.sh): MRtrix3 files are tournier07,
        # non-legacy, world frame; a dipy basis without its legacy flag is refused
        from validation.io.sh import XSCALE, convention_from_sidecar, convert_sh

        conv = convention_from_sidecar(img.sidecar, where=str(p))
        arr = convert_sh(arr, img.affine, source=conv, target=XSCALE)
    elif frame == "xyz":
        arr = arr @ sh_world_to_voxel_matrix(img.affine, order)
    return OrientationMap("sh", arr, img.affine, order, p)
