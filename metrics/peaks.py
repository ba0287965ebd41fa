"""One-to-one peak matching per voxel, peak detection scores and the NuFO confusion matrix.

Matching follows design.md: among reference/estimate pairs with axial angle
``theta <= tau``, take the largest number of one-to-one matches and, among those, the
smallest total angle. For up to ``_MAX_TABLE_PEAKS`` peaks per voxel this is solved for
all voxels at once: every permutation of ``n = max(K, L)`` slots is scored from a small
table of pair gains (a permutation's matches are its within-threshold pairs; any
partial one-to-one matching extends to a permutation with at least those matches, so
the best permutation is the best matching). Larger K falls back to
``scipy.optimize.linear_sum_assignment`` per voxel.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.optimize import linear_sum_assignment

from metrics._validate import as_float_array
from metrics.errors import MetricInputError

#: up to this many peaks per voxel (reference or estimate) the permutation tables are used
_MAX_TABLE_PEAKS = 6
#: voxels per block of the vectorised matcher (fewer for K > 4: at most ~32 MB of scores)
_BLOCK = 1 << 15
#: a within-threshold match is worth this much more than any sum of angles (<= 90 * 6)
_MATCH_BONUS = 1000.0


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
def _permutation_tables(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permutations of ``n`` slots ``(P, n)``, their flat pair indices ``i * n + perm[i]``
    ``(P, n)`` and the pair-incidence matrix ``(n * n, P)``."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    pair_index = np.arange(n)[None, :] * n + perms
    incidence = np.zeros((n * n, len(perms)), dtype=np.float64)
    incidence[pair_index, np.arange(len(perms))[:, None]] = 1.0
    return perms, pair_index, incidence


def _components(peaks: np.ndarray):
    """(V, K, 3) -> unit components x, y, z (each (V, K), float64) and presence (V, K)."""
    x, y, z = (np.ascontiguousarray(peaks[..., c], dtype=np.float64) for c in range(3))
    norm2 = x * x + y * y + z * z
    present = norm2 > 0
    inv = np.zeros_like(norm2)
    np.divide(1.0, np.sqrt(norm2), out=inv, where=present)
    return x * inv, y * inv, z * inv, present


def _solve(ref: np.ndarray, est: np.ndarray, tau: float):
    """Match (V, K, 3) against (V, L, 3) block by block: assignment, errors, presence."""
    n_vox, k, m = ref.shape[0], ref.shape[1], est.shape[1]
    n = max(k, m)
    assignment = np.empty((n_vox, k), dtype=np.int64)
    errors = np.empty((n_vox, k), dtype=np.float64)
    r_present = np.empty((n_vox, k), dtype=bool)
    e_present = np.empty((n_vox, m), dtype=bool)
    block = min(_BLOCK, max(1024, (1 << 22) // math.factorial(n)))
    for start in range(0, n_vox, block):
        sl = slice(start, start + block)
        assignment[sl], errors[sl], r_present[sl], e_present[sl] = _match_block(
            ref[sl], est[sl], tau, n
        )
    return assignment, errors, r_present, e_present


def _match_block(ref: np.ndarray, est: np.ndarray, tau: float, n: int):
    """Assignment (V, K) (-1 = unmatched) and errors (V, K) for one block of voxels."""
    rx, ry, rz, r_present = _components(ref)
    ex, ey, ez, e_present = _components(est)
    cos = rx[:, :, None] * ex[:, None, :]
    cos += ry[:, :, None] * ey[:, None, :]
    cos += rz[:, :, None] * ez[:, None, :]
    np.abs(cos, out=cos)
    np.minimum(cos, 1.0, out=cos)
    # arccos is coarse (~1e-6 deg) only near 0 deg, where it cannot change a threshold
    # decision; the reported errors below 1 deg are recomputed with arctan2
    theta = np.arccos(cos, out=cos)
    theta *= 180.0 / np.pi
    valid = theta <= tau
    valid &= r_present[:, :, None]
    valid &= e_present[:, None, :]
    if n <= _MAX_TABLE_PEAKS:
        assign = _match_block_table(theta, valid, n)
    else:
        assign = _match_block_lsa(theta, valid)
    matched = assign >= 0
    slot = np.maximum(assign, 0)
    err = np.take_along_axis(theta, slot[:, :, None], axis=2)[:, :, 0]
    err[~matched] = np.nan
    # arccos loses digits below ~1 deg: recompute those angles as arctan2(|a x b|, |a . b|)
    v, r = np.nonzero(matched & (err < 1.0))
    if v.size:
        a = np.stack([rx[v, r], ry[v, r], rz[v, r]], axis=1)
        e = slot[v, r]
        b = np.stack([ex[v, e], ey[v, e], ez[v, e]], axis=1)
        cross = np.cross(a, b)
        sin = np.sqrt(np.einsum("ij,ij->i", cross, cross))
        err[v, r] = np.degrees(np.arctan2(sin, np.abs(np.einsum("ij,ij->i", a, b))))
    return assign, err, r_present, e_present


def _match_block_table(theta: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """Best assignment (V, K) for a block, with the permutation tables; -1 = unmatched."""
    n_vox, k, m = theta.shape
    gain = np.subtract(_MATCH_BONUS, theta)
    gain *= valid
    if k == m == n:
        score = gain
        padded_valid = valid
    else:
        score = np.zeros((n_vox, n, n), dtype=np.float64)
        score[:, :k, :m] = gain
        padded_valid = np.zeros((n_vox, k, n), dtype=bool)
        padded_valid[:, :, :m] = valid
    perms, pair_index, incidence = _permutation_tables(n)
    flat = score.reshape(n_vox, n * n)
    if n <= 3:  # total gain of every permutation: n gathers of (V, P) beat a BLAS call
        total = flat[:, pair_index[:, 0]]
        for i in range(1, n):
            total += flat[:, pair_index[:, i]]
    else:  # (V, n^2) @ (n^2, P): P = 24, 120, 720 permutations
        total = flat @ incidence
    best = np.argmax(total, axis=1)
    chosen = perms[best, :k]  # (V, K) estimate slot for each reference peak
    ok = np.take_along_axis(padded_valid, chosen[:, :, None], axis=2)[:, :, 0]
    return np.where(ok, chosen, -1)


def _match_block_lsa(theta: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Best assignment (V, K) for a block, one Hungarian solve per voxel (large K)."""
    n_vox, k, _ = theta.shape
    out = np.full((n_vox, k), -1, dtype=np.int64)
    big = _MATCH_BONUS
    for v in np.flatnonzero(valid.any(axis=(1, 2))):
        cost = np.where(valid[v], theta[v], big)
        rows, cols = linear_sum_assignment(cost)
        keep = valid[v, rows, cols]
        out[v, rows[keep]] = cols[keep]
    return out


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
    ref2 = ref.reshape(-1, k, 3)
    est2 = est.reshape(-1, m, 3)
    n_vox = ref2.shape[0]
    assignment = np.full((n_vox, k), -1, dtype=np.int64)
    errors = np.full((n_vox, k), np.nan, dtype=np.float64)
    n_ref = np.zeros(n_vox, dtype=np.int64)
    n_est = np.zeros(n_vox, dtype=np.int64)
    n = max(k, m)
    if k > 0 and m > 0 and n <= 3:
        assign, err, r_present, e_present = _solve(ref2, est2, tau)
        assignment[:], errors[:] = assign, err
        n_ref[:] = r_present.sum(axis=1)
        n_est[:] = e_present.sum(axis=1)
    elif k > 0 and m > 0:
        # move present peaks to the front and solve each voxel with the smallest table
        # that holds its peaks (most voxels have far fewer peaks than slots)
        r_present = np.any(ref2 != 0, axis=-1)
        e_present = np.any(est2 != 0, axis=-1)
        n_ref[:] = r_present.sum(axis=1)
        n_est[:] = e_present.sum(axis=1)
        order_r = np.argsort(~r_present, axis=1, kind="stable")
        order_e = np.argsort(~e_present, axis=1, kind="stable")
        size = np.maximum(n_ref, n_est)
        for g in range(1, n + 1):
            vox = np.flatnonzero(size == g)
            if vox.size == 0:
                continue
            rows_r = order_r[vox, : min(g, k)]
            rows_e = order_e[vox, : min(g, m)]
            sub_r = np.take_along_axis(ref2[vox], rows_r[:, :, None], axis=1)
            sub_e = np.take_along_axis(est2[vox], rows_e[:, :, None], axis=1)
            assign, err, _, _ = _solve(sub_r, sub_e, tau)
            original = np.take_along_axis(rows_e, np.maximum(assign, 0), axis=1)
            assignment[vox[:, None], rows_r] = np.where(assign >= 0, original, -1)
            errors[vox[:, None], rows_r] = err
    else:
        n_ref[:] = np.any(ref2 != 0, axis=-1).sum(axis=1)
        n_est[:] = np.any(est2 != 0, axis=-1).sum(axis=1)

    tp = (assignment >= 0).sum(axis=1).astype(np.int64)
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
