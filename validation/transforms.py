"""Spatial transforms between microscopy and dMRI space, their file formats, and
orientation reorientation.

Every :class:`Transform` maps *points* in world millimetres (RAS+) of one space to
world millimetres of the next: ``apply_points(points_mm)``; its local Jacobian
``jacobian(points_mm)`` (d output / d input, 3x3 per point) reorients orientation
vectors, ``v' = J v / |J v|`` (:func:`reorient`), which is exact for affines (a
rotation rotates, a shear shears) and first-order exact for displacement fields.

A manifest's transform chain (microscopy world -> dMRI world) is a
:class:`CompositeTransform` applied in order. File formats and their sides:

========================  ==================================================================
4x4 text matrix           RAS mm, maps points of the space you come from to the next one
ITK / ANTs ``.txt/.mat``  LPS mm (converted to RAS); maps points of the registration's
                          *fixed* image to its *moving* image. In a chain that goes from A
                          to B, a file registered with fixed = A, moving = B is used as is;
                          with fixed = B, moving = A (the usual "resample A into B") it
                          needs ``invert = true``.
FreeSurfer LTA            type 1 (LINEAR_RAS_TO_RAS): scanner RAS of ``src`` to ``dst``;
                          type 0 (LINEAR_VOX_TO_VOX): voxels of ``src`` to ``dst``, made
                          RAS-to-RAS with the geometry stored in the file.
Neuroglancer layer        3x4 matrix in named output dimensions with units
                          (:func:`neuroglancer_affine`): the linear part acts on physical
                          coordinates (unit-less), the translation is in output units.
ITK displacement field    NIfTI (X, Y, Z, 1, 3) or (X, Y, Z, 3), LPS mm vectors on the
                          *fixed* grid: p -> p + u(p), fixed to moving like ITK affines.
========================  ==================================================================

Affine chains compose and invert exactly; a displacement field inverts by fixed-point
iteration (:class:`InverseDisplacementFieldTransform`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

__all__ = [
    "AffineTransform",
    "CompositeTransform",
    "DisplacementFieldTransform",
    "InverseDisplacementFieldTransform",
    "Transform",
    "TransformError",
    "compose",
    "linearise",
    "load_transform",
    "neuroglancer_affine",
    "perturbed_transforms",
    "random_rigid_perturbation",
    "read_itk_affine",
    "read_itk_displacement_field",
    "read_lta",
    "read_matrix_txt",
    "reorient",
    "rotation_matrix",
    "to_dmri_space",
    "vectors_ijk_to_world",
    "vectors_world_to_ijk",
    "write_itk_affine",
    "write_matrix_txt",
]

#: RAS <-> LPS: negate x and y (its own inverse).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: metres per unit for the unit names Neuroglancer and NGFF use.
_METRES = {
    "m": 1.0, "meter": 1.0, "metre": 1.0,
    "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3,
    "um": 1e-6, "µm": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6, "micron": 1e-6,
    "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9,
    "pm": 1e-12, "picometer": 1e-12,
    "angstrom": 1e-10, "cm": 1e-2, "centimeter": 1e-2,
}


class TransformError(UserError):
    """A transform file or matrix that cannot be used (bad format, singular, non-finite)."""


def unit_to_mm(unit: str, *, where: str = "unit") -> float:
    """Size of one ``unit`` (``"m"``, ``"um"``, ``"micrometer"``, ...) in millimetres."""
    key = str(unit).strip()
    factor = _METRES.get(key, _METRES.get(key.lower()))
    if factor is None:
        raise TransformError(f"{where}: unknown length unit {unit!r}")
    return factor * 1e3


def _as_points(points_mm: Any) -> np.ndarray:
    pts = np.asarray(points_mm, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise TransformError(f"points of shape {pts.shape} must have 3 components on the last axis")
    return pts


def _check_affine(matrix: Any, where: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise TransformError(f"{where}: affine of shape {m.shape} is not 4x4 (or 3x4)")
    if not np.all(np.isfinite(m)):
        raise TransformError(f"{where}: affine has non-finite entries")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-8):
        raise TransformError(
            f"{where}: last row of the affine is {m[3].tolist()}, not [0, 0, 0, 1]"
        )
    det = float(np.linalg.det(m[:3, :3]))
    scale = float(np.prod(np.linalg.norm(m[:3, :3], axis=0)))
    if not np.isfinite(det) or scale == 0 or abs(det) <= 1e-12 * max(scale, 1e-300):
        raise TransformError(f"{where}: affine is singular (det of its 3x3 part = {det:g})")
    return m


class Transform:
    """Base class: a map from world mm (RAS+) of one space to world mm of another.

    Subclasses implement :meth:`apply_points`, :meth:`jacobian` and :meth:`inverse`.
    """

    #: True when the map is affine (then :meth:`as_affine` gives its 4x4 matrix).
    is_affine: bool = False

    def apply_points(self, points_mm: Any) -> np.ndarray:
        """Map points, array (..., 3) in mm, to the next space; returns (..., 3) mm."""
        raise NotImplementedError

    def jacobian(self, points_mm: Any) -> np.ndarray:
        """Local Jacobian d(output)/d(input) at each point, shape (..., 3, 3)."""
        raise NotImplementedError

    def inverse(self) -> Transform:
        """The inverse map."""
        raise NotImplementedError

    def as_affine(self) -> np.ndarray:
        """The (4, 4) matrix of an affine transform; :class:`TransformError` otherwise."""
        raise TransformError(f"{self!r} is not affine")

    def reorient(self, vectors: Any, points_mm: Any) -> np.ndarray:
        """Reorient vectors at points: ``J v / |J v|`` (see :func:`reorient`)."""
        return reorient(vectors, points_mm, self)

    def push_forward(self, vectors: Any, points_mm: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(J(p) v, T(p))``: vectors (unnormalised) and points, both (..., 3).

        Cheaper than forming the Jacobians: a chain pushes the vectors stage by stage.
        """
        pts = _as_points(points_mm)
        v = np.asarray(vectors, dtype=np.float64)
        jv = np.einsum("...ij,...j->...i", self.jacobian(pts), v)
        return jv, self.apply_points(pts)

    def then(self, other: Transform) -> CompositeTransform:
        """This transform followed by ``other``."""
        return compose(self, other)


class AffineTransform(Transform):
    """An affine map ``y = A[:3, :3] x + A[:3, 3]`` in world mm.

    Parameters
    ----------
    matrix : array-like of shape (4, 4) or (3, 4)
        Finite, non-singular; last row [0, 0, 0, 1].
    source : str
        Where it came from (for messages).

    Examples
    --------
    >>> t = AffineTransform(np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> t.apply_points([1.0, 0.0, 0.0]).tolist()
    [2.0, 0.0, 0.0]
    >>> t.inverse().apply_points([2.0, 0.0, 0.0]).tolist()
    [1.0, 0.0, 0.0]
    """

    is_affine = True

    def __init__(self, matrix: Any, *, source: str = "affine") -> None:
        self.matrix = _check_affine(matrix, source)
        self.source = source

    def __repr__(self) -> str:
        return f"AffineTransform({self.source!r})"

    def apply_points(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        return pts @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def jacobian(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        return np.broadcast_to(self.matrix[:3, :3], pts.shape[:-1] + (3, 3)).copy()

    def inverse(self) -> AffineTransform:
        return AffineTransform(np.linalg.inv(self.matrix), source=f"inverse of {self.source}")

    def push_forward(self, vectors: Any, points_mm: Any) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(vectors, dtype=np.float64)
        return v @ self.matrix[:3, :3].T, self.apply_points(points_mm)

    def as_affine(self) -> np.ndarray:
        return self.matrix.copy()


def _trilinear(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of (X, Y, Z, C) at voxel coords (..., 3); 0 outside."""
    from scipy.ndimage import map_coordinates

    flat = coords.reshape(-1, 3).T
    out = np.empty((flat.shape[1], volume.shape[-1]), dtype=np.float64)
    for c in range(volume.shape[-1]):
        out[:, c] = map_coordinates(volume[..., c], flat, order=1, mode="constant", cval=0.0)
    return out.reshape(coords.shape[:-1] + (volume.shape[-1],))


class DisplacementFieldTransform(Transform):
    """``y = x + u(x)``, with ``u`` a displacement field sampled on a voxel grid.

    Parameters
    ----------
    displacement : array-like of shape (X, Y, Z, 3)
        Displacement in world mm (RAS+) at each grid voxel centre.
    affine : array-like of shape (4, 4)
        Grid voxel -> world mm.
    source : str
        Where it came from (for messages).

    Notes
    -----
    ``u`` is interpolated trilinearly and is zero outside the grid (ITK's behaviour).
    The Jacobian is ``I + du/dx``, with ``du/dx`` from central differences on the grid
    (interpolated trilinearly), exact for fields linear in space.
    """

    def __init__(self, displacement: Any, affine: Any, *, source: str = "displacement field"):
        field = np.asarray(displacement, dtype=np.float64)
        if field.ndim != 4 or field.shape[-1] != 3:
            raise TransformError(
                f"{source}: displacement of shape {field.shape} is not (X, Y, Z, 3)"
            )
        if min(field.shape[:3]) < 2:
            raise TransformError(
                f"{source}: displacement grid {field.shape[:3]} needs >= 2 voxels per axis"
            )
        if not np.all(np.isfinite(field)):
            raise TransformError(f"{source}: displacement field has non-finite vectors")
        self.displacement = field
        self.affine = _check_affine(affine, source)
        self._inv_affine = np.linalg.inv(self.affine)
        self.source = source
        self._gradient: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"DisplacementFieldTransform({self.source!r})"

    def _voxel(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self._inv_affine[:3, :3].T + self._inv_affine[:3, 3]

    def displacement_at(self, points_mm: Any) -> np.ndarray:
        """Interpolated displacement u at points (..., 3) mm, in mm."""
        pts = _as_points(points_mm)
        return _trilinear(self.displacement, self._voxel(pts))

    def apply_points(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        return pts + self.displacement_at(pts)

    def _world_gradient(self) -> np.ndarray:
        if self._gradient is None:
            # d u_c / d ijk_a, then chain rule with d ijk / d x = inv(A)[:3, :3]
            grads = np.stack(list(np.gradient(self.displacement, axis=(0, 1, 2))), axis=-1)
            self._gradient = (grads @ self._inv_affine[:3, :3]).reshape(
                self.displacement.shape[:3] + (9,)
            )
        return self._gradient

    def jacobian(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        grad = _trilinear(self._world_gradient(), self._voxel(pts)).reshape(pts.shape[:-1] + (3, 3))
        return grad + np.eye(3)

    def push_forward(self, vectors: Any, points_mm: Any) -> tuple[np.ndarray, np.ndarray]:
        pts = _as_points(points_mm)
        v = np.asarray(vectors, dtype=np.float64)
        vox = self._voxel(pts)
        grad = _trilinear(self._world_gradient(), vox).reshape(pts.shape[:-1] + (3, 3))
        jv = v + np.einsum("...ij,...j->...i", grad, v)
        return jv, pts + _trilinear(self.displacement, vox)

    def inverse(self) -> InverseDisplacementFieldTransform:
        return InverseDisplacementFieldTransform(self)


class InverseDisplacementFieldTransform(Transform):
    """Inverse of a :class:`DisplacementFieldTransform` by fixed-point iteration.

    Solves ``x + u(x) = y`` with ``x_{k+1} = y - u(x_k)``, which converges when the field
    is a contraction (``|du/dx| < 1``, true of any invertible smooth registration field).

    Parameters
    ----------
    forward : DisplacementFieldTransform
    max_iter : int
        Iteration limit; :class:`TransformError` when not converged.
    tol_mm : float
        Stop when every point's residual ``|x + u(x) - y|`` is below it (mm).
    """

    def __init__(
        self, forward: DisplacementFieldTransform, *, max_iter: int = 200, tol_mm: float = 1e-9
    ) -> None:
        self.forward = forward
        self.max_iter = int(max_iter)
        self.tol_mm = float(tol_mm)

    def __repr__(self) -> str:
        return f"InverseDisplacementFieldTransform({self.forward.source!r})"

    def apply_points(self, points_mm: Any) -> np.ndarray:
        y = _as_points(points_mm)
        x = y.copy()
        for _ in range(self.max_iter):
            x_new = y - self.forward.displacement_at(x)
            step = np.abs(x_new - x).max() if x.size else 0.0
            x = x_new
            if step < self.tol_mm:
                return x
        residual = float(np.abs(self.forward.apply_points(x) - y).max())
        if residual > max(self.tol_mm, 1e-6):
            raise TransformError(
                f"inverse of {self.forward.source}: fixed-point iteration did not converge "
                f"(residual {residual:.3g} mm after {self.max_iter} iterations); the field is "
                "probably not invertible"
            )
        return x

    def jacobian(self, points_mm: Any) -> np.ndarray:
        x = self.apply_points(points_mm)
        return np.linalg.inv(self.forward.jacobian(x))

    def inverse(self) -> DisplacementFieldTransform:
        return self.forward


class CompositeTransform(Transform):
    """Transforms applied in order: ``transforms[0]`` first.

    The Jacobian is the chain rule ``J_n(p_{n-1}) ... J_1(p_0)``; the inverse is the
    reversed chain of inverses. A chain of affines is affine (:meth:`as_affine`).
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, CompositeTransform):
                flat.extend(list(t.transforms))
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TransformError(f"{t!r} is not a Transform")
        self.transforms: list[Transform] = flat
        self.is_affine = all(t.is_affine for t in flat)

    def __repr__(self) -> str:
        return f"CompositeTransform({self.transforms!r})"

    def __len__(self) -> int:
        return len(self.transforms)

    def _stages(self) -> list[Transform]:
        """The chain with runs of consecutive affines merged into one matrix each."""
        stages: list[Transform] = []
        for t in self.transforms:
            if t.is_affine and stages and stages[-1].is_affine:
                stages[-1] = AffineTransform(t.as_affine() @ stages[-1].as_affine())
            else:
                stages.append(t)
        return stages

    def apply_points(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        for t in self._stages():
            pts = t.apply_points(pts)
        return pts

    def jacobian(self, points_mm: Any) -> np.ndarray:
        pts = _as_points(points_mm)
        stages = self._stages()
        if not stages:
            return np.broadcast_to(np.eye(3), pts.shape[:-1] + (3, 3)).copy()
        jac = stages[0].jacobian(pts)
        pts = stages[0].apply_points(pts)
        for t in stages[1:]:
            jac = np.einsum("...ij,...jk->...ik", t.jacobian(pts), jac)
            pts = t.apply_points(pts)
        return jac

    def push_forward(self, vectors: Any, points_mm: Any) -> tuple[np.ndarray, np.ndarray]:
        pts = _as_points(points_mm)
        v = np.asarray(vectors, dtype=np.float64)
        for t in self._stages():
            v, pts = t.push_forward(v, pts)
        return v, pts

    def inverse(self) -> CompositeTransform:
        return CompositeTransform([t.inverse() for t in reversed(self.transforms)])

    def as_affine(self) -> np.ndarray:
        if not self.is_affine:
            raise TransformError("the transform chain holds a displacement field; it is not affine")
        m = np.eye(4)
        for t in self.transforms:
            m = t.as_affine() @ m
        return m


def compose(*transforms: Transform) -> CompositeTransform:
    """Chain transforms, applied in the order given (the first one first)."""
    return CompositeTransform(list(transforms))


# --------------------------------------------------------------------------- orientations


def reorient(vectors: Any, points_mm: Any, transform: Transform) -> np.ndarray:
    """Push orientation vectors through a transform: ``v' = J v / |J v|``.

    Parameters
    ----------
    vectors : array-like of shape (..., 3)
        Orientation vectors in the world frame of the input space (any length; axial).
    points_mm : array-like of shape (..., 3)
        Where each vector sits, world mm of the input space (broadcast with ``vectors``).
    transform : Transform

    Returns
    -------
    ndarray of shape (..., 3)
        Unit vectors in the world frame of the output space; zero where the input vector
        is zero.

    Examples
    --------
    >>> rot = AffineTransform(rotation_matrix([0, 0, 1], 90.0))
    >>> np.round(reorient([1.0, 0.0, 0.0], [0.0, 0.0, 0.0], rot), 12).tolist()
    [0.0, 1.0, 0.0]
    """
    v = np.asarray(vectors, dtype=np.float64)
    pts = _as_points(points_mm)
    if v.shape[-1:] != (3,):
        raise TransformError(f"vectors of shape {v.shape} must have 3 components on the last axis")
    out, _ = _push_broadcast(v, pts, transform)
    return _normalise(out)


def _normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def _push_broadcast(
    v: np.ndarray, pts: np.ndarray, transform: Transform
) -> tuple[np.ndarray, np.ndarray]:
    shape = np.broadcast_shapes(v.shape, pts.shape)
    return transform.push_forward(np.broadcast_to(v, shape), np.broadcast_to(pts, shape))


def vectors_ijk_to_world(vectors: Any, affine: Any) -> np.ndarray:
    """Vectors with components along an image's array axes to unit world vectors.

    ``normalise(A[:3, :3] @ (v / s))`` with ``s`` the voxel sizes (design.md), (..., 3).
    """
    a = _check_affine(affine, "affine")[:3, :3]
    s = np.linalg.norm(a, axis=0)
    w = (np.asarray(vectors, dtype=np.float64) / s) @ a.T
    n = np.linalg.norm(w, axis=-1, keepdims=True)
    return np.divide(w, n, out=np.zeros_like(w), where=n > 0)


def vectors_world_to_ijk(vectors: Any, affine: Any) -> np.ndarray:
    """Inverse of :func:`vectors_ijk_to_world`: ``normalise(s * A[:3, :3]^-1 @ w)``, (..., 3)."""
    a = _check_affine(affine, "affine")[:3, :3]
    s = np.linalg.norm(a, axis=0)
    v = (np.asarray(vectors, dtype=np.float64) @ np.linalg.inv(a).T) * s
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def to_dmri_space(
    vectors: Any,
    positions_mm: Any,
    transform: Transform,
    *,
    microscopy_affine: Any = None,
    grid_affine: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Map microscopy orientations and their positions into dMRI space, for binning.

    This is the non-affine path to a microscopy FOD: ``validation.fod.microscopy_fod``
    takes one affine (microscopy voxel -> dMRI world); when the chain holds a
    displacement field, map each chunk of structure-tensor vectors with this function
    and bin the returned positions / vectors on the dMRI grid instead (or, per chunk,
    use ``linearise(transform, chunk_centre)`` and call ``microscopy_fod`` with that
    local affine, which is exact to first order within the chunk).

    Parameters
    ----------
    vectors : array-like of shape (..., 3)
        Orientation vectors. World frame of the microscopy (mm), or, when
        ``microscopy_affine`` is given, components along the microscopy array axes (the
        structure-tensor output).
    positions_mm : array-like of shape (..., 3)
        Their positions: microscopy world mm, or voxel indices when
        ``microscopy_affine`` is given.
    transform : Transform
        Microscopy world mm -> dMRI world mm (a manifest level's ``transform``).
    microscopy_affine : array-like (4, 4), optional
        Microscopy voxel -> microscopy world mm (a level's ``voxel_to_world``).
    grid_affine : array-like (4, 4), optional
        dMRI voxel -> world mm. When given, the outputs are in the dMRI grid's frame:
        vectors with components along its array axes, positions as continuous voxel
        coordinates (round to bin).

    Returns
    -------
    vectors_out : ndarray (..., 3)
        Unit vectors (zero where the input is zero) in dMRI world (or ijk) frame.
    positions_out : ndarray (..., 3)
        dMRI world mm (or dMRI voxel coordinates).
    """
    v = np.asarray(vectors, dtype=np.float64)
    p = _as_points(positions_mm)
    if microscopy_affine is not None:
        m = _check_affine(microscopy_affine, "microscopy_affine")
        v = vectors_ijk_to_world(v, m)
        p = p @ m[:3, :3].T + m[:3, 3]
    jv, p_out = _push_broadcast(v, p, transform)
    v_out = _normalise(jv)
    if grid_affine is not None:
        g = _check_affine(grid_affine, "grid_affine")
        v_out = vectors_world_to_ijk(v_out, g)
        ginv = np.linalg.inv(g)
        p_out = p_out @ ginv[:3, :3].T + ginv[:3, 3]
    return v_out, p_out


def linearise(transform: Transform, point_mm: Any) -> AffineTransform:
    """First-order (affine) approximation of a transform around one point.

    ``y ~ J (x - x0) + T(x0)``; exact everywhere for affine transforms.
    """
    x0 = _as_points(point_mm).reshape(3)
    jac = transform.jacobian(x0)
    y0 = transform.apply_points(x0)
    m = np.eye(4)
    m[:3, :3] = jac
    m[:3, 3] = y0 - jac @ x0
    return AffineTransform(m, source=f"linearisation of {transform!r} at {x0.tolist()}")


def rotation_matrix(axis: Any, angle_deg: float) -> np.ndarray:
    """4x4 rotation by ``angle_deg`` (right-handed) about ``axis`` through the origin."""
    a = np.asarray(axis, dtype=np.float64)
    n = np.linalg.norm(a)
    if a.shape != (3,) or not n > 0:
        raise TransformError(f"rotation axis {a.tolist()} must be a non-zero 3-vector")
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(a / n * np.deg2rad(angle_deg)).as_matrix()
    return m


def random_rigid_perturbation(
    *,
    rotation_deg: float,
    translation_mm: float,
    centre_mm: Any = (0.0, 0.0, 0.0),
    rng: int | np.random.Generator | None = None,
) -> AffineTransform:
    """A random rigid transform for registration-uncertainty runs.

    Rotation about ``centre_mm`` by an angle drawn from N(0, rotation_deg) about a
    uniformly random axis, then a translation with i.i.d. N(0, translation_mm) components.
    Compose it after a level's transform to perturb it within its error.
    """
    rng = np.random.default_rng(rng)
    axis = rng.normal(size=3)
    angle = float(rng.normal(0.0, rotation_deg)) if rotation_deg > 0 else 0.0
    c = np.asarray(centre_mm, dtype=np.float64).reshape(3)
    rot = rotation_matrix(axis, angle)
    shift = np.eye(4)
    shift[:3, 3] = c
    unshift = np.eye(4)
    unshift[:3, 3] = -c
    trans = np.eye(4)
    if translation_mm > 0:
        trans[:3, 3] = rng.normal(0.0, translation_mm, size=3)
    return AffineTransform(trans @ shift @ rot @ unshift, source="random rigid perturbation")


def perturbed_transforms(
    transform: Transform,
    *,
    n: int,
    rotation_deg: float,
    translation_mm: float,
    centre_mm: Any = (0.0, 0.0, 0.0),
    rng: int | np.random.Generator | None = None,
) -> list[CompositeTransform]:
    """``n`` copies of ``transform``, each followed by its own random rigid perturbation.

    For registration uncertainty: recompute the scores with each and report their spread
    next to the score. ``centre_mm`` (output space) is the rotation centre, e.g. the
    centre of the microscopy in dMRI world. Each draw has its own child seed, so draw
    ``k`` is the same whatever ``n``.
    """
    if n < 1:
        raise TransformError(f"n = {n} perturbations; need at least 1")
    seeds = np.random.SeedSequence(
        np.random.default_rng(rng).integers(0, 2**63 - 1)
    ).spawn(n)
    return [
        compose(transform, random_rigid_perturbation(
            rotation_deg=rotation_deg, translation_mm=translation_mm, centre_mm=centre_mm,
            rng=np.random.default_rng(seed),
        ))
        for seed in seeds
    ]


# --------------------------------------------------------------------------- file formats


def _matrix_of(transform: Transform | Any, where: str) -> np.ndarray:
    if isinstance(transform, Transform):
        return transform.as_affine()
    return _check_affine(transform, where)


def read_matrix_txt(path: str | os.PathLike) -> AffineTransform:
    """A 4x4 (or 3x4) whitespace-separated text matrix, RAS mm, source -> target points."""
    path = Path(path)
    if not path.is_file():
        raise TransformError(f"{path}: transform file not found")
    try:
        rows = [
            [float(v) for v in line.replace(",", " ").split()]
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    except ValueError as exc:
        raise TransformError(f"{path}: not a text matrix of numbers ({exc})") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise TransformError(f"{path}: rows of different lengths; a 4x4 matrix is needed")
    m = np.array(rows, dtype=np.float64)
    return AffineTransform(m, source=str(path))


def write_matrix_txt(path: str | os.PathLike, transform: Transform | Any) -> Path:
    """Write a 4x4 text matrix (atomic: temporary sibling, then rename)."""
    m = _matrix_of(transform, str(path))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    np.savetxt(tmp, m, fmt="%.12g")
    os.replace(tmp, path)
    return path


_ITK_AFFINE_TYPES = re.compile(
    r"^(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3$"
)


def _itk_matrix(params: np.ndarray, fixed: np.ndarray, where: str) -> np.ndarray:
    if params.size != 12:
        raise TransformError(f"{where}: {params.size} ITK affine parameters, expected 12")
    if fixed.size not in (0, 3):
        raise TransformError(f"{where}: {fixed.size} ITK fixed parameters, expected 3")
    lin = params[:9].reshape(3, 3)
    trans = params[9:12]
    centre = fixed if fixed.size == 3 else np.zeros(3)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = trans + centre - lin @ centre
    return _LPS @ m @ _LPS  # LPS -> RAS on both sides


def read_itk_affine(path: str | os.PathLike) -> AffineTransform:
    """An ITK / ANTs affine (``.txt``/``.tfm`` text or ``.mat`` binary), as RAS mm.

    The result maps points of the registration's **fixed** image to its **moving**
    image (ITK's convention); use ``.inverse()`` (``invert = true`` in a manifest) for
    moving -> fixed.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise TransformError(f"{path}: transform file not found")
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        try:
            data = loadmat(str(path))
        except Exception as exc:
            raise TransformError(f"{path}: not an ITK/ANTs .mat file ({exc})") from None
        keys = [k for k in data if _ITK_AFFINE_TYPES.match(k)]
        if not keys:
            found = [k for k in data if not k.startswith("__")]
            raise TransformError(f"{path}: no 3-D ITK affine in the .mat file (found {found})")
        params = np.asarray(data[keys[0]], dtype=np.float64).reshape(-1)
        fixed = np.asarray(data.get("fixed", np.zeros(3)), dtype=np.float64).reshape(-1)
        return AffineTransform(_itk_matrix(params, fixed, where), source=where)
    text = path.read_text(errors="replace")
    if "Transform:" not in text:
        raise TransformError(f"{path}: not an ITK transform file (no 'Transform:' line)")
    kinds = re.findall(r"^\s*Transform:\s*(\S+)", text, flags=re.M)
    kinds = [k for k in kinds if not k.startswith("CompositeTransform")]
    if len(kinds) != 1:
        raise TransformError(f"{path}: holds {len(kinds)} transforms; one affine is supported")
    if not _ITK_AFFINE_TYPES.match(kinds[0]):
        raise TransformError(
            f"{path}: ITK transform type {kinds[0]!r} is not supported; use AffineTransform_*_3_3"
        )

    def _numbers(label: str) -> np.ndarray:
        match = re.search(rf"^\s*{label}:\s*(.*)$", text, flags=re.M)
        if match is None:
            return np.zeros(0)
        try:
            return np.array([float(v) for v in match.group(1).split()], dtype=np.float64)
        except ValueError:
            raise TransformError(
                f"{path}: {label} line holds a value that is not a number"
            ) from None

    params = _numbers("Parameters")
    if params.size == 0:
        raise TransformError(f"{path}: no 'Parameters:' line")
    return AffineTransform(_itk_matrix(params, _numbers("FixedParameters"), where), source=where)


def write_itk_affine(path: str | os.PathLike, transform: Transform | Any) -> Path:
    """Write an ITK text affine (``AffineTransform_double_3_3``) mapping fixed -> moving.

    ``transform`` is the RAS-mm map fixed -> moving (what :func:`read_itk_affine`
    returns); it is stored in LPS with a zero centre.
    """
    m = _matrix_of(transform, str(path))
    lps = _LPS @ m @ _LPS
    params = list(lps[:3, :3].reshape(-1)) + list(lps[:3, 3])
    text = (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(f'{p:.17g}' for p in params)}\nFixedParameters: 0 0 0\n"
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _lta_geometry(lines: list[str], start: int, where: str) -> np.ndarray | None:
    """vox2ras of an LTA ``src volume info`` / ``dst volume info`` block (None if invalid)."""
    info: dict[str, list[float]] = {}
    valid = True
    for line in lines[start + 1 : start + 12]:
        if "=" not in line:
            if line.strip().startswith(("src", "dst")):
                break
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "valid":
            valid = value.split()[0].strip() == "1"
        elif key in ("volume", "voxelsize", "xras", "yras", "zras", "c_ras"):
            try:
                info[key] = [float(v) for v in value.split()[:3]]
            except ValueError:
                raise TransformError(f"{where}: bad '{key}' in the LTA volume info") from None
    if not valid or not {"volume", "voxelsize", "xras", "yras", "zras", "c_ras"} <= set(info):
        return None
    mdc = np.array([info["xras"], info["yras"], info["zras"]]).T
    d = np.diag(info["voxelsize"])
    centre = np.asarray(info["volume"]) / 2.0  # FreeSurfer's centre voxel: dims / 2
    m = np.eye(4)
    m[:3, :3] = mdc @ d
    m[:3, 3] = np.asarray(info["c_ras"]) - mdc @ d @ centre
    return m


def read_lta(path: str | os.PathLike) -> AffineTransform:
    """A FreeSurfer LTA: type 1 (RAS to RAS) or type 0 (voxel to voxel, with geometry).

    The result maps scanner RAS points of the LTA's ``src`` volume to its ``dst`` volume.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise TransformError(f"{path}: transform file not found")
    lines = path.read_text(errors="replace").splitlines()
    kind = None
    for line in lines:
        m = re.match(r"^\s*type\s*=\s*(\d+)", line)
        if m:
            kind = int(m.group(1))
            break
    if kind is None:
        raise TransformError(f"{path}: no 'type = ' line; not a FreeSurfer LTA")
    if kind not in (0, 1):
        raise TransformError(
            f"{path}: LTA type {kind} is not supported; use type 1 (RAS2RAS) or 0 (VOX2VOX)"
        )
    start = next((i for i, line in enumerate(lines) if re.match(r"^\s*1\s+4\s+4\s*$", line)), None)
    if start is None:
        raise TransformError(f"{path}: no '1 4 4' matrix header in the LTA")
    try:
        mat = np.array([[float(v) for v in lines[start + 1 + r].split()[:4]] for r in range(4)])
    except (ValueError, IndexError):
        raise TransformError(f"{path}: the LTA matrix is not 4 rows of 4 numbers") from None
    mat = _check_affine(mat, where)
    if kind == 1:
        return AffineTransform(mat, source=where)
    src_i = next((i for i, ln in enumerate(lines) if ln.strip().startswith("src volume")), None)
    dst_i = next((i for i, ln in enumerate(lines) if ln.strip().startswith("dst volume")), None)
    src = _lta_geometry(lines, src_i, where) if src_i is not None else None
    dst = _lta_geometry(lines, dst_i, where) if dst_i is not None else None
    if src is None or dst is None:
        raise TransformError(
            f"{path}: LTA type 0 (VOX2VOX) needs valid src and dst volume info to become RAS2RAS"
        )
    return AffineTransform(dst @ mat @ np.linalg.inv(src), source=where)


def neuroglancer_affine(
    matrix: Any,
    output_dimensions: dict[str, Any],
    *,
    input_dimensions: Sequence[str] | None = None,
    world_axes: Sequence[str] = ("x", "y", "z"),
    where: str = "neuroglancer transform",
) -> AffineTransform:
    """A Neuroglancer layer transform as an affine between physical frames in mm.

    Neuroglancer (``coordinate_transform.ts``: ``transformBoundingBox``) maps an input
    coordinate ``c`` (in units of the source's own scale ``s``) to output coordinates
    ``o_t = sum_s M[t, s] c_s (s_s / g_t) + T_t`` with ``g`` the output scales. In
    physical units: ``g_t o_t = sum_s M[t, s] (s_s c_s) + g_t T_t``: the 3x3 part is
    unit-less and acts on physical coordinates, the translation is in output units.

    Parameters
    ----------
    matrix : array-like of shape (3, 4) or (4, 4)
        ``source.transform.matrix``: rows = output dimensions (in the order of
        ``output_dimensions``), columns = input dimensions, then the translation.
    output_dimensions : dict
        ``{"x": [1.0072e-05, "m"], ...}`` (``outputDimensions``).
    input_dimensions : sequence of str, optional
        Names of the input (source) dimensions in column order: the source's axes
        as Neuroglancer lists them (for OME-Zarr, the ``axes`` order). Default: the
        output dimension names.
    world_axes : sequence of 3 str
        Names of the world axes (x, y, z order) of both frames.

    Returns
    -------
    AffineTransform
        Source physical mm (components ``world_axes``) -> output physical mm.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4):
        m = m[:3]
    if m.shape != (3, 4):
        raise TransformError(f"{where}: matrix of shape {m.shape} is not 3x4")
    if not isinstance(output_dimensions, dict) or len(output_dimensions) != 3:
        raise TransformError(f"{where}: outputDimensions must name 3 dimensions")
    out_names = list(output_dimensions)
    in_names = list(input_dimensions) if input_dimensions is not None else out_names
    axes = list(world_axes)
    for label, names in (("output", out_names), ("input", in_names)):
        if sorted(names) != sorted(axes):
            raise TransformError(
                f"{where}: {label} dimensions {names} are not the spatial axes {axes}"
            )
    scales_mm = []
    for name in out_names:
        value = output_dimensions[name]
        try:
            scale, unit = float(value[0]), str(value[1])
        except (TypeError, ValueError, IndexError):
            raise TransformError(
                f"{where}: output dimension {name!r} = {value!r} is not [scale, unit]"
            ) from None
        scales_mm.append(scale * unit_to_mm(unit, where=f"{where}: output dimension {name!r}"))
    row_of = [out_names.index(a) for a in axes]
    col_of = [in_names.index(a) for a in axes]
    a = np.eye(4)
    a[:3, :3] = m[np.ix_(row_of, col_of)]
    a[:3, 3] = m[row_of, 3] * np.asarray(scales_mm)[row_of]
    return AffineTransform(a, source=where)


def read_itk_displacement_field(path: str | os.PathLike) -> DisplacementFieldTransform:
    """An ITK/ANTs displacement field NIfTI (LPS mm vectors) as a RAS transform.

    Accepts (X, Y, Z, 1, 3) (ITK's vector NIfTI) or (X, Y, Z, 3). The field is sampled
    on the *fixed* image grid and maps fixed -> moving points, like ITK affines.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise TransformError(f"{path}: displacement field file not found")
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise TransformError(f"{path}: cannot read the displacement field ({exc})") from None
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[-1] != 3:
        raise TransformError(
            f"{path}: displacement field of shape {data.shape} is not (X, Y, Z, 1, 3) "
            "or (X, Y, Z, 3)"
        )
    data = data * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS vectors
    unit = img.header.get_xyzt_units()[0]
    if unit == "micron":
        data = data * 1e-3
    elif unit == "meter":
        data = data * 1e3
    return DisplacementFieldTransform(data, img.affine, source=str(path))


_FORMATS = ("matrix", "itk", "lta", "displacement", "neuroglancer")


def load_transform(
    path: str | os.PathLike, *, format: str | None = None, invert: bool = False
) -> Transform:
    """Read a transform file, guessing its format from the name and content.

    Parameters
    ----------
    path : path-like
        ``.txt`` (a 4x4 matrix, or an ITK file when it starts with the Insight
        header), ``.tfm`` / ``.mat`` (ITK/ANTs affine), ``.lta`` (FreeSurfer),
        ``.nii`` / ``.nii.gz`` (ITK displacement field), ``.json`` (a Neuroglancer
        ``{"matrix", "outputDimensions"}`` transform).
    format : {"matrix", "itk", "lta", "displacement", "neuroglancer"}, optional
        Force a format.
    invert : bool
        Return the inverse (see the module docstring for which side is which).
    """
    path = Path(path)
    if not path.exists():
        raise TransformError(f"{path}: transform file not found")
    name = path.name.lower()
    if format is None:
        if name.endswith(".lta"):
            format = "lta"
        elif name.endswith((".nii", ".nii.gz")):
            format = "displacement"
        elif name.endswith((".mat", ".tfm")):
            format = "itk"
        elif name.endswith(".json"):
            format = "neuroglancer"
        elif name.endswith(".txt"):
            head = path.read_text(errors="replace")[:200]
            format = "itk" if "Insight Transform File" in head or "Transform:" in head else "matrix"
        else:
            raise TransformError(
                f"{path}: cannot tell the transform format from the name; give format = one of "
                f"{', '.join(_FORMATS)}"
            )
    t: Transform
    if format == "matrix":
        t = read_matrix_txt(path)
    elif format == "itk":
        t = read_itk_affine(path)
    elif format == "lta":
        t = read_lta(path)
    elif format == "displacement":
        t = read_itk_displacement_field(path)
    elif format == "neuroglancer":
        import json

        try:
            spec = json.loads(path.read_text())
            t = neuroglancer_affine(
                spec["matrix"], spec["outputDimensions"],
                input_dimensions=spec.get("inputDimensions"), where=str(path),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TransformError(f"{path}: not a Neuroglancer transform JSON ({exc!r})") from None
    else:
        raise TransformError(
            f"{path}: transform format {format!r} is unknown; use one of {', '.join(_FORMATS)}"
        )
    return t.inverse() if invert else t
