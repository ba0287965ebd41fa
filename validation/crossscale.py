"""Cross-scale comparison: two orientation sources compared voxel by voxel on one grid.

A *source* is anything with an orientation distribution on a common (dMRI) grid: a
microscopy level's FOD (:class:`validation.fod.MicroscopyFOD`), a dMRI model's fit, or
an :class:`OrientationSource` built from arrays. Two microscopy levels of different
resolution (a 20 um HiP-CT overview and a 2 um VOI) are made comparable by projecting
each onto the dMRI grid first (:func:`level_fod`), then compared with
:func:`compare_sources`: per-voxel angular correlation (ACC, l >= 2), mean peak angular
error over one-to-one matched peaks, and Jensen-Shannon divergence of the ODFs.

In a run (``validation.runner``), every pair of microscopy levels of a case is compared
this way in the case's fibre voxels (covered by both levels), aggregated like
scores.csv and written to ``crossscale.csv``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from validation.errors import UserError

__all__ = [
    "CROSSSCALE_COLUMNS",
    "CROSSSCALE_METRICS",
    "CrossScaleComparison",
    "OrientationSource",
    "compare_sources",
    "crossscale_table",
    "crossscale_voxels",
    "level_fod",
]

#: Per-voxel metrics of a cross-scale comparison (names as in metrics.TASKS).
CROSSSCALE_METRICS = ("acc", "peak_angular_error_deg", "jsd")

#: Columns of crossscale.csv.
CROSSSCALE_COLUMNS = ("case", "source_a", "source_b", "metric", "statistic", "value",
                      "ci_low", "ci_high")


@dataclass(frozen=True)
class OrientationSource:
    """One orientation source on a grid.

    Attributes
    ----------
    label : str
        Name shown in tables (a microscopy level name or a model label).
    peaks : ndarray of shape (X, Y, Z, K, 3)
        Unit peak directions in the grid's voxel (ijk) frame; zero rows = absent.
    sh : ndarray of shape (X, Y, Z, n_coeffs) or None
        Even SH coefficients (descoteaux07, legacy=False, ijk frame); None when the
        source has peaks only (then ACC and JSD are NaN).
    count : ndarray of shape (X, Y, Z) or None
        Where the source is defined (> 0), e.g. microscopy voxels per dMRI voxel; None =
        defined everywhere (a dMRI model).
    """

    label: str
    peaks: np.ndarray
    sh: np.ndarray | None = None
    count: np.ndarray | None = None

    @classmethod
    def of(cls, label: str, source: Any) -> OrientationSource:
        """Wrap a MicroscopyFOD, a model output (``.peaks``, ``.sh``) or a (peaks, sh) pair."""
        if isinstance(source, OrientationSource):
            return source
        if isinstance(source, tuple):
            peaks, sh = source[0], source[1]
            count = source[2] if len(source) > 2 else None
        else:
            peaks, sh = getattr(source, "peaks", None), getattr(source, "sh", None)
            count = getattr(source, "count", None)
        if peaks is None:
            raise UserError(f"source {label!r}: has no peaks")
        return cls(label, np.asarray(peaks), None if sh is None else np.asarray(sh),
                   None if count is None else np.asarray(count))


@dataclass(frozen=True)
class CrossScaleComparison:
    """Per-voxel agreement of two sources.

    Attributes
    ----------
    voxels : ndarray of shape (n, 3), int64
        Compared grid voxels (inside the mask and covered by both sources), C order.
    values : dict of str -> ndarray of shape (n,)
        ``acc`` (in [-1, 1]), ``peak_angular_error_deg`` (degrees, NaN where no peak pair
        matches within the threshold) and ``jsd`` (in [0, 1]); NaN where undefined.
    """

    voxels: np.ndarray
    values: dict[str, np.ndarray]

    def median(self, metric: str) -> float:
        """Median of one metric over the compared voxels (NaN-ignoring; NaN when empty)."""
        v = self.values[metric]
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else float("nan")


def _sh_basis(sphere: Any, n_coeffs: int) -> np.ndarray:
    from dipy.reconst.shm import calculate_max_order, real_sh_descoteaux

    order = calculate_max_order(n_coeffs)
    basis, _, _ = real_sh_descoteaux(order, sphere.theta, sphere.phi, legacy=False)
    return basis


def compare_sources(
    a: Any,
    b: Any,
    *,
    mask: Any = None,
    threshold_deg: float = 25.0,
    sphere: Any = None,
) -> CrossScaleComparison:
    """Compare two orientation sources voxel by voxel on their common grid.

    Parameters
    ----------
    a, b : MicroscopyFOD, OrientationSource, object with ``.peaks``/``.sh`` or tuple
        The sources, on the same grid: peaks (X, Y, Z, K, 3) and SH (X, Y, Z, C) in the
        grid's ijk frame; a ``count`` (X, Y, Z) restricts a source to where it is > 0.
        ``a`` is the reference of the peak matching.
    mask : array-like of shape (X, Y, Z), bool, optional
        Voxels to compare (e.g. fibre voxels); default all. Voxels not covered by both
        sources are left out.
    threshold_deg : float
        Peak matching threshold, degrees (design.md).
    sphere : dipy Sphere, optional
        Sphere on which the ODFs are sampled for the JSD (default ``repulsion724``).

    Returns
    -------
    CrossScaleComparison

    Raises
    ------
    UserError
        Sources on different grids, SH of different orders, a mask of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> peaks = np.zeros((1, 1, 1, 1, 3)); peaks[..., 0, 2] = 1.0
    >>> r = compare_sources((peaks, None), (peaks, None))
    >>> float(r.values["peak_angular_error_deg"][0])
    0.0
    """
    import metrics

    sa, sb = OrientationSource.of("a", a), OrientationSource.of("b", b)
    shape = sa.peaks.shape[:3]
    if sb.peaks.shape[:3] != shape:
        raise UserError(
            f"sources on different grids: {sa.label} {shape}, {sb.label} {sb.peaks.shape[:3]}"
        )
    keep = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != shape:
        raise UserError(f"mask of shape {keep.shape} does not match the grid {shape}")
    for s in (sa, sb):
        if s.count is not None:
            keep = keep & (np.asarray(s.count) > 0)
    ijk = np.argwhere(keep)
    pa = np.asarray(sa.peaks, np.float64)[keep]
    pb = np.asarray(sb.peaks, np.float64)[keep]
    n = len(ijk)
    values: dict[str, np.ndarray] = {}
    if n:
        values["peak_angular_error_deg"] = np.asarray(
            metrics.peak_voxel_metrics(pa, pb, threshold_deg=threshold_deg)[
                "peak_angular_error_deg"], np.float64)
    else:
        values["peak_angular_error_deg"] = np.zeros(0)
    if sa.sh is None or sb.sh is None or n == 0:
        values["acc"] = np.full(n, np.nan)
        values["jsd"] = np.full(n, np.nan)
    else:
        ha = np.asarray(sa.sh, np.float64)[keep]
        hb = np.asarray(sb.sh, np.float64)[keep]
        if ha.shape[-1] != hb.shape[-1]:
            raise UserError(
                f"sources with SH of {ha.shape[-1]} and {hb.shape[-1]} coefficients; "
                "use one sh_order_max"
            )
        if sphere is None:
            from dipy.data import get_sphere

            sphere = get_sphere(name="repulsion724")
        basis = _sh_basis(sphere, ha.shape[-1])
        values["acc"] = np.asarray(metrics.acc(ha, hb), np.float64)
        values["jsd"] = np.asarray(metrics.jsd(ha @ basis.T, hb @ basis.T, sphere), np.float64)
    return CrossScaleComparison(voxels=ijk.astype(np.int64), values=values)


def level_fod(
    volume: Any,
    *,
    spacing_um: Sequence[float],
    voxel_to_grid: Any,
    grid_shape: tuple[int, int, int],
    grid_affine: Any,
    sigma_um: float | None = None,
    rho_um: float | None = None,
    mask: Any = None,
    sh_order_max: int = 8,
    truncate: float = 4.0,
) -> Any:
    """Microscopy FOD of one level on a target grid (structure tensor + projection).

    Parameters
    ----------
    volume : ndarray or dask array of shape (I, J, K)
        The microscopy image.
    spacing_um : sequence of 3 float
        Voxel size per array axis, micrometres.
    voxel_to_grid : array-like (4, 4)
        Microscopy voxel index -> target world mm (the level's ``voxel_to_dmri``).
    grid_shape, grid_affine
        The common grid (dMRI): shape and voxel -> world mm.
    sigma_um, rho_um : float, optional
        Structure-tensor scales, micrometres; default 1.5 and 4 voxels (smallest spacing),
        as in a run.
    mask : array-like of shape (I, J, K), bool, optional
        Tissue mask.
    sh_order_max : int
    truncate : float

    Returns
    -------
    validation.fod.MicroscopyFOD
    """
    from validation.fod import microscopy_fod
    from validation.orientation import structure_tensor_orientation

    spacing = tuple(float(s) for s in spacing_um)
    sigma = 1.5 * min(spacing) if sigma_um is None else float(sigma_um)
    rho = 4.0 * min(spacing) if rho_um is None else float(rho_um)
    vol = volume.compute() if hasattr(volume, "compute") else volume
    vol = np.asarray(vol, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask.compute() if hasattr(mask, "compute") else mask, bool)
    st = structure_tensor_orientation(vol, sigma=sigma, rho=rho, spacing=spacing,
                                      truncate=truncate)
    return microscopy_fod(st.vectors, st.anisotropy, microscopy_affine=voxel_to_grid,
                          spacing=np.asarray(spacing) / 1000.0, grid_shape=grid_shape,
                          grid_affine=grid_affine, sh_order_max=sh_order_max, mask=mask)


def crossscale_voxels(
    case_id: str,
    sources: Mapping[str, Any],
    *,
    mask: Any = None,
    threshold_deg: float = 25.0,
    sphere: Any = None,
) -> pd.DataFrame:
    """Per-voxel comparison of every pair of sources of one case.

    Parameters
    ----------
    case_id : str
    sources : mapping of name -> source
        In order; each unordered pair (a before b) is compared once.
    mask, threshold_deg, sphere
        As for :func:`compare_sources`.

    Returns
    -------
    pandas.DataFrame
        Columns case, source_a, source_b, i, j, k and one column per
        :data:`CROSSSCALE_METRICS`; empty with those columns when fewer than two sources.
    """
    frames = []
    for (name_a, a), (name_b, b) in itertools.combinations(sources.items(), 2):
        cmp = compare_sources(OrientationSource.of(name_a, a), OrientationSource.of(name_b, b),
                              mask=mask, threshold_deg=threshold_deg, sphere=sphere)
        frame = pd.DataFrame({
            "case": case_id, "source_a": name_a, "source_b": name_b,
            "i": cmp.voxels[:, 0], "j": cmp.voxels[:, 1], "k": cmp.voxels[:, 2],
        })
        for metric in CROSSSCALE_METRICS:
            frame[metric] = cmp.values[metric]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["case", "source_a", "source_b", "i", "j", "k",
                                     *CROSSSCALE_METRICS])
    return pd.concat(frames, ignore_index=True)


def crossscale_table(voxels: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
                     ) -> pd.DataFrame:
    """Aggregate per-voxel cross-scale comparisons into the crossscale.csv table.

    Statistics as in scores.csv (``metrics.score_table``: median, mean with seeded
    bootstrap 95% CIs, iqr_low, iqr_high, n, n_undefined), per case and over all cases
    (``case = all``), for each (source_a, source_b) pair; no ranks (pairs are not
    competitors).

    Parameters
    ----------
    voxels : pandas.DataFrame
        From :func:`crossscale_voxels` (one or several cases concatenated).
    n_boot, seed : int
        Bootstrap replicates and seed.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CROSSSCALE_COLUMNS`.
    """
    import metrics

    if voxels.empty:
        return pd.DataFrame(columns=list(CROSSSCALE_COLUMNS))
    pairs = list(dict.fromkeys(zip(voxels["source_a"], voxels["source_b"], strict=True)))
    key = {pair: f"pair{n}" for n, pair in enumerate(pairs)}
    table = voxels.assign(
        model=[key[p] for p in zip(voxels["source_a"], voxels["source_b"], strict=True)],
        region="all",
    )
    scores = metrics.score_table(table, metrics=list(CROSSSCALE_METRICS), n_boot=n_boot,
                                 seed=seed, regions=("all",))
    scores = scores[scores["statistic"] != "rank"]
    back = {v: k for k, v in key.items()}
    scores = scores.assign(
        source_a=[back[m][0] for m in scores["model"]],
        source_b=[back[m][1] for m in scores["model"]],
    )
    return scores[list(CROSSSCALE_COLUMNS)].reset_index(drop=True)
