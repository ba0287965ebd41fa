"""Tractography with dipy: deterministic and probabilistic local tracking from a model's
SH (or peaks), streamline voxelisation, TRK/TRX output, and a reference tractogram through a
microscopy orientation field.

All streamlines are in dMRI voxel coordinates (voxel centres at integer indices, the
frame of the peaks and SH), which is what the truth bundles of the phantoms use.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

__all__ = [
    "TrackingResult",
    "bundle_overlap",
    "peaks_to_sh",
    "save_tractogram",
    "seeds_from_mask",
    "streamline_voxels",
    "track",
    "track_and_score",
    "track_microscopy",
    "track_vector_field",
]

log = logging.getLogger(__name__)

METHODS = ("deterministic", "probabilistic")
STOPPING = ("mask", "gfa")


@dataclass
class TrackingResult:
    """Streamlines and how they were made.

    Attributes
    ----------
    streamlines : list of ndarray, each (n_i, 3) float64
        dMRI voxel coordinates.
    params : dict
        Method, step size (voxels and mm when known), maximum angle, seeds per voxel,
        stopping rule and threshold, number of seeds, random seed: recorded in the run.
    """

    streamlines: list[np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)


def _rng_int(rng: int | np.random.Generator | None) -> int:
    return int(np.random.default_rng(rng).integers(0, 2**31 - 1))


def seeds_from_mask(
    mask: np.ndarray,
    *,
    seeds_per_voxel: int = 1,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Seed points uniformly distributed within each voxel of ``mask``.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    seeds_per_voxel : int
    rng : int, Generator or None

    Returns
    -------
    ndarray, shape (n_voxels * seeds_per_voxel, 3)
        Voxel coordinates; each seed lies within +-0.5 of its voxel's centre.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise UserError(f"seed mask must be 3-D, got shape {mask.shape}")
    if seeds_per_voxel < 1:
        raise UserError(f"seeds_per_voxel must be >= 1, got {seeds_per_voxel}")
    gen = np.random.default_rng(rng)
    centres = np.repeat(np.argwhere(mask).astype(np.float64), seeds_per_voxel, axis=0)
    return centres + gen.uniform(-0.5, 0.5, size=centres.shape)


def _gfa_from_sh(sh: np.ndarray, sh_order_max: int) -> np.ndarray:
    from dipy.data import default_sphere
    from dipy.reconst.odf import gfa
    from dipy.reconst.shm import sh_to_sf

    odf = sh_to_sf(sh, default_sphere, sh_order_max=sh_order_max, basis_type="descoteaux07",
                   legacy=False)
    return np.nan_to_num(gfa(odf))


def _order_from_sh(sh: np.ndarray) -> int:
    n = sh.shape[-1]
    for order in range(0, 40, 2):
        if (order + 1) * (order + 2) // 2 == n:
            return order
    raise UserError(f"SH has {n} coefficients, not an even-order count (1, 6, 15, 28, 45...)")


def peaks_to_sh(peaks: np.ndarray, *, sh_order_max: int = 8) -> np.ndarray:
    """A sharp fODF from peaks: the sum of order-``sh_order_max`` Dirac deltas at the peaks.

    Parameters
    ----------
    peaks : ndarray, shape (..., K, 3)
        Zero rows are absent peaks.

    Returns
    -------
    ndarray, shape (..., n_coeffs)
        dipy ``descoteaux07``, ``legacy=False``.
    """
    from dipy.reconst.shm import real_sh_descoteaux

    peaks = np.asarray(peaks, dtype=np.float64)
    flat = peaks.reshape(-1, 3)
    norms = np.linalg.norm(flat, axis=1)
    unit = flat / np.where(norms > 0, norms, 1.0)[:, None]
    theta = np.arccos(np.clip(unit[:, 2], -1, 1))
    phi = np.arctan2(unit[:, 1], unit[:, 0])
    ylm, _, _ = real_sh_descoteaux(sh_order_max, theta, phi, legacy=False)
    ylm *= (norms > 0)[:, None]
    return ylm.reshape(peaks.shape[:-1] + (-1,)).sum(axis=-2)


def track(
    *,
    mask: np.ndarray,
    sh: np.ndarray | None = None,
    peaks: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
    seed_mask: np.ndarray | None = None,
    seeds_per_voxel: int = 1,
    method: str = "deterministic",
    step_size: float = 0.5,
    max_angle_deg: float = 30.0,
    stopping: str = "mask",
    gfa_threshold: float = 0.1,
    min_length: float = 2.0,
    max_points: int = 1000,
    voxel_size_mm: Any = None,
    rng: int | np.random.Generator | None = None,
    _source: str = "sh",
    _seeds_per_voxel: int | None = None,
) -> TrackingResult:
    """Local tracking with dipy from SH (deterministic or probabilistic) or peaks.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        Tracking domain; also the stopping rule when ``stopping="mask"``.
    sh : ndarray, shape (X, Y, Z, n_coeffs), optional
        fODF in dipy ``descoteaux07``, ``legacy=False``; the direction source when given.
    peaks : ndarray, shape (X, Y, Z, K, 3), optional
        Used when ``sh`` is None: turned into a sharp fODF (:func:`peaks_to_sh`) and
        tracked like SH.
    seeds : ndarray, shape (n, 3), optional
        Seed points in voxel coordinates; default: ``seeds_per_voxel`` random points in each
        voxel of ``seed_mask`` (default ``mask``).
    method : {"deterministic", "probabilistic"}
    step_size : float
        Voxels.
    max_angle_deg : float
        Largest turn between two steps, degrees.
    stopping : {"mask", "gfa"}
        Stop when leaving ``mask`` or where the GFA of the fODF is below ``gfa_threshold``
        (within ``mask``).
    min_length : float
        Shorter streamlines (voxels) are dropped.
    max_points : int
        Longest streamline in points per direction.
    voxel_size_mm : sequence of 3 float, optional
        Recorded as the step in mm when isotropic.
    rng : int, Generator or None
        Seeds the seed positions and probabilistic tracking.

    Returns
    -------
    TrackingResult
    """
    from dipy.data import default_sphere
    from dipy.direction import DeterministicMaximumDirectionGetter, ProbabilisticDirectionGetter
    from dipy.tracking.local_tracking import LocalTracking
    from dipy.tracking.stopping_criterion import (
        BinaryStoppingCriterion,
        ThresholdStoppingCriterion,
    )

    if method not in METHODS:
        raise UserError(f"tracking method {method!r} is invalid; use one of {', '.join(METHODS)}")
    if stopping not in STOPPING:
        raise UserError(f"stopping {stopping!r} is invalid; use one of {', '.join(STOPPING)}")
    if not 0 < max_angle_deg <= 90:
        raise UserError(f"max_angle_deg must be in (0, 90], got {max_angle_deg}")
    if not step_size > 0:
        raise UserError(f"step_size must be positive (voxels), got {step_size}")
    mask = np.asarray(mask, dtype=bool)
    gen = np.random.default_rng(rng)
    if seeds is None:
        seeds = seeds_from_mask(mask if seed_mask is None else seed_mask,
                                seeds_per_voxel=seeds_per_voxel, rng=gen)
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    random_seed = _rng_int(gen)

    if sh is not None:
        sh = np.ascontiguousarray(np.where(mask[..., None], sh, 0.0), dtype=np.float64)
        if sh.shape[:3] != mask.shape:
            raise UserError(f"SH has spatial shape {sh.shape[:3]}; mask {mask.shape}")
        order = _order_from_sh(sh)
        getter_cls = (DeterministicMaximumDirectionGetter if method == "deterministic"
                      else ProbabilisticDirectionGetter)
        getter = getter_cls.from_shcoeff(
            sh, max_angle=max_angle_deg, sphere=default_sphere, basis_type="descoteaux07",
            legacy=False,
        )
        source = _source
    elif peaks is not None:
        peaks = np.asarray(peaks, dtype=np.float64)
        if peaks.shape[:3] != mask.shape:
            raise UserError(f"peaks have spatial shape {peaks.shape[:3]}; mask {mask.shape}")
        return track(
            mask=mask, sh=peaks_to_sh(peaks), seeds=seeds, method=method,
            step_size=step_size, max_angle_deg=max_angle_deg, stopping=stopping,
            gfa_threshold=gfa_threshold, min_length=min_length, max_points=max_points,
            voxel_size_mm=voxel_size_mm, rng=gen, _source="peaks",
            _seeds_per_voxel=seeds_per_voxel,
        )
    else:
        raise UserError("tracking needs sh or peaks")

    if stopping == "mask":
        criterion = BinaryStoppingCriterion(mask.astype(np.uint8))
    else:
        if sh is None:
            raise UserError("stopping='gfa' needs SH")
        gfa_map = np.where(mask, _gfa_from_sh(sh, order), 0.0)
        criterion = ThresholdStoppingCriterion(gfa_map, float(gfa_threshold))

    generator = LocalTracking(
        getter, criterion, seeds, np.eye(4), step_size, maxlen=max_points,
        return_all=False, random_seed=random_seed,
    )
    streamlines = []
    for s in generator:
        s = np.asarray(s, dtype=np.float64)
        if len(s) > 1 and np.sum(np.linalg.norm(np.diff(s, axis=0), axis=1)) >= min_length:
            streamlines.append(s)
    params: dict[str, Any] = {
        "method": method,
        "source": source,
        "direction_getter": type(getter).__name__,
        "sphere": "dipy default_sphere (repulsion724 hemisphere, 362 vertices)",
        "step_size_vox": float(step_size),
        "max_angle_deg": float(max_angle_deg),
        "stopping": stopping,
        "gfa_threshold": float(gfa_threshold) if stopping == "gfa" else None,
        "seeds_per_voxel": int(_seeds_per_voxel or seeds_per_voxel),
        "n_seeds": int(len(seeds)),
        "n_streamlines": len(streamlines),
        "min_length_vox": float(min_length),
        "random_seed": random_seed,
    }
    if voxel_size_mm is not None:
        vs = np.asarray(voxel_size_mm, dtype=float)
        if np.allclose(vs, vs[0]):
            params["step_size_mm"] = float(step_size * vs[0])
    return TrackingResult(streamlines, params)


def streamline_voxels(
    streamlines: list[np.ndarray], shape: tuple[int, int, int], *, sampling: float = 0.1
) -> np.ndarray:
    """Voxels that streamline segments pass through (not only their points).

    Each segment is sampled every ``sampling`` voxels (endpoints included) and the samples
    are rounded to the nearest voxel centre; samples outside the grid are ignored.

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    out = np.zeros(shape, dtype=bool)
    for s in streamlines:
        s = np.asarray(s, dtype=np.float64)
        if len(s) == 0:
            continue
        pts = [s[:1]]
        if len(s) > 1:
            seg = np.diff(s, axis=0)
            n = np.maximum(1, np.ceil(np.linalg.norm(seg, axis=1) / sampling).astype(int))
            for a, d, k in zip(s[:-1], seg, n, strict=True):
                t = (np.arange(1, k + 1) / k)[:, None]
                pts.append(a + t * d)
        idx = np.rint(np.concatenate(pts)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        out[tuple(idx[ok].T)] = True
    return out


def _endpoint_in(roi: np.ndarray, point: np.ndarray) -> bool:
    idx = np.rint(point).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(roi.shape)):
        return False
    return bool(roi[tuple(idx)])


def bundle_overlap(
    streamlines: list[np.ndarray], bundle: Any, shape: tuple[int, int, int]
) -> dict[str, float]:
    """Overlap scores of one truth bundle with the streamlines that join its two ROIs.

    A streamline counts for the bundle when one end lies in ``bundle.head_roi`` and the
    other in ``bundle.tail_roi``. With A the bundle mask and B the voxels those streamlines
    pass through: OL = |A & B| / |A|, OR_gt = |B \\ A| / |A|, OR_vs = |B \\ A| / |B|
    (0 when B is empty), F1 = Dice(A, B). A quick check of one bundle;
    ``metrics.tractometer`` is the full scorer (VS/IS/IC/NC, limits) that runs use.

    Returns
    -------
    dict with ol, or_gt, or_vs, f1, n_valid
    """
    head = np.asarray(bundle.head_roi, bool)
    tail = np.asarray(bundle.tail_roi, bool)
    valid = [
        s for s in streamlines
        if (_endpoint_in(head, s[0]) and _endpoint_in(tail, s[-1]))
        or (_endpoint_in(tail, s[0]) and _endpoint_in(head, s[-1]))
    ]
    scores = _overlap(np.asarray(bundle.mask, bool), streamline_voxels(valid, shape))
    scores["n_valid"] = float(len(valid))
    return scores


def _overlap(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """OL, OR_gt, OR_vs and F1 of reference voxels ``a`` and streamline voxels ``b``."""
    inter = int((a & b).sum())
    outside = int((b & ~a).sum())
    na, nb = int(a.sum()), int(b.sum())
    return {
        "ol": inter / na if na else float("nan"),
        "or_gt": outside / na if na else float("nan"),
        "or_vs": outside / nb if nb else 0.0,
        "f1": 2 * inter / (na + nb) if na + nb else float("nan"),
    }


def save_tractogram(
    streamlines: list[np.ndarray],
    path: str | os.PathLike[str],
    *,
    affine: np.ndarray,
    shape: tuple[int, int, int],
) -> Path:
    """Write streamlines (dMRI voxel coordinates) as TRK, or TRX when ``path`` ends in .trx.

    Written to a temporary sibling and renamed. TRX needs trx-python.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        dMRI voxel -> world (RAS+ mm).
    shape : tuple of 3 int
        dMRI grid shape.
    """
    import nibabel as nib
    from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram as dipy_save

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".trk", ".trx"):
        raise UserError(f"tractogram {path}: use a .trk or .trx file name")
    reference = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), np.asarray(affine, float))
    sft = StatefulTractogram(list(streamlines), reference, Space.VOX, origin=Origin.NIFTI)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".trk":
            dipy_save(sft, str(tmp), bbox_valid_check=False)
        else:
            from trx.trx_file_memmap import TrxFile
            from trx.trx_file_memmap import save as trx_save

            trx_save(TrxFile.from_sft(sft), str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def track_and_score(
    *,
    case_id: str,
    label: str,
    peaks: np.ndarray | None,
    sh: np.ndarray | None,
    truth: Any,
    grid: Any,
    config: dict[str, Any],
    seed: int,
    out_dir: str | os.PathLike[str] | None = None,
    reference_mask: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Track one model's fODF on one phantom case and score each truth bundle.

    Without truth bundles (real data), ``reference_mask`` (the dMRI voxels a reference
    tractogram passes through, e.g. one tracked through the microscopy) gives one row,
    bundle ``"microscopy"``: with A the reference voxels and B the voxels of all the
    model's streamlines, OL = |A & B| / |A|, OR_gt = |B \\ A| / |A|, OR_vs = |B \\ A| / |B|
    and F1 = Dice(A, B) (no endpoint ROIs, so no VS/IC/NC).

    ``config`` is the run's ``[tracking]`` table: ``method``, ``seeds_per_voxel``,
    ``step_size`` (voxels), ``max_angle_deg`` and optionally ``stopping``,
    ``gfa_threshold``, ``format`` ("trk" or "trx"). Seeds fill the truth mask; tracking stops
    at its border (or below the GFA threshold). The tractogram is written to
    ``out_dir/sub-<case>_model-<label>_tractography.trk`` when ``out_dir`` is given.

    Returns
    -------
    list of dict
        One row per bundle: case, model, bundle, its ``metrics.tractometer`` scores (ol,
        or_gt, or_vs, f1, vs_count, wpc_count, voxel counts), the tractogram's (vs, is, ic,
        nc, wpc fractions, vb, ib, n_streamlines) and the tracking parameters
        (``tracking_*``).
    """
    mask = np.asarray(truth.mask, bool)
    result = track(
        mask=mask, sh=sh, peaks=peaks if sh is None else None,
        seeds_per_voxel=int(config.get("seeds_per_voxel", 2)),
        method=str(config.get("method", "deterministic")),
        step_size=float(config.get("step_size", 0.5)),
        max_angle_deg=float(config.get("max_angle_deg", 30.0)),
        stopping=str(config.get("stopping", "mask")),
        gfa_threshold=float(config.get("gfa_threshold", 0.1)),
        voxel_size_mm=getattr(grid, "voxel_size_mm", None), rng=seed,
    )
    if out_dir is not None:
        fmt = str(config.get("format", "trk"))
        save_tractogram(
            result.streamlines,
            Path(out_dir) / f"sub-{case_id}_model-{label}_tractography.{fmt}",
            affine=np.asarray(grid.affine), shape=tuple(mask.shape),
        )
    import metrics

    tracking = {f"tracking_{k}": v for k, v in result.params.items() if k != "n_streamlines"}
    bundles = list(getattr(truth, "bundles", []) or [])
    if not bundles:
        if reference_mask is None:
            return []
        a = np.asarray(reference_mask, bool)
        b = streamline_voxels(result.streamlines, tuple(mask.shape))
        return [{
            "case": case_id, "model": label, "bundle": "microscopy", **_overlap(a, b),
            "n_voxels_gt": int(a.sum()), "n_voxels_vs": int(b.sum()),
            "n_streamlines": len(result.streamlines), **tracking,
        }]
    scores = metrics.tractometer(
        result.streamlines, bundles,
        voxel_size=tuple(getattr(grid, "voxel_size_mm", (1.0, 1.0, 1.0))),
    )
    whole = scores.to_dict()
    tractogram_level = {k: whole[k] for k in ("vs", "is", "ic", "nc", "wpc", "vb", "ib",
                                               "n_streamlines")}
    rows = []
    for bundle_row in scores.bundle_rows():
        row: dict[str, Any] = {"case": case_id, "model": label}
        row.update(bundle_row)
        row.update(tractogram_level)
        row.update(tracking)
        rows.append(row)
    return rows


def _walk_py(unit, usable, start, direction, step, cos_max, out):  # type: ignore[no-untyped-def]
    """Steps from ``start`` along the axial field ``unit`` (nearest voxel) into ``out``;
    returns how many points were written. Compiled with numba."""
    px, py, pz = start[0], start[1], start[2]
    dx, dy, dz = direction[0], direction[1], direction[2]
    ni, nj, nk = usable.shape
    n = 0
    for _ in range(out.shape[0]):
        qx, qy, qz = px + step * dx, py + step * dy, pz + step * dz
        i, j, k = int(np.rint(qx)), int(np.rint(qy)), int(np.rint(qz))
        if i < 0 or j < 0 or k < 0 or i >= ni or j >= nj or k >= nk or not usable[i, j, k]:
            break
        vx, vy, vz = unit[i, j, k, 0], unit[i, j, k, 1], unit[i, j, k, 2]
        dot = vx * dx + vy * dy + vz * dz
        if dot < 0:
            vx, vy, vz, dot = -vx, -vy, -vz, -dot
        if dot < cos_max:
            break
        out[n, 0], out[n, 1], out[n, 2] = qx, qy, qz
        n += 1
        px, py, pz, dx, dy, dz = qx, qy, qz, vx, vy, vz
    return n


_walk: Any
try:
    import numba

    _walk = numba.njit(cache=True, nogil=True)(_walk_py)
except ImportError:  # pragma: no cover - numba is a dependency
    _walk = _walk_py


def track_vector_field(
    vectors: np.ndarray,
    *,
    mask: np.ndarray,
    seeds: np.ndarray,
    step_size: float = 0.5,
    max_angle_deg: float = 30.0,
    max_steps: int = 100000,
    to_dmri_voxel: np.ndarray | None = None,
    min_length: float = 2.0,
) -> TrackingResult:
    """Deterministic streamlines through an orientation field (e.g. microscopy ST vectors).

    Integrates both ways from each seed with nearest-voxel directions, flipping each
    direction to agree with the previous step (orientations are axial); stops outside
    ``mask``, at zero vectors, or at turns sharper than ``max_angle_deg``.

    Parameters
    ----------
    vectors : ndarray, shape (I, J, K, 3)
        Orientation field in its own voxel frame (components along the array axes,
        in voxel units of that array, e.g. microscopy voxels). In memory: track a
        downsampled field or a region of interest of a large volume.
    mask : ndarray of bool, shape (I, J, K)
    seeds : ndarray, shape (n, 3)
        Seed points in the field's voxel coordinates.
    step_size : float
        In the field's voxels.
    to_dmri_voxel : ndarray, shape (4, 4), optional
        Maps field voxel coordinates to dMRI voxel coordinates (microscopy voxel -> world ->
        dMRI voxel); streamlines are returned in dMRI voxel coordinates when given.

    Returns
    -------
    TrackingResult
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if vectors.shape[:3] != mask.shape or vectors.shape[-1] != 3:
        raise UserError(f"vectors shape {vectors.shape} does not match mask {mask.shape} + (3,)")
    cos_max = float(np.cos(np.radians(max_angle_deg)))
    buffer = np.empty((max_steps, 3))
    unit = np.zeros_like(vectors)
    norms = np.linalg.norm(vectors, axis=-1)
    np.divide(vectors, norms[..., None], out=unit, where=norms[..., None] > 0)
    usable = mask & (norms > 0)

    streamlines = []
    for seed in np.asarray(seeds, dtype=np.float64).reshape(-1, 3):
        idx = np.rint(seed).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(mask.shape)) or not usable[tuple(idx)]:
            continue
        first = unit[tuple(idx)]
        halves = []
        for sign in (1.0, -1.0):
            n = _walk(unit, usable, seed, sign * first, float(step_size), cos_max, buffer)
            halves.append(buffer[:n].copy())
        line = np.concatenate([halves[1][::-1], seed[None, :], halves[0]])
        if len(line) > 1 and np.sum(np.linalg.norm(np.diff(line, axis=0), axis=1)) >= min_length:
            if to_dmri_voxel is not None:
                m = np.asarray(to_dmri_voxel, dtype=np.float64)
                line = line @ m[:3, :3].T + m[:3, 3]
            streamlines.append(line)
    params = {"method": "deterministic-field", "step_size_field_vox": float(step_size),
              "max_angle_deg": float(max_angle_deg), "n_seeds": int(len(seeds)),
              "n_streamlines": len(streamlines)}
    return TrackingResult(streamlines, params)


def track_microscopy(
    vectors: np.ndarray,
    *,
    mask: np.ndarray,
    microscopy_affine: np.ndarray,
    grid_affine: np.ndarray,
    seed_mask: np.ndarray | None = None,
    seeds_per_voxel: int = 1,
    step_size: float = 0.5,
    max_angle_deg: float = 30.0,
    min_length: float = 2.0,
    rng: int | np.random.Generator | None = None,
) -> TrackingResult:
    """A reference tractogram through a microscopy orientation field, in dMRI voxels.

    Streamlines are integrated at microscopy resolution (:func:`track_vector_field`) from
    seeds in ``seed_mask`` (microscopy voxels; default ``mask``) and mapped to dMRI voxel
    coordinates through ``inv(grid_affine) @ microscopy_affine``.

    Parameters
    ----------
    vectors : ndarray, shape (I, J, K, 3)
        Structure-tensor fibre directions (microscopy array axes).
    mask : ndarray of bool, shape (I, J, K)
        Where the field may be followed (fibre voxels).
    microscopy_affine : ndarray, shape (4, 4)
        Microscopy voxel -> dMRI world (mm), as ``phantoms`` ``Microscopy.affine``.
    grid_affine : ndarray, shape (4, 4)
        dMRI voxel -> world (mm).
    step_size : float
        Microscopy voxels.
    min_length : float
        Microscopy voxels.

    Returns
    -------
    TrackingResult
        Streamlines in dMRI voxel coordinates; ``params`` records the step in microscopy
        voxels and the mapping.
    """
    to_dmri = np.linalg.inv(np.asarray(grid_affine, float)) @ np.asarray(microscopy_affine, float)
    seeds = seeds_from_mask(mask if seed_mask is None else seed_mask,
                            seeds_per_voxel=seeds_per_voxel, rng=rng)
    result = track_vector_field(vectors, mask=mask, seeds=seeds, step_size=step_size,
                                max_angle_deg=max_angle_deg, to_dmri_voxel=to_dmri,
                                min_length=min_length)
    result.params.update(
        source="microscopy",
        seeds_per_voxel=int(seeds_per_voxel),
        microscopy_to_dmri_voxel=to_dmri.round(12).tolist(),
    )
    return result

