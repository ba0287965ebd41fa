"""Spherical-harmonic (SH) images: read, write and convert between the SH conventions of
dipy and MRtrix, including the rotation into the voxel frame for oblique affines.

An SH convention is three things (:class:`SHConvention`):

- the basis: ``descoteaux07`` (dipy's default) or ``tournier07`` (MRtrix3's). Both are
  real, even-order, orthonormal bases of the same space; they differ in the order and
  the signs of the m != 0 functions.
- the legacy flag of dipy: ``descoteaux07`` with ``legacy=True`` (dipy < 1.9 default)
  differs from ``legacy=False`` by the sign of the functions with odd negative m
  (m = -1, -3, ...); ``tournier07`` with ``legacy=True`` is MRtrix 0.2's
  basis (no sqrt(2) on m != 0, not orthonormal). MRtrix3's basis is dipy's ``tournier07``
  with ``legacy=False`` (checked against MRtrix's ``sh2amp`` by
  ``tests/validation/test_sh_io_mrtrix.py``).
- the frame of the directions: ``ijk`` (components along the image array axes, in
  physical units: XScale and dipy models) or ``xyz`` (world / scanner RAS+, MRtrix).

XScale's in-memory convention (shared/design.md) is ``descoteaux07``, ``legacy=False``,
``ijk`` (:data:`XSCALE`); MRtrix files are ``tournier07``, ``legacy=False``, ``xyz``
(:data:`MRTRIX`). The world direction of a voxel-frame direction u is
``w = normalise(A3 (u / s))`` (A3 the affine's 3x3, s the voxel sizes; design.md). A
change of frame re-expresses the function ``f_ijk(u) = f_xyz(w(u))`` in the other
frame: it is sampled on a dense sphere and refitted by least squares, which is exact
(to rounding) when ``u -> w`` is a rotation (any affine without shear: each degree-l
subspace is rotation invariant) and the best SH approximation under shear.

Which convention a file holds is read from its JSON sidecar (``x.nii.gz`` ->
``x.json``): BEP016 ``OrientationEncoding`` ``{"Type": "sh", "SphericalHarmonicsBasis":
"MRtrix3" | "tournier07" | "descoteaux07", "Legacy": bool, "SphericalHarmonicsDegree":
int, "Reference": "ijk" | "xyz"}`` or XScale's flat keys (``sh_basis``, ``legacy``,
``sh_order_max``, ``frame``), or declared by the caller. What cannot be told apart is
refused, never guessed: a ``descoteaux07`` / ``tournier07`` file that does not say
whether it uses the legacy definition, an SH file without a frame, or a file without any
sidecar; the message says how to declare it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

__all__ = [
    "MRTRIX",
    "XSCALE",
    "SHConvention",
    "SHImage",
    "convention_from_sidecar",
    "convert_sh",
    "n_coeffs_for_order",
    "read_sh",
    "sh_amplitudes",
    "sh_conversion_matrix",
    "sh_order_from_n_coeffs",
    "sh_sidecar",
    "voxel_to_world_directions",
    "world_to_voxel_directions",
    "write_sh",
]

_BASES = ("descoteaux07", "tournier07")
_FRAMES = ("ijk", "xyz")
_FRAME_ALIASES = {"ijk": "ijk", "voxel": "ijk", "vox": "ijk",
                  "xyz": "xyz", "world": "xyz", "scanner": "xyz", "ras": "xyz", "rasmm": "xyz"}
#: basis names whose definition fixes the legacy flag (MRtrix3's own basis)
_MRTRIX_NAMES = ("mrtrix3", "mrtrix")
_BASIS_ALIASES = {"descoteaux07": "descoteaux07", "descoteaux": "descoteaux07",
                  "dipy": "descoteaux07", "tournier07": "tournier07", "tournier": "tournier07"}

_HOW_TO_DECLARE = (
    'declare it in the JSON sidecar ({"OrientationEncoding": {"Type": "sh", '
    '"SphericalHarmonicsBasis": "descoteaux07"|"tournier07"|"MRtrix3", "Legacy": true|false, '
    '"Reference": "ijk"|"xyz"}}) or to read_sh (basis=, legacy=, frame=, or '
    'convention="mrtrix"|"xscale")'
)


@dataclass(frozen=True)
class SHConvention:
    """An SH convention: basis, dipy legacy flag and direction frame.

    Attributes
    ----------
    basis : {"descoteaux07", "tournier07"}
    legacy : bool
        dipy's ``legacy`` flag for that basis (module docstring).
    frame : {"ijk", "xyz"}
        Voxel frame (array axes) or world frame (RAS+).
    """

    basis: str
    legacy: bool
    frame: str

    def __post_init__(self) -> None:
        if self.basis not in _BASES:
            raise UserError(f"SH basis {self.basis!r} is not one of {', '.join(_BASES)}")
        if self.frame not in _FRAMES:
            raise UserError(f"SH frame {self.frame!r} is not 'ijk' or 'xyz'")
        if not isinstance(self.legacy, bool | np.bool_):
            raise UserError(f"SH legacy flag {self.legacy!r} must be true or false")

    @property
    def is_mrtrix(self) -> bool:
        """True for MRtrix3's convention (tournier07, legacy=False, world frame)."""
        return self == MRTRIX


#: XScale's in-memory convention (shared/design.md).
XSCALE = SHConvention("descoteaux07", False, "ijk")
#: MRtrix3's convention: dipy ``tournier07`` ``legacy=False``, scanner (world) frame.
MRTRIX = SHConvention("tournier07", False, "xyz")


def _as_convention(value: SHConvention | str, what: str) -> SHConvention:
    if isinstance(value, SHConvention):
        return value
    key = str(value).lower()
    if key in ("xscale", "dipy-ijk"):
        return XSCALE
    if key in _MRTRIX_NAMES:
        return MRTRIX
    raise UserError(f"{what} {value!r} is not an SHConvention, 'xscale' or 'mrtrix'")


# --------------------------------------------------------------------------- orders


def n_coeffs_for_order(sh_order_max: int) -> int:
    """Number of even-order SH coefficients up to ``sh_order_max``: (l+1)(l+2)/2."""
    if sh_order_max < 0 or sh_order_max % 2:
        raise UserError(f"sh_order_max {sh_order_max} must be an even number >= 0")
    return (sh_order_max + 1) * (sh_order_max + 2) // 2


def sh_order_from_n_coeffs(n_coeffs: int, *, where: str = "SH data") -> int:
    """The even maximal order whose basis has ``n_coeffs`` functions (45 -> 8).

    Raises
    ------
    UserError
        When ``n_coeffs`` is not 1, 6, 15, 28, 45, 66, ...
    """
    order = int(round((np.sqrt(8 * n_coeffs + 1) - 3) / 2))
    if order < 0 or order % 2 or n_coeffs_for_order(order) != n_coeffs:
        raise UserError(f"{where}: {n_coeffs} coefficients is not an even-order SH size "
                        "(1, 6, 15, 28, 45, 66, ...)")
    return order


# --------------------------------------------------------------------------- directions


def _linear(affine: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise UserError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    a3 = a[:3, :3]
    if abs(np.linalg.det(a3)) < 1e-12:
        raise UserError("affine is singular; SH directions cannot be mapped to the world")
    return a3, np.sqrt((a3**2).sum(axis=0))


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def voxel_to_world_directions(directions: Any, affine: Any) -> np.ndarray:
    """World (RAS+) unit directions of voxel-frame directions: ``normalise(A3 (u / s))``.

    Parameters
    ----------
    directions : array_like of shape (..., 3)
        Components along the image array axes (i, j, k), physical units.
    affine : array_like of shape (4, 4)
        Voxel -> world (mm).

    Returns
    -------
    ndarray of shape (..., 3), float64; zero rows stay zero.
    """
    a3, spacing = _linear(affine)
    return _normalise((np.asarray(directions, np.float64) / spacing) @ a3.T)


def world_to_voxel_directions(directions: Any, affine: Any) -> np.ndarray:
    """Inverse of :func:`voxel_to_world_directions`: ``normalise(s * A3^-1 w)``, (..., 3)."""
    a3, spacing = _linear(affine)
    return _normalise((np.asarray(directions, np.float64) @ np.linalg.inv(a3).T) * spacing)


# --------------------------------------------------------------------------- bases


def _sh_matrix(directions: np.ndarray, sh_order_max: int, basis: str, legacy: bool) -> np.ndarray:
    """Basis functions at unit directions: (D, n_coeffs)."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux, real_sh_tournier

    _, theta, phi = cart2sphere(directions[:, 0], directions[:, 1], directions[:, 2])
    fn = real_sh_descoteaux if basis == "descoteaux07" else real_sh_tournier
    with warnings.catch_warnings():  # dipy warns on every use of the legacy bases
        warnings.simplefilter("ignore")
        matrix = fn(sh_order_max, theta, phi, legacy=legacy)[0]
    return np.asarray(matrix, dtype=np.float64)


@lru_cache(maxsize=4)
def _fit_sphere(sh_order_max: int) -> np.ndarray:
    """Near-uniform unit vectors for refitting SH: 724 (at least 4x the coefficients up to
    order 16), subdivided for higher orders."""
    from dipy.data import get_sphere

    sphere = get_sphere(name="repulsion724")
    if sh_order_max > 16:
        sphere = sphere.subdivide(n=1 + int(sh_order_max > 32))
    return np.asarray(sphere.vertices, dtype=np.float64)


def sh_conversion_matrix(affine: Any, sh_order_max: int, source: SHConvention | str,
                         target: SHConvention | str) -> np.ndarray:
    """Matrix M with ``sh_target = sh_source @ M`` for one image.

    The function is the same on the sphere of physical directions; only its
    coefficients change (basis, legacy flag, frame; module docstring).

    Parameters
    ----------
    affine : array_like of shape (4, 4)
        Voxel -> world of the image (used only when the frames differ).
    sh_order_max : int
        Even maximal order.
    source, target : SHConvention or {"xscale", "mrtrix"}

    Returns
    -------
    ndarray of shape (n_coeffs, n_coeffs), float64

    Examples
    --------
    >>> import numpy as np
    >>> m = sh_conversion_matrix(np.eye(4), 2, MRTRIX, XSCALE)
    >>> bool(np.allclose(np.abs(m), np.abs(m).round()))   # a signed permutation
    True
    """
    src = _as_convention(source, "source")
    tgt = _as_convention(target, "target")
    n = n_coeffs_for_order(sh_order_max)
    if src == tgt:
        return np.eye(n)
    a3 = tuple(np.asarray(affine, dtype=np.float64)[:3, :3].ravel()) if src.frame != tgt.frame \
        else None
    return _conversion_matrix(a3, sh_order_max, src, tgt).copy()


@lru_cache(maxsize=32)
def _conversion_matrix(a3: tuple[float, ...] | None, sh_order_max: int, src: SHConvention,
                       tgt: SHConvention) -> np.ndarray:
    affine = np.eye(4)
    if a3 is not None:
        affine[:3, :3] = np.reshape(a3, (3, 3))
    u = _fit_sphere(sh_order_max)  # directions in the target frame
    if src.frame == tgt.frame:
        v = u
    elif tgt.frame == "ijk":
        v = voxel_to_world_directions(u, affine)
    else:
        v = world_to_voxel_directions(u, affine)
    b_src = _sh_matrix(v, sh_order_max, src.basis, src.legacy)  # (D, n)
    b_tgt = _sh_matrix(u, sh_order_max, tgt.basis, tgt.legacy)  # (D, n)
    # coefficients c_t with b_tgt c_t = b_src c_s in the least-squares sense
    m = np.linalg.lstsq(b_tgt, b_src, rcond=None)[0]  # (n, n): c_t = m c_s
    m[np.abs(m) < 1e-12] = 0.0
    return m.T


def convert_sh(sh: Any, affine: Any, *, source: SHConvention | str,
               target: SHConvention | str) -> np.ndarray:
    """Convert SH coefficients between conventions (basis, legacy flag, frame).

    Parameters
    ----------
    sh : array_like of shape (..., n_coeffs)
    affine : array_like of shape (4, 4)
        Voxel -> world (mm) of the image the coefficients belong to.
    source, target : SHConvention or {"xscale", "mrtrix"}

    Returns
    -------
    ndarray of shape (..., n_coeffs)
        float32 for float32 input, float64 otherwise.
    """
    arr = np.asarray(sh)
    if arr.ndim < 1:
        raise UserError("sh must have a last axis of SH coefficients")
    order = sh_order_from_n_coeffs(arr.shape[-1], where="sh")
    matrix = sh_conversion_matrix(affine, order, source, target)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    out = arr.astype(np.float64) @ matrix
    return out.astype(dtype, copy=False)


def sh_amplitudes(sh: Any, affine: Any, directions: Any, *,
                  convention: SHConvention | str = XSCALE,
                  directions_frame: str = "xyz") -> np.ndarray:
    """Evaluate SH functions along given directions (what MRtrix's ``sh2amp`` computes).

    Parameters
    ----------
    sh : array_like of shape (..., n_coeffs)
    affine : array_like of shape (4, 4)
        Voxel -> world of the image.
    directions : array_like of shape (D, 3)
        Unit directions (normalised here).
    convention : SHConvention or {"xscale", "mrtrix"}
        Convention of ``sh``.
    directions_frame : {"xyz", "ijk"}
        Frame of ``directions``; world (scanner) by default, as ``sh2amp``.

    Returns
    -------
    ndarray of shape (..., D), float64
    """
    conv = _as_convention(convention, "convention")
    frame = _FRAME_ALIASES.get(str(directions_frame).lower())
    if frame is None:
        raise UserError(f"directions_frame {directions_frame!r} is not 'xyz' or 'ijk'")
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3:
        raise UserError(f"directions of shape {d.shape} are not (D, 3)")
    if frame != conv.frame:
        d = (voxel_to_world_directions(d, affine) if frame == "ijk"
             else world_to_voxel_directions(d, affine))
    else:
        d = _normalise(d)
    arr = np.asarray(sh, dtype=np.float64)
    order = sh_order_from_n_coeffs(arr.shape[-1], where="sh")
    return arr @ _sh_matrix(d, order, conv.basis, conv.legacy).T


# --------------------------------------------------------------------------- sidecars


def _lower(d: Any) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in d.items()} if isinstance(d, dict) else {}


def _declared_fields(sidecar: dict[str, Any] | None) -> dict[str, Any]:
    """type, basis name, legacy, order, frame as written (None = not stated)."""
    side = _lower(sidecar)
    enc = _lower(side.get("orientationencoding"))
    return {
        "type": enc.get("type", side.get("type")),
        "basis": enc.get("sphericalharmonicsbasis", side.get("sh_basis")),
        "legacy": enc.get("legacy", side.get("legacy")),
        "order": enc.get("sphericalharmonicsdegree",
                         enc.get("sphericalharmonicsorder", side.get("sh_order_max"))),
        "frame": enc.get("reference", side.get("frame")),
    }


def _norm(key: str, value: Any) -> Any:
    """A stated field in a comparable form (MRtrix3 and tournier07 compare equal)."""
    if value is None:
        return None
    if key == "basis":
        name = str(value).lower()
        return "tournier07" if name in _MRTRIX_NAMES else _BASIS_ALIASES.get(name, name)
    if key == "frame":
        return _FRAME_ALIASES.get(str(value).lower(), str(value).lower())
    return bool(value)


def _resolve(basis: Any, legacy: Any, frame: Any, where: str) -> SHConvention:
    """A convention from stated fields; refuses what is missing or unknown."""
    if basis is None:
        raise UserError(f"{where}: the SH basis is not stated; {_HOW_TO_DECLARE}")
    name = str(basis).lower()
    if name in _MRTRIX_NAMES:
        if legacy is not None and bool(legacy):
            raise UserError(f"{where}: basis MRtrix3 with Legacy true is contradictory "
                            "(MRtrix 0.2's basis is tournier07 with Legacy true)")
        frame = "xyz" if frame is None else frame
        resolved_basis, legacy = "tournier07", False
    elif name in _BASIS_ALIASES:
        resolved_basis = _BASIS_ALIASES[name]
        if legacy is None:
            raise UserError(
                f"{where}: SH basis {basis!r} without a legacy flag: dipy's legacy and "
                f"non-legacy {resolved_basis} bases cannot be told apart from the data; "
                + _HOW_TO_DECLARE)
    else:
        raise UserError(f"{where}: SH basis {basis!r} is not descoteaux07, tournier07 or "
                        "MRtrix3")
    if not isinstance(legacy, bool | np.bool_):
        raise UserError(f"{where}: SH legacy flag {legacy!r} must be true or false")
    if frame is None:
        raise UserError(f"{where}: the frame of the SH directions is not stated "
                        f"(Reference ijk or xyz); {_HOW_TO_DECLARE}")
    resolved_frame = _FRAME_ALIASES.get(str(frame).lower())
    if resolved_frame is None:
        raise UserError(f"{where}: SH Reference {frame!r} is not 'ijk' or 'xyz'")
    return SHConvention(resolved_basis, bool(legacy), resolved_frame)


def convention_from_sidecar(sidecar: dict[str, Any] | None, *,
                            where: str = "sidecar") -> SHConvention:
    """The SH convention a JSON sidecar states (BEP016 ``OrientationEncoding`` or flat keys).

    Raises
    ------
    UserError
        No sidecar, a type other than SH, an unknown basis or frame, or a
        ``descoteaux07`` / ``tournier07`` basis without its legacy flag; the message says
        how to declare the convention.
    """
    if not sidecar:
        raise UserError(f"{where}: no JSON sidecar states the SH convention; {_HOW_TO_DECLARE}")
    fields = _declared_fields(sidecar)
    if fields["type"] is not None and str(fields["type"]).lower() != "sh":
        raise UserError(f"{where}: OrientationEncoding Type {fields['type']!r} is not 'sh'")
    return _resolve(fields["basis"], fields["legacy"], fields["frame"], where)


def sh_sidecar(convention: SHConvention | str, sh_order_max: int) -> dict[str, Any]:
    """JSON-sidecar fields for an SH image (BEP016 ``OrientationEncoding`` plus XScale's
    flat keys, as :func:`validation.fod.sh_basis_metadata` writes them)."""
    conv = _as_convention(convention, "convention")
    n_coeffs_for_order(sh_order_max)
    basis_name = "MRtrix3" if conv.is_mrtrix else conv.basis
    return {
        "OrientationEncoding": {
            "Type": "sh",
            "SphericalHarmonicsBasis": basis_name,
            "Legacy": bool(conv.legacy),
            "SphericalHarmonicsDegree": int(sh_order_max),
            "Reference": conv.frame,
        },
        "sh_basis": conv.basis,
        "legacy": bool(conv.legacy),
        "sh_order_max": int(sh_order_max),
        "frame": conv.frame,
    }


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class SHImage:
    """An SH image read into XScale's convention.

    Attributes
    ----------
    sh : ndarray of shape (X, Y, Z, n_coeffs)
        descoteaux07, legacy=False, voxel (ijk) frame; float32 when the file held float32
        (or an integer type), float64 otherwise.
    affine : ndarray of shape (4, 4)
        Voxel -> world (mm).
    sh_order_max : int
    source : SHConvention
        The convention the file held.
    path : Path
    sidecar : dict or None
    """

    sh: np.ndarray
    affine: np.ndarray
    sh_order_max: int
    source: SHConvention
    path: Path
    sidecar: dict[str, Any] | None


def read_sh(path: str | os.PathLike, *, convention: SHConvention | str | None = None,
            basis: str | None = None, legacy: bool | None = None,
            frame: str | None = None) -> SHImage:
    """Read an SH image (NIfTI) and convert it to XScale's convention.

    The file's convention comes from its JSON sidecar; ``convention`` (whole) or
    ``basis`` / ``legacy`` / ``frame`` (single fields) declare it, filling what the
    sidecar leaves out. A declaration that contradicts the sidecar is an error.

    Parameters
    ----------
    path : path-like
        ``.nii`` / ``.nii.gz`` of shape (X, Y, Z, n_coeffs).
    convention : SHConvention or {"mrtrix", "xscale"}, optional
        The whole convention (e.g. ``"mrtrix"`` for ``dwi2fod`` output).
    basis : {"descoteaux07", "tournier07", "MRtrix3"}, optional
    legacy : bool, optional
    frame : {"ijk", "xyz"}, optional

    Returns
    -------
    SHImage

    Raises
    ------
    UserError
        Unreadable file, wrong shape, NaN, an order that differs from the sidecar's, or
        a convention that is not stated or contradicts the sidecar.
    """
    from validation.io.nifti import load_nifti

    p = Path(path)
    img = load_nifti(p)
    data = np.asarray(img.data)
    if data.ndim != 4:
        raise UserError(f"{p}: SH image must be 4-D (X, Y, Z, n_coeffs), got shape {data.shape}")
    if data.dtype.kind not in "iuf":
        raise UserError(f"{p}: data type {data.dtype} is not numeric")
    order = sh_order_from_n_coeffs(data.shape[3], where=str(p))
    stated = _declared_fields(img.sidecar)
    if stated["type"] is not None and str(stated["type"]).lower() != "sh":
        raise UserError(f"{p}: sidecar OrientationEncoding Type {stated['type']!r} is not 'sh'")
    if stated["order"] is not None and int(stated["order"]) != order:
        raise UserError(f"{p}: sidecar says SH degree {stated['order']} but the file has "
                        f"{data.shape[3]} coefficients (degree {order})")
    declared: dict[str, Any] = {"basis": basis, "legacy": legacy, "frame": frame}
    if convention is not None:
        if any(v is not None for v in declared.values()):
            raise UserError(f"{p}: give either convention or basis/legacy/frame, not both")
        conv = _as_convention(convention, "convention")
        declared = {"basis": "MRtrix3" if conv.is_mrtrix else conv.basis,
                    "legacy": conv.legacy, "frame": conv.frame}
    if not img.sidecar and all(v is None for v in declared.values()):
        raise UserError(f"{p}: no JSON sidecar states the SH convention; {_HOW_TO_DECLARE}")
    merged: dict[str, Any] = {}
    for key in ("basis", "legacy", "frame"):
        said, told = stated[key], declared[key]
        if said is not None and told is not None and _norm(key, said) != _norm(key, told):
            raise UserError(f"{p}: declared SH {key} {told!r} contradicts the sidecar's "
                            f"{said!r}; correct the sidecar or drop the declaration")
        merged[key] = told if told is not None else said
    if str(stated["basis"]).lower() in _MRTRIX_NAMES:  # MRtrix3 also fixes legacy and frame
        merged["basis"] = stated["basis"]
    source = _resolve(merged["basis"], merged["legacy"], merged["frame"], str(p))
    dtype = np.float64 if data.dtype == np.float64 else np.float32
    arr = data.astype(dtype)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{p}: SH data contain NaN or infinite values")
    sh = convert_sh(arr, img.affine, source=source, target=XSCALE)
    return SHImage(sh, img.affine, order, source, p, img.sidecar)


def write_sh(path: str | os.PathLike, sh: Any, affine: Any, *,
             convention: SHConvention | str = XSCALE,
             source: SHConvention | str = XSCALE,
             sidecar: dict[str, Any] | None = None) -> Path:
    """Write SH coefficients as NIfTI + JSON sidecar in a chosen convention.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``; the sidecar ``.json`` is written beside it.
    sh : array_like of shape (X, Y, Z, n_coeffs)
        Coefficients in the ``source`` convention (XScale's by default).
    affine : array_like of shape (4, 4)
        Voxel -> world (mm).
    convention : SHConvention or {"xscale", "mrtrix"}
        Convention on disk; ``"mrtrix"`` gives a file MRtrix reads as an FOD (world frame).
    source : SHConvention or {"xscale", "mrtrix"}
        Convention of ``sh``.
    sidecar : dict, optional
        Extra sidecar fields (merged; the SH fields win).

    Returns
    -------
    Path
        The image path. Both files are written to temporary siblings and renamed.
    """
    from validation.io.nifti import save_nifti

    arr = np.asarray(sh)
    if arr.ndim != 4:
        raise UserError(f"{path}: sh must be 4-D (X, Y, Z, n_coeffs), got shape {arr.shape}")
    order = sh_order_from_n_coeffs(arr.shape[3], where=str(path))
    target = _as_convention(convention, "convention")
    out = convert_sh(arr, affine, source=source, target=target)
    if out.dtype != np.float32 and arr.dtype == np.float32:
        out = out.astype(np.float32)
    meta = dict(sidecar or {})
    meta.update(sh_sidecar(target, order))
    return save_nifti(path, out, affine, sidecar=meta)
