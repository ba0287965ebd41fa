"""Registration uncertainty: perturb microscopy placements and measure how scores move.

Registration is never perfect. A run with ``[registration] perturbations = n`` places
each microscopy level ``n`` more times, each time through a perturbed voxel -> dMRI
affine, recomputes the microscopy FOD (the structure-tensor orientations are kept; model
fits are not recomputed) and rescores: for phantoms the microscopy sources move against
the fixed geometric truth; for real data the reference (the first level's FOD) moves and
every model's scores with it. The spread of the median of each main metric over the
perturbations (std, min, max, range) goes to ``registration.csv`` next to the
unperturbed score.

Two perturbation models:

- random rigid (:func:`validation.transforms.random_rigid_perturbation`): rotation angle
  ~ N(0, rotation_deg) about a random axis through the level's centre in dMRI world,
  translation ~ N(0, translation_mm) per axis;
- landmarks (:func:`landmark_perturbations`): the landmark targets are jittered with
  isotropic Gaussian noise of the fiducial localisation error estimated from the fit
  (``fle_rms / sqrt(3)`` per axis) and the transform refitted, so the spread follows the
  landmark configuration (Fitzpatrick et al. 1998).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from validation.errors import UserError

__all__ = [
    "REGISTRATION_COLUMNS",
    "landmark_perturbations",
    "level_centre_mm",
    "perturbed_affines",
    "registration_spread",
]

#: Columns of registration.csv.
REGISTRATION_COLUMNS = ("case", "level", "model", "metric", "statistic", "value")

#: Statistics of a spread row in registration.csv.
SPREAD_STATISTICS = ("score", "perturbed_median", "std", "min", "max", "range", "n")


def level_centre_mm(voxel_to_dmri: Any, shape: Sequence[int]) -> np.ndarray:
    """Centre of a microscopy volume of ``shape`` in dMRI world mm, shape (3,)."""
    a = np.asarray(voxel_to_dmri, dtype=np.float64)
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return a[:3, :3] @ centre + a[:3, 3]


def perturbed_affines(
    voxel_to_dmri: Any,
    shape: Sequence[int],
    *,
    n: int,
    rotation_deg: float,
    translation_mm: float,
    rng: int | np.random.Generator | None = None,
) -> list[np.ndarray]:
    """``n`` random rigid perturbations of a level's voxel -> dMRI affine.

    Parameters
    ----------
    voxel_to_dmri : array-like (4, 4)
        Microscopy voxel index -> dMRI world mm.
    shape : sequence of 3 int
        The level's array shape (the rotation centre is its centre).
    n : int
        Number of perturbations (>= 0).
    rotation_deg, translation_mm : float
        Standard deviations of the rotation angle (degrees) and of each translation
        component (mm).
    rng : int, Generator or None
        Seed; draw ``k`` does not depend on ``n``.

    Returns
    -------
    list of ndarray (4, 4)
        ``P_k @ voxel_to_dmri`` with ``P_k`` rigid in dMRI world.
    """
    from validation.transforms import random_rigid_perturbation

    if n < 0:
        raise UserError(f"perturbations = {n} must be >= 0")
    base = np.asarray(voxel_to_dmri, dtype=np.float64)
    centre = level_centre_mm(base, shape)
    seeds = np.random.SeedSequence(
        int(np.random.default_rng(rng).integers(0, 2**63 - 1))).spawn(n)
    return [
        random_rigid_perturbation(rotation_deg=rotation_deg, translation_mm=translation_mm,
                                  centre_mm=centre, rng=np.random.default_rng(s)
                                  ).as_affine() @ base
        for s in seeds
    ]


def landmark_perturbations(
    voxel_to_dmri: Any,
    alignment: Any,
    landmarks: Any,
    *,
    n: int,
    rng: int | np.random.Generator | None = None,
) -> list[np.ndarray]:
    """``n`` perturbations of a landmark-placed level by refitting jittered landmarks.

    Parameters
    ----------
    voxel_to_dmri : array-like (4, 4)
        The level's voxel -> dMRI world affine, whose last stage is ``alignment``.
    alignment : validation.landmarks.LandmarkAlignment
        The fit (its ``transform``, ``kind`` and ``fle_rms_mm``).
    landmarks : validation.landmarks.Landmarks
        The landmark pairs it was fitted to.
    n : int
        Number of perturbations.
    rng : int, Generator or None

    Returns
    -------
    list of ndarray (4, 4)
        ``T_k @ T^-1 @ voxel_to_dmri``: the fitted transform T replaced by the refit
        ``T_k`` on targets + N(0, (fle_rms / sqrt 3)^2) per axis. Without an error
        estimate (fewer than 3 landmarks, or exact landmarks) every copy equals the input.
    """
    from validation.landmarks import fit_landmark_transform

    base = np.asarray(voxel_to_dmri, dtype=np.float64)
    fle = float(alignment.fle_rms_mm)
    sigma = fle / np.sqrt(3.0) if np.isfinite(fle) else 0.0
    fitted_inv = np.linalg.inv(alignment.transform.as_affine())
    gen = np.random.default_rng(rng)
    out = []
    for _ in range(n):
        noisy = landmarks.target + gen.normal(0.0, sigma, size=landmarks.target.shape)
        refit = fit_landmark_transform(landmarks.source, noisy, alignment.kind).as_affine()
        out.append(refit @ fitted_inv @ base)
    return out


def registration_spread(
    base: pd.DataFrame,
    perturbed: pd.DataFrame,
    *,
    metrics: Sequence[str],
) -> pd.DataFrame:
    """How much each score's median moves across registration perturbations.

    Parameters
    ----------
    base : pandas.DataFrame
        Unperturbed per-voxel scores: columns case, model and one per metric.
    perturbed : pandas.DataFrame
        The same for every perturbation, with an extra integer column ``perturbation``.
    metrics : sequence of str
        Metric columns to summarise.

    Returns
    -------
    pandas.DataFrame
        Columns case, level (``all``: every level perturbed together), model, metric,
        statistic, value. Per case and over all cases (``case = all``, voxels pooled) and
        per model present in ``perturbed``: statistic ``score`` (unperturbed median),
        ``perturbed_median`` (median over perturbations of the median), ``std`` (sample
        standard deviation, ddof = 1; 0 for one perturbation), ``min``, ``max``,
        ``range`` (max - min) of the per-perturbation medians, and ``n`` (perturbations
        with a defined median).
    """
    rows: list[tuple[Any, ...]] = []
    if perturbed.empty:
        return pd.DataFrame(columns=list(REGISTRATION_COLUMNS))
    models = list(dict.fromkeys(perturbed["model"]))
    cases = list(dict.fromkeys(perturbed["case"]))
    for case in [*cases, "all"]:
        pb = perturbed if case == "all" else perturbed[perturbed["case"] == case]
        bb = base if case == "all" else base[base["case"] == case]
        for model in models:
            pm = pb[pb["model"] == model]
            bm = bb[bb["model"] == model]
            if pm.empty:
                continue
            for metric in metrics:
                b = bm[metric].to_numpy(np.float64)
                b = b[np.isfinite(b)]
                score = float(np.median(b)) if b.size else np.nan
                medians = []
                for _, group in pm.groupby("perturbation", sort=True):
                    v = group[metric].to_numpy(np.float64)
                    v = v[np.isfinite(v)]
                    medians.append(float(np.median(v)) if v.size else np.nan)
                m = np.asarray(medians)
                m = m[np.isfinite(m)]
                if m.size:
                    stats = (score, float(np.median(m)),
                             float(np.std(m, ddof=1)) if m.size > 1 else 0.0,
                             float(m.min()), float(m.max()), float(m.max() - m.min()),
                             float(m.size))
                else:
                    stats = (score, np.nan, np.nan, np.nan, np.nan, np.nan, 0.0)
                for name, value in zip(SPREAD_STATISTICS, stats, strict=True):
                    rows.append((case, "all", model, metric, name, value))
    return pd.DataFrame(rows, columns=list(REGISTRATION_COLUMNS))
