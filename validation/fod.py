"""Microscopy fibre orientation distributions (FODs) on a dMRI grid.

For every voxel of the target (dMRI) grid, the structure-tensor orientations of the
microscopy voxels whose centres fall inside it (through the microscopy voxel -> dMRI
world -> dMRI voxel mapping), weighted by the tensor anisotropy and a tissue mask, form
an orientation distribution. Its even spherical-harmonic (SH) expansion is computed
exactly, without binning: the SH projection of a sum of axial deltas is the weighted sum
of the SH basis at the directions, and on the sphere the even SH up to order L span the
same space as the homogeneous monomials of degree L, so each microscopy voxel only adds
its (L + 1)(L + 2) / 2 monomials to its target voxel; one fixed matrix maps the sums to
dipy's ``descoteaux07`` basis (``legacy=False``). The field is streamed chunk by chunk:
only one chunk per worker and the per-target sums are in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numba
import numpy as np

from validation.errors import UserError

__all__ = ["MicroscopyFOD", "microscopy_fod", "sh_basis_metadata"]

log = logging.getLogger(__name__)


def sh_basis_metadata(sh_order_max: int) -> dict[str, Any]:
    """JSON-sidecar fields describing the SH basis of an FOD volume (design.md, BEP016)."""
    return {
        "OrientationEncoding": {
            "Type": "sh",
            "SphericalHarmonicsBasis": "descoteaux07",
            "Legacy": False,
            "SphericalHarmonicsDegree": int(sh_order_max),
            "Reference": "ijk",
        },
        "sh_basis": "descoteaux07",
        "legacy": False,
        "sh_order_max": int(sh_order_max),
        "frame": "ijk",
    }


@dataclass(frozen=True)
class MicroscopyFOD:
    """A microscopy FOD on a target grid.

    Attributes
    ----------
    sh : ndarray of shape (X, Y, Z, n_coeffs), float32
        Even SH coefficients, dipy ``descoteaux07`` ``legacy=False``, in the target
        grid's voxel (ijk) frame; the ODF integrates to 1 over the sphere where any
        microscopy voxel contributed, all zero elsewhere.
    peaks : ndarray of shape (X, Y, Z, K, 3), float32
        Unit peak directions (ijk frame), strongest first; zero rows where absent.
    odi : ndarray of shape (X, Y, Z), float32
        Orientation dispersion index (:func:`metrics.odi_from_sh`, NODDI/Watson); NaN
        where no microscopy voxel contributed.
    count : ndarray of shape (X, Y, Z), int64
        Microscopy voxels that contributed (inside the mask, weight > 0, non-zero vector).
    weight : ndarray of shape (X, Y, Z), float64
        Sum of their weights.
    sh_order_max : int
    """

    sh: np.ndarray
    peaks: np.ndarray
    odi: np.ndarray
    count: np.ndarray
    weight: np.ndarray
    sh_order_max: int

    def odf(self, sphere: Any) -> np.ndarray:
        """ODF values on ``sphere`` vertices: (X, Y, Z, V) float64."""
        from dipy.reconst.shm import sh_to_sf

        return sh_to_sf(self.sh.astype(np.float64), sphere, sh_order_max=self.sh_order_max,
                        basis_type="descoteaux07", legacy=False)


def monomial_exponents(degree: int) -> np.ndarray:
    """(n, 3) int exponents (a, b, c), a + b + c = degree, in a fixed order."""
    return np.array(
        [(a, b, degree - a - b) for a in range(degree, -1, -1) for b in range(degree - a, -1, -1)],
        dtype=np.int64,
    )


@lru_cache(maxsize=8)
def monomials_to_sh(sh_order_max: int) -> np.ndarray:
    """Matrix (n_monomials, n_coeffs) with ``Y(u) = monomials(u) @ matrix`` on the sphere.

    Exact (to float64 rounding) because, restricted to unit vectors, the even SH of
    order <= L and the degree-L homogeneous monomials span the same space.
    """
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    exps = monomial_exponents(sh_order_max)
    pts = np.random.default_rng(12345).normal(size=(4 * len(exps) + 64, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    mono = np.prod(pts[:, None, :] ** exps[None, :, :], axis=-1)
    _, theta, phi = cart2sphere(pts[:, 0], pts[:, 1], pts[:, 2])
    basis, _, _ = real_sh_descoteaux(sh_order_max, theta, phi, legacy=False)
    matrix, *_ = np.linalg.lstsq(mono, basis, rcond=None)
    residual = np.abs(mono @ matrix - basis).max()
    if residual > 1e-8:  # pragma: no cover - a broken dipy or numpy
        raise RuntimeError(f"monomial-to-SH fit residual {residual:g} for order {sh_order_max}")
    return matrix


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _accumulate_block(
    vectors, weights, mask, origin, to_target, direction, lo, acc, exps
):  # pragma: no cover - compiled
    """Add one block's weighted monomials into ``acc`` (n_targets_box, n_mono + 2).

    ``vectors`` (I, J, K, 3), ``weights`` (I, J, K), ``mask`` (I, J, K) bool for the
    block whose first voxel is ``origin`` in the full volume; ``to_target`` (3, 4) maps
    microscopy voxel indices to target voxel coordinates; ``direction`` (3, 3) maps a
    microscopy vector to the target ijk frame; ``lo``/``acc`` shape: the target box.
    """
    ni, nj, nk = weights.shape
    bx, by, bz = acc.shape[0], acc.shape[1], acc.shape[2]
    n_mono = exps.shape[0]
    degree = exps[0, 0]
    px = np.empty(degree + 1)
    py = np.empty(degree + 1)
    pz = np.empty(degree + 1)
    for i in range(ni):
        gi = origin[0] + i
        for j in range(nj):
            gj = origin[1] + j
            for k in range(nk):
                w = np.float64(weights[i, j, k])
                if not mask[i, j, k] or not (w > 0.0):
                    continue
                v0 = np.float64(vectors[i, j, k, 0])
                v1 = np.float64(vectors[i, j, k, 1])
                v2 = np.float64(vectors[i, j, k, 2])
                u0 = direction[0, 0] * v0 + direction[0, 1] * v1 + direction[0, 2] * v2
                u1 = direction[1, 0] * v0 + direction[1, 1] * v1 + direction[1, 2] * v2
                u2 = direction[2, 0] * v0 + direction[2, 1] * v1 + direction[2, 2] * v2
                nn = u0 * u0 + u1 * u1 + u2 * u2
                if not (nn > 0.0):
                    continue
                inv = 1.0 / np.sqrt(nn)
                u0 *= inv
                u1 *= inv
                u2 *= inv
                gk = origin[2] + k
                t0 = (
                    to_target[0, 0] * gi + to_target[0, 1] * gj + to_target[0, 2] * gk
                    + to_target[0, 3]
                )
                t1 = (
                    to_target[1, 0] * gi + to_target[1, 1] * gj + to_target[1, 2] * gk
                    + to_target[1, 3]
                )
                t2 = (
                    to_target[2, 0] * gi + to_target[2, 1] * gj + to_target[2, 2] * gk
                    + to_target[2, 3]
                )
                a = int(np.floor(t0 + 0.5)) - lo[0]
                b = int(np.floor(t1 + 0.5)) - lo[1]
                c = int(np.floor(t2 + 0.5)) - lo[2]
                if a < 0 or b < 0 or c < 0 or a >= bx or b >= by or c >= bz:
                    continue
                px[0] = 1.0
                py[0] = 1.0
                pz[0] = 1.0
                for e in range(1, degree + 1):
                    px[e] = px[e - 1] * u0
                    py[e] = py[e - 1] * u1
                    pz[e] = pz[e - 1] * u2
                row = acc[a, b, c]
                for m in range(n_mono):
                    row[m] += w * px[exps[m, 0]] * py[exps[m, 1]] * pz[exps[m, 2]]
                row[n_mono] += w
                row[n_mono + 1] += 1.0


def _column_norms(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _check_affine(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise UserError(f"{name} must be a finite 4x4 matrix, got shape {arr.shape}")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12:
        raise UserError(f"{name} is singular")
    return arr


def _target_box(shape, to_target, grid_shape) -> tuple[np.ndarray, np.ndarray]:
    """Target voxel index box [lo, hi) reached by the microscopy voxel centres."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
         for k in (0, shape[2] - 1)]
    )
    pts = corners @ to_target.T
    lo = np.floor(pts.min(axis=0) + 0.5).astype(np.int64)
    hi = np.floor(pts.max(axis=0) + 0.5).astype(np.int64) + 1
    lo = np.clip(lo, 0, np.asarray(grid_shape))
    hi = np.clip(hi, 0, np.asarray(grid_shape))
    return lo, np.maximum(hi, lo)


def _as_dask(x: Any, chunks: Any) -> Any:
    import dask.array as da

    if type(x).__module__.startswith("dask."):
        return x
    return da.from_array(np.asarray(x), chunks=chunks)


def microscopy_fod(
    vectors: Any,
    weights: Any,
    *,
    microscopy_affine: Any,
    grid_shape: tuple[int, int, int],
    grid_affine: Any,
    sh_order_max: int = 8,
    mask: Any = None,
    spacing: Any = None,
    npeaks: int = 3,
    relative_peak_threshold: float = 0.25,
    min_separation_angle: float = 25.0,
    smoothing_deg: float = 0.0,
    chunks: int | tuple[int, int, int] = 128,
    scheduler: Any = None,
    progress: bool = False,
) -> MicroscopyFOD:
    """Microscopy FOD of structure-tensor orientations on a target (dMRI) grid.

    Parameters
    ----------
    vectors : ndarray or dask array of shape (I, J, K, 3)
        Fibre orientations (unit or zero vectors) in physical space, components along
        the microscopy array axes (as :func:`~validation.orientation.
        structure_tensor_orientation` returns them).
    weights : ndarray or dask array of shape (I, J, K)
        Non-negative weight per voxel, typically the anisotropy ``(l2 - l3) / l1``.
    microscopy_affine : (4, 4) array
        Microscopy voxel index -> target world coordinates (mm).
    grid_shape : tuple of 3 int
        Shape (X, Y, Z) of the target grid.
    grid_affine : (4, 4) array
        Target voxel index -> world (mm).
    sh_order_max : int
        Even maximum SH order (default 8, 45 coefficients).
    mask : ndarray or dask array of shape (I, J, K), bool, optional
        Voxels to count (tissue, not vessel); default all.
    spacing : sequence of 3 float, optional
        Microscopy voxel size in the affine's unit (mm); default the column norms of
        ``microscopy_affine`` (exact unless the affine shears).
    npeaks, relative_peak_threshold, min_separation_angle : int, float, float
        Peak extraction (dipy ``peak_directions`` on a ~1.9-degree sphere).
    smoothing_deg : float
        Optional angular smoothing of the ODF: SH order l scaled by
        ``exp(-l (l + 1) s**2 / 2)``, s in radians (0 = exact delta projection).
    chunks : int or tuple of 3 int
        Chunking of numpy inputs (dask inputs keep theirs).
    scheduler : optional
        dask scheduler for the per-chunk tasks (default: dask's current one).
    progress : bool
        Log progress (INFO) every few chunks.

    Returns
    -------
    MicroscopyFOD
        ``.sh``, ``.peaks``, ``.odi``, ``.count``, ``.weight``.

    Notes
    -----
    A microscopy voxel belongs to the target voxel whose centre is nearest to its own
    centre (``round`` of the mapped coordinates). Vectors are mapped to the target ijk
    frame by ``u = diag(s_t) G^-1 A diag(1 / s_m) v`` (normalised), with A, G the 3x3
    parts of the microscopy and grid affines, and s_m, s_t their voxel sizes.
    """
    import dask

    if not isinstance(sh_order_max, int | np.integer) or sh_order_max < 0 or sh_order_max % 2:
        raise UserError(f"sh_order_max {sh_order_max!r} must be an even non-negative integer")
    vshape = tuple(vectors.shape)
    if len(vshape) != 4 or vshape[3] != 3:
        raise UserError(f"vectors of shape {vshape} must be (I, J, K, 3)")
    if tuple(weights.shape) != vshape[:3]:
        raise UserError(f"weights of shape {tuple(weights.shape)} do not match vectors {vshape}")
    if mask is not None and tuple(mask.shape) != vshape[:3]:
        raise UserError(f"mask of shape {tuple(mask.shape)} does not match vectors {vshape}")
    grid_shape = tuple(int(s) for s in grid_shape)  # type: ignore[assignment]
    if len(grid_shape) != 3 or min(grid_shape) <= 0:
        raise UserError(f"grid_shape {grid_shape!r} must be 3 positive integers")
    micro = _check_affine(microscopy_affine, "microscopy_affine")
    grid = _check_affine(grid_affine, "grid_affine")
    s_m = (
        _column_norms(micro) if spacing is None else np.asarray(spacing, dtype=np.float64)
    )
    if s_m.shape != (3,) or not np.all(s_m > 0):
        raise UserError(f"spacing {spacing!r} must be 3 positive numbers")
    s_t = _column_norms(grid)
    to_target = (np.linalg.inv(grid) @ micro)[:3]
    direction = np.diag(s_t) @ np.linalg.inv(grid[:3, :3]) @ micro[:3, :3] @ np.diag(1.0 / s_m)

    lo, hi = _target_box(vshape[:3], to_target, grid_shape)
    box = tuple(int(v) for v in hi - lo)
    exps = monomial_exponents(sh_order_max)
    n_mono = len(exps)
    total = np.zeros(box + (n_mono + 2,), dtype=np.float64)

    chunk3 = (chunks,) * 3 if isinstance(chunks, int | np.integer) else tuple(chunks)
    vec_d = _as_dask(vectors, chunk3 + (3,))
    vec_d = vec_d.rechunk(vec_d.chunks[:3] + ((3,),))
    w_d = _as_dask(weights, chunk3).rechunk(vec_d.chunks[:3])
    m_d = None if mask is None else _as_dask(mask, chunk3).rechunk(vec_d.chunks[:3])
    # unoptimised: fusing each array on its own would compute a shared upstream chunk twice
    vec_blocks = vec_d.to_delayed(optimize_graph=False)
    w_blocks = w_d.to_delayed(optimize_graph=False)
    m_blocks = None if m_d is None else m_d.to_delayed(optimize_graph=False)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in vec_d.chunks[:3]]

    def block_moments(v, w, m, origin):
        v = np.ascontiguousarray(v)
        w = np.ascontiguousarray(w, dtype=np.float32)
        m = np.ones(w.shape, dtype=bool) if m is None else np.ascontiguousarray(m, dtype=bool)
        # the block's own target box keeps the partial sums small
        corners_to = to_target.copy()
        corners_to[:, 3] += to_target[:, :3] @ np.asarray(origin, dtype=np.float64)
        blo, bhi = _target_box(w.shape, corners_to, grid_shape)
        blo = np.maximum(blo, lo)
        bhi = np.minimum(np.maximum(bhi, blo), hi)
        acc = np.zeros(tuple(int(x) for x in bhi - blo) + (n_mono + 2,), dtype=np.float64)
        if acc.size:
            _accumulate_block(
                v, w, m, np.asarray(origin, dtype=np.int64), to_target, direction,
                blo.astype(np.int64), acc, exps,
            )
        return blo, acc

    tasks = []
    nb = vec_blocks.shape[:3]
    for bi in range(nb[0]):
        for bj in range(nb[1]):
            for bk in range(nb[2]):
                origin = (int(starts[0][bi]), int(starts[1][bj]), int(starts[2][bk]))
                mb = None if m_blocks is None else m_blocks[bi, bj, bk]
                tasks.append(
                    dask.delayed(block_moments)(
                        vec_blocks[bi, bj, bk, 0], w_blocks[bi, bj, bk], mb, origin
                    )
                )
    def add(result: tuple[np.ndarray, np.ndarray]) -> None:
        blo, acc = result
        if acc.size:
            off = blo - lo
            sl = tuple(
                slice(int(o), int(o) + s) for o, s in zip(off, acc.shape[:3], strict=True)
            )
            total[sl] += acc

    client = _distributed_client(scheduler)
    if client is not None:
        from distributed import as_completed

        # futures stream back as they finish: only small partial sums are kept
        for i, future in enumerate(as_completed(client.compute(tasks)), 1):
            add(future.result())
            if progress and i % 16 == 0:
                log.info("microscopy FOD: %d / %d chunks", i, len(tasks))
    else:
        # batches bound the chunks in flight (the local scheduler would otherwise read
        # ahead); neighbouring input chunks are re-read across batches, which costs less
        # than holding them. No graph optimisation: fusing the vectors and the weights
        # separately would compute their shared upstream chunk twice.
        batch = max(2, 2 * _local_threads())
        for start in range(0, len(tasks), batch):
            for result in dask.compute(*tasks[start : start + batch],
                                       scheduler=scheduler or "threads", optimize_graph=False):
                add(result)
    if progress:
        log.info("microscopy FOD: %d chunks", len(tasks))

    matrix = monomials_to_sh(sh_order_max)
    n_coef = matrix.shape[1]
    sh = np.zeros(grid_shape + (n_coef,), dtype=np.float32)
    count = np.zeros(grid_shape, dtype=np.int64)
    weight = np.zeros(grid_shape, dtype=np.float64)
    inner = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    wsum = total[..., n_mono]
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = (total[..., :n_mono] @ matrix) / wsum[..., None]
    coef = np.where(wsum[..., None] > 0, coef, 0.0)
    if smoothing_deg > 0:
        from dipy.reconst.shm import sph_harm_ind_list

        _, l_values = sph_harm_ind_list(sh_order_max)
        s = np.deg2rad(smoothing_deg)
        coef = coef * np.exp(-l_values * (l_values + 1) * s * s / 2.0)
    sh[inner] = coef
    count[inner] = total[..., n_mono + 1].round().astype(np.int64)
    weight[inner] = wsum
    peaks = _sh_peaks(sh, count > 0, sh_order_max, npeaks, relative_peak_threshold,
                      min_separation_angle)
    from metrics import odi_from_sh

    if sh_order_max >= 2:
        odi = odi_from_sh(sh.astype(np.float64)).astype(np.float32)
        odi[count == 0] = np.nan
    else:
        odi = np.full(grid_shape, np.nan, dtype=np.float32)
    return MicroscopyFOD(sh=sh, peaks=peaks, odi=odi, count=count, weight=weight,
                         sh_order_max=int(sh_order_max))


def _local_threads() -> int:
    import os

    import dask

    return int(dask.config.get("num_workers", None) or os.cpu_count() or 2)


def _distributed_client(scheduler: Any) -> Any:
    """The distributed Client when ``scheduler`` is one, else None."""
    if scheduler is None or isinstance(scheduler, str):
        return None
    return scheduler if hasattr(scheduler, "compute") and hasattr(scheduler, "scheduler") else None


@lru_cache(maxsize=1)
def _peak_sphere():
    from dipy.core.sphere import HemiSphere
    from dipy.data import get_sphere

    return HemiSphere.from_sphere(get_sphere(name="repulsion724").subdivide(n=2))


def _sh_peaks(sh, where, sh_order_max, npeaks, rel, min_sep) -> np.ndarray:
    from dipy.direction import peak_directions
    from dipy.reconst.shm import sh_to_sf_matrix

    sphere = _peak_sphere()
    peaks = np.zeros(sh.shape[:3] + (npeaks, 3), dtype=np.float32)
    idx = np.argwhere(where)
    if not len(idx) or sh_order_max < 2:
        return peaks
    b_matrix, _ = sh_to_sf_matrix(sphere, sh_order_max=sh_order_max, basis_type="descoteaux07",
                                  legacy=False, return_inv=False), None
    odfs = sh[tuple(idx.T)].astype(np.float64) @ b_matrix
    for (x, y, z), odf in zip(idx, odfs, strict=True):
        dirs, _, _ = peak_directions(odf, sphere, relative_peak_threshold=rel,
                                     min_separation_angle=min_sep)
        n = min(npeaks, len(dirs))
        peaks[x, y, z, :n] = dirs[:n]
    return peaks
