"""Landmark-based alignment: paired landmarks -> rigid, similarity or affine transform.

Least-squares fits (Umeyama 1991 for rigid / similarity, the Kabsch solution with the
reflection guard; ordinary least squares for affine), fiducial and leave-one-out target
registration errors, and the predicted TRE of Fitzpatrick, West and Maurer (1998) for
the report.

CSV format (one landmark per row, a header line, millimetres, world RAS+)::

    name,source_x,source_y,source_z,target_x,target_y,target_z
    genu,12.1,40.2,-3.0,11.0,38.7,-2.2
    ...

``source`` is the space the fitted transform maps *from* (e.g. microscopy world),
``target`` the space it maps *to* (dMRI world). ``name`` is optional.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from validation.errors import UserError
from validation.transforms import AffineTransform

__all__ = [
    "LandmarkAlignment",
    "Landmarks",
    "align_landmarks",
    "fiducial_registration_error",
    "fit_landmark_transform",
    "fitzpatrick_tre",
    "fle_from_fre",
    "leave_one_out_tre",
    "read_landmarks_csv",
]

Kind = Literal["rigid", "similarity", "affine"]
_KINDS = ("rigid", "similarity", "affine")
_MIN_POINTS = {"rigid": 3, "similarity": 3, "affine": 4}
_COLUMNS = ("source_x", "source_y", "source_z", "target_x", "target_y", "target_z")


@dataclass(frozen=True)
class Landmarks:
    """Paired landmarks.

    Attributes
    ----------
    names : tuple of str
    source, target : ndarray of shape (N, 3)
        Positions in mm in the source and target spaces.
    """

    names: tuple[str, ...]
    source: np.ndarray
    target: np.ndarray


def read_landmarks_csv(path: str | os.PathLike) -> Landmarks:
    """Read paired landmarks from a CSV file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: landmark file not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in _COLUMNS if c not in fields]
        if missing:
            raise UserError(
                f"{path}: landmark CSV lacks columns {missing}; expected name (optional), "
                f"{', '.join(_COLUMNS)}"
            )
        names, src, tgt = [], [], []
        for row_no, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                values = [float(row[c]) for c in _COLUMNS]
            except (TypeError, ValueError):
                raise UserError(
                    f"{path}: line {row_no} holds a value that is not a number"
                ) from None
            if not all(np.isfinite(values)):
                raise UserError(f"{path}: line {row_no} holds a non-finite coordinate")
            names.append(str(row.get("name") or f"L{row_no - 1}"))
            src.append(values[:3])
            tgt.append(values[3:])
    if not src:
        raise UserError(f"{path}: landmark CSV has no rows")
    return Landmarks(
        tuple(names), np.asarray(src, dtype=np.float64), np.asarray(tgt, dtype=np.float64)
    )


def _check_pairs(source: Any, target: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind not in _KINDS:
        raise UserError(f"transform kind {kind!r} is invalid; use one of {', '.join(_KINDS)}")
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != tgt.shape:
        raise UserError(
            f"landmarks of shapes {src.shape} and {tgt.shape} must both be (N, 3)"
        )
    if src.shape[0] < _MIN_POINTS[kind]:
        raise UserError(
            f"a {kind} fit needs at least {_MIN_POINTS[kind]} landmarks; got {src.shape[0]}"
        )
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(tgt))):
        raise UserError("landmarks hold non-finite coordinates")
    return src, tgt


def fit_landmark_transform(source: Any, target: Any, kind: Kind = "rigid") -> AffineTransform:
    """Least-squares transform mapping ``source`` landmarks onto ``target`` landmarks.

    Parameters
    ----------
    source, target : array-like of shape (N, 3)
        Paired positions, mm.
    kind : {"rigid", "similarity", "affine"}
        Rigid (rotation + translation), similarity (+ isotropic scale) by Umeyama's
        closed form, or general affine by linear least squares.

    Returns
    -------
    AffineTransform
        Maps source points to target points; exact when they are related by a
        transform of that kind.

    Raises
    ------
    UserError
        Too few landmarks, degenerate (collinear / coplanar for affine) configurations.

    Examples
    --------
    >>> src = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    >>> t = fit_landmark_transform(src, src + [1.0, 2.0, 3.0])
    >>> np.round(t.as_affine()[:3, 3], 12).tolist()
    [1.0, 2.0, 3.0]
    """
    src, tgt = _check_pairs(source, target, kind)
    n = src.shape[0]
    mu_s, mu_t = src.mean(axis=0), tgt.mean(axis=0)
    xs, xt = src - mu_s, tgt - mu_t
    m = np.eye(4)
    if kind == "affine":
        design = np.hstack([src, np.ones((n, 1))])
        if np.linalg.matrix_rank(design) < 4:
            raise UserError("an affine fit needs landmarks that are not coplanar")
        sol, *_ = np.linalg.lstsq(design, tgt, rcond=None)
        m[:3, :3] = sol[:3].T
        m[:3, 3] = sol[3]
        return AffineTransform(m, source="affine landmark fit")
    if np.linalg.matrix_rank(xs, tol=1e-9 * max(np.abs(xs).max(), 1.0)) < 2:
        raise UserError(f"a {kind} fit needs landmarks that are not collinear")
    cov = xt.T @ xs / n
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[2, 2] = -1.0
    rot = u @ s @ vt
    scale = 1.0
    if kind == "similarity":
        var_s = float((xs**2).sum() / n)
        scale = float(np.trace(np.diag(d) @ s) / var_s)
    m[:3, :3] = scale * rot
    m[:3, 3] = mu_t - scale * rot @ mu_s
    return AffineTransform(m, source=f"{kind} landmark fit")


def fiducial_registration_error(source: Any, target: Any, transform: AffineTransform) -> np.ndarray:
    """Distance (mm) between each mapped source landmark and its target, shape (N,)."""
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    return np.linalg.norm(transform.apply_points(src) - tgt, axis=1)


def leave_one_out_tre(source: Any, target: Any, kind: Kind = "rigid") -> np.ndarray:
    """Leave-one-out target registration error, mm, shape (N,).

    Landmark ``i`` is left out, the transform fitted on the others, and its error
    measured at landmark ``i``. NaN where the remaining landmarks are too few or
    degenerate for the fit.
    """
    src, tgt = _check_pairs(source, target, kind)
    n = src.shape[0]
    out = np.full(n, np.nan)
    for i in range(n):
        keep = np.arange(n) != i
        try:
            t = fit_landmark_transform(src[keep], tgt[keep], kind)
        except UserError:
            continue
        out[i] = float(np.linalg.norm(t.apply_points(src[i]) - tgt[i]))
    return out


def fitzpatrick_tre(fiducials: Any, targets: Any, fle_rms: float) -> np.ndarray:
    """Predicted RMS target registration error of a rigid fit (Fitzpatrick et al. 1998).

    ``<TRE^2(r)> ~ <FLE^2> / N * (1 + 1/3 * sum_k d_k^2 / f_k^2)``, with ``d_k`` the
    distance of target ``r`` from the k-th principal axis of the fiducial
    configuration and ``f_k`` the RMS distance of the fiducials from that axis.

    Parameters
    ----------
    fiducials : array-like of shape (N, 3)
        Fiducial positions (mm) in the space where the error is measured.
    targets : array-like of shape (M, 3)
        Target positions (mm).
    fle_rms : float
        RMS fiducial localisation error ``sqrt(<FLE^2>)`` (mm); for i.i.d. isotropic
        Gaussian noise of standard deviation sigma per axis it is ``sqrt(3) * sigma``.

    Returns
    -------
    ndarray of shape (M,)
        ``sqrt(<TRE^2>)`` at each target, mm.
    """
    fid = np.asarray(fiducials, dtype=np.float64)
    tg = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    if fid.ndim != 2 or fid.shape[1] != 3 or fid.shape[0] < 3:
        raise UserError(f"fiducials of shape {fid.shape} must be (N >= 3, 3)")
    centred = fid - fid.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt  # rows: principal axes
    n = fid.shape[0]

    def _dist2(points: np.ndarray, axis: np.ndarray) -> np.ndarray:
        along = points @ axis
        return np.sum(points**2, axis=-1) - along**2

    ratio = np.zeros(tg.shape[0])
    rel = tg - fid.mean(axis=0)
    for axis in axes:
        f2 = float(np.mean(_dist2(centred, axis)))
        ratio += _dist2(rel, axis) / f2
    return np.sqrt(fle_rms**2 / n * (1.0 + ratio / 3.0))


def fle_from_fre(fre_rms: float, n: int) -> float:
    """RMS FLE estimated from the RMS FRE of a rigid fit: ``<FRE^2> ~ (1 - 2/N) <FLE^2>``."""
    if n <= 2:
        raise UserError(f"estimating FLE needs more than 2 landmarks; got {n}")
    return float(fre_rms / np.sqrt(1.0 - 2.0 / n))


@dataclass(frozen=True)
class LandmarkAlignment:
    """A landmark fit with its errors, for the report.

    Attributes
    ----------
    transform : AffineTransform
        Source -> target.
    kind : str
    names : tuple of str
    fre_mm : ndarray (N,)
        Fiducial registration error per landmark.
    loo_tre_mm : ndarray (N,)
        Leave-one-out target registration error per landmark.
    fle_rms_mm : float
        FLE estimated from the FRE (rigid formula).
    """

    transform: AffineTransform
    kind: str
    names: tuple[str, ...]
    fre_mm: np.ndarray
    loo_tre_mm: np.ndarray
    fle_rms_mm: float

    def predicted_tre(self, targets: Any, fiducials: Any) -> np.ndarray:
        """Fitzpatrick's predicted RMS TRE (mm) at ``targets`` for these fiducials."""
        return fitzpatrick_tre(fiducials, targets, self.fle_rms_mm)

    def summary(self) -> dict[str, float]:
        """Scalar summary: n, FRE RMS, LOO-TRE mean / median / max, FLE estimate (mm)."""
        loo = self.loo_tre_mm[np.isfinite(self.loo_tre_mm)]
        return {
            "n_landmarks": float(len(self.names)),
            "fre_rms_mm": float(np.sqrt(np.mean(self.fre_mm**2))),
            "loo_tre_mean_mm": float(loo.mean()) if loo.size else float("nan"),
            "loo_tre_median_mm": float(np.median(loo)) if loo.size else float("nan"),
            "loo_tre_max_mm": float(loo.max()) if loo.size else float("nan"),
            "fle_rms_mm": self.fle_rms_mm,
        }


def align_landmarks(
    landmarks: Landmarks | str | os.PathLike, kind: Kind = "rigid"
) -> LandmarkAlignment:
    """Fit a transform to paired landmarks (a :class:`Landmarks` or a CSV path) with errors."""
    lm = landmarks if isinstance(landmarks, Landmarks) else read_landmarks_csv(landmarks)
    t = fit_landmark_transform(lm.source, lm.target, kind)
    fre = fiducial_registration_error(lm.source, lm.target, t)
    n = lm.source.shape[0]
    fre_rms = float(np.sqrt(np.mean(fre**2)))
    fle = fle_from_fre(fre_rms, n) if n > 2 else float("nan")
    return LandmarkAlignment(
        transform=t, kind=kind, names=lm.names, fre_mm=fre,
        loo_tre_mm=leave_one_out_tre(lm.source, lm.target, kind), fle_rms_mm=fle,
    )
