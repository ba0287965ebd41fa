"""One-to-one peak matching per voxel, peak detection scores and the NuFO confusion matrix.

Matching follows design.md: among reference/estimate pairs with axial angle
``theta <= tau``, take the largest number of one-to-one matches and, among those, the
smallest total angle. A compiled loop (numba, parallel over voxels) solves each voxel
by scoring every permutation of g slots, g the larger number of reference or estimated
peaks that have a partner within tau (a permutation's matches are its within-threshold
pairs; any partial one-to-one matching extends to a permutation with at least those
matches, so the best permutation is the best matching). Voxels with g above
``_MAX_TABLE_PEAKS`` fall back to ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
from scipy.optimize import linear_sum_assignment

from metrics._validate import as_float_array
from metrics.errors import MetricInputError

#: up to this many peaks with a partner (either side) every permutation is scored
_MAX_TABLE_PEAKS = 6
#: a within-threshold match is worth this much more than any sum of angles (<= 90 * 6)
_MATCH_BONUS = 1000.0
#: voxels per parallel task of the compiled matcher (its scratch arrays are reused)
_VOXELS_PER_TASK = 512
_RAD_TO_DEG = 180.0 / np.pi


@dataclass(frozen=True)
class PeakMatch:
    """Result of :func:`match_peaks`.

    Attributes
    ----------
    errors_deg : ndarray of shape (..., K), float64
        Axial angle in degrees between each reference peak and its matched estimate;
        NaN where the reference peak is absent or unmatched.
    assignment : ndarray of shape (..., K), int64
        Index of the matched estimate peak for each reference peak, -1 when unmatched.
    tp, fp, fn : ndarray of shape (...), int64
        Matched pairs, unmatched estimates, unmatched references.
    n_reference, n_estimate : ndarray of shape (...), int64
        Number of present (non-zero) reference / estimate peaks (the NuFO).
    threshold_deg : float
        The matching threshold used.
    """

    errors_deg: np.ndarray
    assignment: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_reference: np.ndarray
    n_estimate: np.ndarray
    threshold_deg: float

    @property
    def nufo_correct(self) -> np.ndarray:
        """Boolean array (...): the estimate has as many peaks as the reference."""
        return self.n_reference == self.n_estimate


def _check_peaks(arr, name: str) -> np.ndarray:
    arr = as_float_array(arr, name)
    if arr.ndim < 2 or arr.shape[-1] != 3:
        raise MetricInputError(f"{name} has shape {arr.shape}; expected (..., K, 3) peaks")
    # one cheap reduction; the exact count only when it is not finite
    if arr.size and not np.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
        bad = ~np.all(np.isfinite(arr), axis=(-2, -1))
        if bad.any():
            raise MetricInputError(
                f"{name} has NaN or infinite peaks in {int(bad.sum())} voxel(s); use zero "
                "rows for absent peaks"
            )
    return arr


@cache
def _permutation_table() -> tuple[np.ndarray, np.ndarray]:
    """Every permutation of g = 1..6 slots, stacked: ``(sum g!, 6)`` and offsets ``(8,)``.

    Rows ``offsets[g]:offsets[g + 1]`` are the permutations of g slots in
    ``itertools.permutations`` order (first column varying slowest); unused columns are 0.
    """
    tables = [np.array(list(itertools.permutations(range(g))), dtype=np.int64)
              for g in range(1, _MAX_TABLE_PEAKS + 1)]
    perms = np.zeros((sum(len(t) for t in tables), _MAX_TABLE_PEAKS), dtype=np.int64)
    offsets = np.zeros(_MAX_TABLE_PEAKS + 2, dtype=np.int64)
    for g, table in enumerate(tables, start=1):
        offsets[g + 1] = offsets[g] + len(table)
        perms[offsets[g] : offsets[g + 1], :g] = table
    return perms, offsets


@numba.njit(cache=True, inline="always")
def _unit_rows(peaks, v, unit, slot):  # pragma: no cover - compiled
    """Copy the present (non-zero) peaks of voxel v, as unit vectors, to the front of
    ``unit`` and their slot indices to ``slot``; return how many there are."""
    n = 0
    for i in range(peaks.shape[1]):
        x = np.float64(peaks[v, i, 0])
        y = np.float64(peaks[v, i, 1])
        z = np.float64(peaks[v, i, 2])
        if x == 0.0 and y == 0.0 and z == 0.0:
            continue
        norm2 = x * x + y * y + z * z
        if not (0.0 < norm2 < np.inf):  # |peak| under- or overflows: rescale it first
            big = max(abs(x), abs(y), abs(z))
            x, y, z = x / big, y / big, z / big
            norm2 = x * x + y * y + z * z
        inv = 1.0 / np.sqrt(norm2)
        unit[n, 0] = x * inv
        unit[n, 1] = y * inv
        unit[n, 2] = z * inv
        slot[n] = i
        n += 1
    return n


@numba.njit(parallel=True, cache=True)
def _match_voxels(ref, est, tau, skip_below, perms, offsets,
                  assignment, errors, n_ref, n_est, too_many):  # pragma: no cover - compiled
    """Match every voxel of (V, K, 3) against (V, L, 3); fill the output arrays.

    ``assignment`` (V, K) must come in as -1 and ``errors`` (V, K) as NaN. A pair's
    angle is ``arccos(min(|a.b|, 1))`` in degrees, as numpy computes it elsewhere; pairs
    with ``|a.b| < skip_below`` are beyond tau by a margin larger than any rounding, so
    their arccos is not needed. Peaks without any within-threshold partner add nothing
    to any permutation, so only the g peaks that have one on the larger side are
    permuted (g! permutations); voxels where g > ``_MAX_TABLE_PEAKS`` are only flagged
    in ``too_many``.
    """
    n_vox, k = ref.shape[0], ref.shape[1]
    m = est.shape[1]
    n_tasks = (n_vox + _VOXELS_PER_TASK - 1) // _VOXELS_PER_TASK
    for task in numba.prange(n_tasks):
        r_unit = np.empty((k, 3))
        e_unit = np.empty((m, 3))
        r_slot = np.empty(k, dtype=np.int64)
        e_slot = np.empty(m, dtype=np.int64)
        theta = np.empty((k, m))
        valid = np.empty((k, m), dtype=np.bool_)
        rows = np.empty(k, dtype=np.int64)  # present peaks with a partner within tau
        cols = np.empty(m, dtype=np.int64)
        gain = np.empty((_MAX_TABLE_PEAKS, _MAX_TABLE_PEAKS))  # 1000 - theta, 0 if invalid
        for v in range(task * _VOXELS_PER_TASK, min(n_vox, (task + 1) * _VOXELS_PER_TASK)):
            nr = _unit_rows(ref, v, r_unit, r_slot)
            ne = _unit_rows(est, v, e_unit, e_slot)
            n_ref[v] = nr
            n_est[v] = ne
            for i in range(nr):
                for j in range(ne):
                    c = abs(r_unit[i, 0] * e_unit[j, 0] + r_unit[i, 1] * e_unit[j, 1]
                            + r_unit[i, 2] * e_unit[j, 2])
                    ok = False
                    if c >= skip_below:
                        angle = np.arccos(min(c, 1.0)) * _RAD_TO_DEG
                        theta[i, j] = angle
                        ok = angle <= tau
                    valid[i, j] = ok
            n_rows = 0
            for i in range(nr):
                if valid[i, :ne].any():
                    rows[n_rows] = i
                    n_rows += 1
            n_cols = 0
            for j in range(ne):
                if valid[:nr, j].any():
                    cols[n_cols] = j
                    n_cols += 1
            g = max(n_rows, n_cols)
            if g == 0:
                continue
            if g > _MAX_TABLE_PEAKS:
                too_many[v] = True
                continue
            gain[:g, :g] = 0.0  # rows/columns beyond n_rows/n_cols are empty slots
            for a in range(n_rows):
                for b in range(n_cols):
                    if valid[rows[a], cols[b]]:
                        gain[a, b] = _MATCH_BONUS - theta[rows[a], cols[b]]
            # score = sum of gains = 1000 * matches - total angle; first maximum wins
            best = offsets[g]
            best_total = -1.0
            for p in range(offsets[g], offsets[g + 1]):
                total = gain[0, perms[p, 0]]
                for a in range(1, g):
                    total += gain[a, perms[p, a]]
                if total > best_total:
                    best_total = total
                    best = p
            for a in range(n_rows):
                b = perms[best, a]
                if gain[a, b] == 0.0:  # an empty slot or a pair beyond tau
                    continue
                i = rows[a]
                j = cols[b]
                angle = theta[i, j]
                if angle < 1.0:
                    # arccos loses digits below ~1 deg: arctan2(|a x b|, |a . b|) there
                    ax, ay, az = r_unit[i, 0], r_unit[i, 1], r_unit[i, 2]
                    bx, by, bz = e_unit[j, 0], e_unit[j, 1], e_unit[j, 2]
                    cx = ay * bz - az * by
                    cy = az * bx - ax * bz
                    cz = ax * by - ay * bx
                    sin = np.sqrt(cx * cx + cy * cy + cz * cz)
                    angle = np.arctan2(sin, abs(ax * bx + ay * by + az * bz)) * _RAD_TO_DEG
                assignment[v, r_slot[i]] = e_slot[j]
                errors[v, r_slot[i]] = angle


def _unit_components(peaks: np.ndarray):
    """(V, K, 3) -> unit components x, y, z (each (V, K), float64)."""
    x, y, z = (np.ascontiguousarray(peaks[..., c], dtype=np.float64) for c in range(3))
    norm2 = x * x + y * y + z * z
    inv = np.zeros_like(norm2)
    np.divide(1.0, np.sqrt(norm2), out=inv, where=norm2 > 0)
    return x * inv, y * inv, z * inv


def _match_many_peaks(ref: np.ndarray, est: np.ndarray, vox: np.ndarray, tau: float,
                      assignment: np.ndarray, errors: np.ndarray) -> None:
    """Voxels ``vox`` with more than ``_MAX_TABLE_PEAKS`` matchable peaks on a side: one
    ``linear_sum_assignment`` per voxel on the design's cost; fills the outputs."""
    for v in vox:
        rows_r = np.flatnonzero(np.any(ref[v] != 0, axis=-1))
        rows_e = np.flatnonzero(np.any(est[v] != 0, axis=-1))
        rx, ry, rz = _unit_components(ref[v, rows_r][None])
        ex, ey, ez = _unit_components(est[v, rows_e][None])
        cos = np.abs(rx[0][:, None] * ex[0] + ry[0][:, None] * ey[0] + rz[0][:, None] * ez[0])
        theta = np.degrees(np.arccos(np.minimum(cos, 1.0)))
        valid = theta <= tau
        rows, cols = linear_sum_assignment(np.where(valid, theta, _MATCH_BONUS))
        keep = valid[rows, cols]
        rows, cols = rows[keep], cols[keep]
        a = np.stack([rx[0, rows], ry[0, rows], rz[0, rows]], axis=1)
        b = np.stack([ex[0, cols], ey[0, cols], ez[0, cols]], axis=1)
        cross = np.cross(a, b)
        precise = np.degrees(np.arctan2(np.sqrt(np.einsum("ij,ij->i", cross, cross)),
                                        np.abs(np.einsum("ij,ij->i", a, b))))
        assignment[v, rows_r[rows]] = rows_e[cols]
        errors[v, rows_r[rows]] = np.where(theta[rows, cols] < 1.0, precise, theta[rows, cols])


def match_peaks(reference, estimate, *, threshold_deg: float = 25.0) -> PeakMatch:
    """Match reference and estimated peaks one-to-one in every voxel.

    Among pairs with axial angle ``theta <= threshold_deg`` the matching has the largest
    number of pairs and, among those, the smallest total angle (design.md). TP = matched
    pairs, FP = unmatched estimates, FN = unmatched references. Zero rows are absent
    peaks; peaks need not be unit length.

    Parameters
    ----------
    reference : array_like of shape (..., K, 3)
        Reference (ground-truth) peaks per voxel, zero rows for absent peaks.
    estimate : array_like of shape (..., L, 3)
        Estimated peaks; same leading shape (...) as ``reference``; L may differ from K.
    threshold_deg : float, optional
        Matching threshold tau in degrees, in [0, 90]. Default 25.

    Returns
    -------
    PeakMatch
        Per-voxel errors (..., K) (NaN where unmatched), assignment, TP/FP/FN and NuFO.

    Raises
    ------
    MetricInputError
        Shapes that are not (..., K, 3), different leading shapes, NaN/infinite peaks,
        a threshold outside [0, 90].

    Examples
    --------
    >>> ref = [[[1, 0, 0], [0, 1, 0]]]
    >>> est = [[[0, -1, 0], [0, 0, 1]]]
    >>> m = match_peaks(ref, est)
    >>> int(m.tp[0]), int(m.fp[0]), int(m.fn[0])
    (1, 1, 1)
    """
    ref = _check_peaks(reference, "reference")
    est = _check_peaks(estimate, "estimate")
    if ref.shape[:-2] != est.shape[:-2]:
        raise MetricInputError(
            f"reference peaks have voxel shape {ref.shape[:-2]} but estimate peaks have "
            f"{est.shape[:-2]}"
        )
    tau = float(threshold_deg)
    if not 0.0 <= tau <= 90.0:
        raise MetricInputError(f"threshold_deg {threshold_deg!r} is outside [0, 90]")

    lead = ref.shape[:-2]
    k, m = ref.shape[-2], est.shape[-2]
    n_vox = math.prod(lead)  # not reshape(-1, ...): ambiguous when K or L is 0
    ref2 = ref.reshape(n_vox, k, 3)
    est2 = est.reshape(n_vox, m, 3)
    assignment = np.full((n_vox, k), -1, dtype=np.int64)
    errors = np.full((n_vox, k), np.nan, dtype=np.float64)
    n_ref = np.zeros(n_vox, dtype=np.int64)
    n_est = np.zeros(n_vox, dtype=np.int64)
    too_many = np.zeros(n_vox, dtype=bool)
    # |a.b| below cos(tau + 1e-6 rad) is certainly beyond tau (arccos is good to ~1e-15)
    skip_below = math.cos(math.radians(tau) + 1e-6) if tau >= 0.01 else -1.0
    perms, offsets = _permutation_table()
    _match_voxels(ref2, est2, tau, skip_below, perms, offsets,
                  assignment, errors, n_ref, n_est, too_many)
    if too_many.any():
        _match_many_peaks(ref2, est2, np.flatnonzero(too_many), tau, assignment, errors)

    tp = np.count_nonzero(assignment >= 0, axis=1).astype(np.int64)
    return PeakMatch(
        errors_deg=errors.reshape(lead + (k,)),
        assignment=assignment.reshape(lead + (k,)),
        tp=tp.reshape(lead),
        fp=(n_est - tp).reshape(lead),
        fn=(n_ref - tp).reshape(lead),
        n_reference=n_ref.reshape(lead),
        n_estimate=n_est.reshape(lead),
        threshold_deg=tau,
    )


def _safe_ratio(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def peak_voxel_metrics(reference, estimate, *, threshold_deg: float = 25.0) -> dict:
    """Per-voxel peak scores, the columns of ``voxels.csv``.

    Parameters
    ----------
    reference, estimate, threshold_deg
        As in :func:`match_peaks`.

    Returns
    -------
    dict of str to ndarray of shape (...), float64
        ``peak_angular_error_deg``: mean axial angle over matched pairs (NaN if none);
        ``peak_precision``: TP / (TP + FP) (NaN when there are no estimated peaks);
        ``peak_recall``: TP / (TP + FN) (NaN when there are no reference peaks);
        ``peak_f1``: 2 TP / (2 TP + FP + FN) (NaN when there are neither);
        ``nufo_correct``: 1.0 when the numbers of peaks agree, else 0.0.
    """
    match = match_peaks(reference, estimate, threshold_deg=threshold_deg)
    with np.errstate(invalid="ignore"):
        summed = np.nansum(match.errors_deg, axis=-1)
    mean_error = _safe_ratio(summed, match.tp)
    return {
        "peak_angular_error_deg": mean_error,
        "peak_precision": _safe_ratio(match.tp, match.tp + match.fp),
        "peak_recall": _safe_ratio(match.tp, match.tp + match.fn),
        "peak_f1": _safe_ratio(2 * match.tp, 2 * match.tp + match.fp + match.fn),
        "nufo_correct": match.nufo_correct.astype(np.float64),
    }


def peak_detection_summary(match: PeakMatch, mask=None) -> dict[str, float]:
    """Aggregate (micro-averaged) peak detection scores over voxels.

    Parameters
    ----------
    match : PeakMatch
        Output of :func:`match_peaks`.
    mask : array_like of bool, shape (...), optional
        Voxels to include; default all.

    Returns
    -------
    dict of str to float
        ``tp``, ``fp``, ``fn`` (totals), ``precision`` = TP/(TP+FP), ``recall`` =
        TP/(TP+FN), ``f1`` = 2TP/(2TP+FP+FN) (NaN when the denominator is 0),
        ``angular_error_mean_deg`` and ``angular_error_median_deg`` over all matched
        pairs (NaN when there are none) and ``nufo_accuracy`` (fraction of voxels with
        the right number of peaks).
    """
    sel = np.ones(match.tp.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if sel.shape != match.tp.shape:
        raise MetricInputError(
            f"mask has shape {sel.shape} but the matched voxels have shape {match.tp.shape}"
        )
    tp, fp, fn = (int(x[sel].sum()) for x in (match.tp, match.fp, match.fn))
    errors = match.errors_deg[sel]
    errors = errors[np.isfinite(errors)]
    n_sel = int(sel.sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": float(_safe_ratio(tp, tp + fp)),
        "recall": float(_safe_ratio(tp, tp + fn)),
        "f1": float(_safe_ratio(2 * tp, 2 * tp + fp + fn)),
        "angular_error_mean_deg": float(errors.mean()) if errors.size else float("nan"),
        "angular_error_median_deg": float(np.median(errors)) if errors.size else float("nan"),
        "nufo_accuracy": float(match.nufo_correct[sel].sum() / n_sel) if n_sel else float("nan"),
    }


def nufo_confusion_matrix(n_reference, n_estimate, *, max_nufo: int | None = None) -> np.ndarray:
    """Confusion matrix of the number of fibre populations (NuFO).

    Parameters
    ----------
    n_reference, n_estimate : array_like of int, same shape
        Number of reference / estimated peaks per voxel (``PeakMatch.n_reference``...).
    max_nufo : int, optional
        Largest NuFO given its own row/column; larger counts are clipped into the last
        one. Default: the largest count present.

    Returns
    -------
    ndarray of shape (max_nufo + 1, max_nufo + 1), int64
        ``C[i, j]`` = number of voxels with i reference and j estimated peaks.
    """
    ref = np.asarray(n_reference)
    est = np.asarray(n_estimate)
    if ref.shape != est.shape:
        raise MetricInputError(f"n_reference has shape {ref.shape} but n_estimate has {est.shape}")
    if ref.size and (ref.min() < 0 or est.min() < 0):
        raise MetricInputError("n_reference and n_estimate must be non-negative counts")
    top = int(max(ref.max(initial=0), est.max(initial=0))) if max_nufo is None else int(max_nufo)
    ref = np.minimum(ref.ravel().astype(np.int64), top)
    est = np.minimum(est.ravel().astype(np.int64), top)
    counts = np.bincount(ref * (top + 1) + est, minlength=(top + 1) ** 2)
    return counts.reshape(top + 1, top + 1)
