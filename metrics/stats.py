"""Task metadata (tasks.json) and the aggregation of per-voxel scores into scores.csv.

Statistics per (case, region, model, metric): median, mean, iqr_low, iqr_high (25th and
75th percentiles), n (defined values), n_undefined (NaN values: counted, never dropped
silently) and rank. Bootstrap 95% CIs (percentile method) accompany the median and mean
rows; every group draws from its own generator seeded by ``seed`` and the group's names,
so adding or removing a model never changes another model's intervals.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from metrics.errors import MetricInputError

#: metric name -> main score flag, direction, unit and description (tasks.json)
TASKS: dict[str, dict] = {
    "peak_angular_error_deg": {
        "main": True,
        "higher_is_better": False,
        "unit": "deg",
        "description": "Mean axial angle between matched reference and estimated peaks "
        "(one-to-one matching, threshold tau); undefined without a matched pair.",
    },
    "peak_precision": {
        "main": False,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Matched estimated peaks / estimated peaks (TP / (TP + FP)).",
    },
    "peak_recall": {
        "main": False,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Matched reference peaks / reference peaks (TP / (TP + FN)).",
    },
    "peak_f1": {
        "main": True,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Peak detection F1 = 2 TP / (2 TP + FP + FN).",
    },
    "nufo_correct": {
        "main": False,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "1 when the estimated number of fibre populations equals the "
        "reference one, else 0 (its mean is the NuFO accuracy).",
    },
    "acc": {
        "main": True,
        "higher_is_better": True,
        "unit": "1",
        "description": "Angular correlation coefficient of the FODs over SH orders l >= 2 "
        "(Anderson 2005), in [-1, 1].",
    },
    "jsd": {
        "main": False,
        "higher_is_better": False,
        "unit": "bit",
        "description": "Jensen-Shannon divergence (base 2) of the ODFs on a weighted "
        "sphere, in [0, 1].",
    },
    "dispersion_error": {
        "main": False,
        "higher_is_better": False,
        "unit": "1",
        "description": "|ODI(estimate) - ODI(reference)|, ODI from the FOD's orientation "
        "tensor through the Watson relation, in [0, 1].",
    },
    "vs": {
        "main": True,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Valid streamlines / all streamlines (Tractometer).",
    },
    "is": {
        "main": False,
        "higher_is_better": False,
        "unit": "fraction",
        "description": "Invalid streamlines (IC + NC) / all streamlines.",
    },
    "ic": {
        "main": False,
        "higher_is_better": False,
        "unit": "fraction",
        "description": "Invalid connections (ends in two ROIs that form no bundle) / all.",
    },
    "nc": {
        "main": False,
        "higher_is_better": False,
        "unit": "fraction",
        "description": "No connections (incl. wrong-path connections, WPC) / all.",
    },
    "vb": {
        "main": False,
        "higher_is_better": True,
        "unit": "count",
        "description": "Ground-truth bundles with at least one valid streamline.",
    },
    "ib": {
        "main": False,
        "higher_is_better": False,
        "unit": "count",
        "description": "ROI pairs forming no bundle with at least one invalid connection.",
    },
    "ol": {
        "main": False,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Overlap |A & B| / |A| of a bundle's mask A and its valid "
        "streamlines' voxels B.",
    },
    "or_gt": {
        "main": False,
        "higher_is_better": False,
        "unit": "fraction",
        "description": "Overreach |B \\ A| / |A| (normalised by the ground truth).",
    },
    "or_vs": {
        "main": False,
        "higher_is_better": False,
        "unit": "fraction",
        "description": "Overreach |B \\ A| / |B| (normalised by the valid streamlines' "
        "voxels; 0 for a bundle without valid streamlines).",
    },
    "f1": {
        "main": True,
        "higher_is_better": True,
        "unit": "fraction",
        "description": "Dice of a bundle's mask and its valid streamlines' voxels.",
    },
    "streamline_angle_deg": {
        "main": False,
        "higher_is_better": False,
        "unit": "deg",
        "description": "Per streamline, mean axial angle between its tangent and the "
        "reference orientation field.",
    },
}

STATISTICS = ("median", "mean", "iqr_low", "iqr_high", "n", "n_undefined", "rank")
COLUMNS = ["case", "region", "model", "metric", "statistic", "value", "ci_low", "ci_high"]
#: largest n * n_boot for which the bootstrap of the mean resamples explicitly
_EXACT_MEAN_LIMIT = 1 << 20


def _group_rng(seed: int, *names: str) -> np.random.Generator:
    key = zlib.crc32("\x1f".join(names).encode("utf-8"))
    return np.random.default_rng([int(seed), key])


def bootstrap_ci(values, *, n_boot: int = 1000, rng=None, level: float = 0.95):
    """Percentile bootstrap confidence intervals of the median and the mean.

    The bootstrap replicates are those of resampling the n values with replacement,
    drawn without materialising the resamples where that is exact:

    - median: the k-th smallest of n resampled values is ``x_(ceil(n U))`` with
      ``U ~ Beta(k, n + 1 - k)`` (the k-th order statistic of n uniforms); for even n
      the next order statistic is ``U + (1 - U) Beta(1, n - k)``. Exact, O(n_boot).
    - mean: explicit resampling while ``n * n_boot <= 2**20``; beyond that the
      bootstrap distribution of the mean is drawn from its normal limit
      ``N(mean, var / n)`` (var with ddof=0, the variance of the empirical
      distribution), whose error is far below the Monte-Carlo error at such n.

    Parameters
    ----------
    values : array_like of shape (n,)
        Defined (finite) values.
    n_boot : int
        Bootstrap replicates.
    rng : int, numpy.random.Generator or None
        Seed or generator.
    level : float
        Coverage, default 0.95.

    Returns
    -------
    tuple of ((float, float), (float, float))
        ``((median_low, median_high), (mean_low, mean_high))``; NaN when n = 0 or
        ``n_boot`` = 0.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    nan_pair = (float("nan"), float("nan"))
    if x.size == 0 or n_boot <= 0:
        return nan_pair, nan_pair
    if not np.all(np.isfinite(x)):
        raise MetricInputError("bootstrap_ci needs finite values; drop the undefined ones first")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"level {level!r} is outside (0, 1)")
    gen = np.random.default_rng(rng)
    n = x.size

    def order_index(u: np.ndarray) -> np.ndarray:
        return np.clip(np.ceil(n * u).astype(np.int64) - 1, 0, n - 1)

    k = (n + 1) // 2
    u_k = gen.beta(k, n + 1 - k, size=n_boot)
    if n % 2:
        medians = x[order_index(u_k)]
    elif n == 2:
        u_next = np.maximum(u_k, gen.random(n_boot))  # Beta(1, 1) above u_k
        medians = 0.5 * (x[order_index(u_k)] + x[order_index(u_next)])
    else:
        u_next = u_k + (1.0 - u_k) * gen.beta(1, n - k, size=n_boot)
        medians = 0.5 * (x[order_index(u_k)] + x[order_index(u_next)])

    if n * n_boot <= _EXACT_MEAN_LIMIT:
        means = x[gen.integers(0, n, size=(n_boot, n), dtype=np.int32)].mean(axis=1)
    else:
        means = gen.normal(x.mean(), x.std() / np.sqrt(n), size=n_boot)
    tail = (1.0 - level) / 2.0 * 100.0
    q = (tail, 100.0 - tail)
    lo_med, hi_med = np.percentile(medians, q)
    lo_mean, hi_mean = np.percentile(means, q)
    return (float(lo_med), float(hi_med)), (float(lo_mean), float(hi_mean))


def _rank(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Competition ranks (1 = best, ties share the best rank); NaN stays NaN."""
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values)
    v = values[ok] if higher_is_better is False else -values[ok]
    out[ok] = np.array([1 + np.count_nonzero(v < x) for x in v], dtype=np.float64)
    return out


def score_table(
    voxels,
    *,
    metrics: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    regions: Sequence[str] = ("all", "single", "crossing"),
):
    """Aggregate per-voxel (or per-bundle) scores into the tidy scores.csv table.

    Parameters
    ----------
    voxels : pandas.DataFrame
        One row per (case, model, unit of scoring) with columns ``case``, ``model``,
        ``region`` and one float column per metric (NaN = undefined).
    metrics : sequence of str
        Metric columns to aggregate; names from :data:`TASKS` (their direction sets
        the ranks).
    n_boot : int
        Bootstrap replicates for the 95% CIs of the median and mean (0: no CIs).
    seed : int
        Seed of the bootstrap; each group's generator is derived from it and the group's
        case, region, model and metric names.
    regions : sequence of str
        ``"all"`` = every row; any other value selects the rows whose ``region`` equals it.
        Regions without rows for a (case, model) are left out.

    Returns
    -------
    pandas.DataFrame
        Columns case, region, model, metric, statistic, value, ci_low, ci_high; ``case``
        is each case and ``"all"``; statistics median, mean, iqr_low, iqr_high, n
        (number of defined values), n_undefined, rank (of the model's median within
        (case, region, metric), 1 = best, ties share a rank, NaN without a median);
        ci_low/ci_high are NaN except on median and mean rows.

    Raises
    ------
    MetricInputError
        Missing columns, metrics unknown to :data:`TASKS`, non-numeric metric columns.
    """
    import pandas as pd

    unknown = [m for m in metrics if m not in TASKS]
    if unknown:
        raise MetricInputError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    required = {"case", "model", "region", *metrics}
    missing = sorted(required - set(voxels.columns))
    if missing:
        raise MetricInputError(f"voxels table lacks the column(s) {', '.join(missing)}")
    for m in metrics:
        if not pd.api.types.is_numeric_dtype(voxels[m]):
            raise MetricInputError(f"metric column {m!r} is not numeric ({voxels[m].dtype})")

    rows: list[list] = []
    case_codes, case_names = pd.factorize(voxels["case"].astype(str))
    model_codes, model_names = pd.factorize(voxels["model"].astype(str))
    region_values = voxels["region"].astype(str).to_numpy()
    columns = {m: voxels[m].to_numpy(dtype=np.float64) for m in metrics}
    nan = float("nan")
    for case_index, case in enumerate([*case_names, "all"]):
        in_case = np.ones(len(voxels), bool) if case == "all" else case_codes == case_index
        for region in regions:
            in_region = in_case if region == "all" else in_case & (region_values == region)
            # row indices of each model in this (case, region), in order of appearance
            sel_codes = model_codes[in_region]
            sel_rows = np.flatnonzero(in_region)
            order = np.argsort(sel_codes, kind="stable")
            bounds = np.searchsorted(sel_codes[order], np.arange(len(model_names) + 1))
            groups = {
                str(model_names[mi]): sel_rows[order[bounds[mi] : bounds[mi + 1]]]
                for mi in range(len(model_names))
                if bounds[mi + 1] > bounds[mi]
            }
            if not groups:
                continue
            for metric in metrics:
                column = columns[metric]
                medians: dict[str, float] = {}
                for model, idx in groups.items():
                    values = column[idx]
                    defined = values[np.isfinite(values)]
                    n_undef = int(values.size - defined.size)
                    if defined.size:
                        med = float(np.median(defined))
                        mean = float(defined.mean())
                        q25, q75 = (float(v) for v in np.percentile(defined, (25, 75)))
                    else:
                        med = mean = q25 = q75 = nan
                    (ml, mh), (al, ah) = bootstrap_ci(
                        defined, n_boot=n_boot, rng=_group_rng(seed, case, region, model, metric)
                    )
                    medians[model] = med
                    rows += [
                        [case, region, model, metric, "median", med, ml, mh],
                        [case, region, model, metric, "mean", mean, al, ah],
                        [case, region, model, metric, "iqr_low", q25, nan, nan],
                        [case, region, model, metric, "iqr_high", q75, nan, nan],
                        [case, region, model, metric, "n", float(defined.size), nan, nan],
                        [case, region, model, metric, "n_undefined", float(n_undef), nan, nan],
                    ]
                names = list(medians)
                ranks = _rank(
                    np.array([medians[m] for m in names]), TASKS[metric]["higher_is_better"]
                )
                for model, rank in zip(names, ranks, strict=True):
                    rows.append([case, region, model, metric, "rank", float(rank), nan, nan])
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table


def score_table_by_condition(
    voxels,
    cases,
    *,
    condition: str,
    metrics: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    regions: Sequence[str] = ("all", "single", "crossing"),
):
    """Aggregate scores over all cases that share a value of one condition.

    E.g. ``condition="crossing_angle_deg"`` pools the voxels of every case with a
    45-degree crossing, of every case with 60 degrees, and so on.

    Parameters
    ----------
    voxels : pandas.DataFrame
        As for :func:`score_table`.
    cases : pandas.DataFrame
        cases.csv: a ``case`` column and one column per condition.
    condition : str
        The condition column to group by.
    metrics, n_boot, seed, regions
        As for :func:`score_table`.

    Returns
    -------
    pandas.DataFrame
        Columns condition, condition_value, region, model, metric, statistic, value,
        ci_low, ci_high; ranks are within each condition value. Voxels of cases missing
        from ``cases`` or with no value (NaN) for the condition are left out.
    """
    import pandas as pd

    for column in ("case", condition):
        if column not in cases.columns:
            raise MetricInputError(f"cases table lacks the column {column!r}")
    if "case" not in voxels.columns:
        raise MetricInputError("voxels table lacks the column case")
    lookup = {
        str(case): (str(value) if pd.notna(value) else None)
        for case, value in zip(cases["case"], cases[condition], strict=True)
    }
    values = voxels["case"].astype(str).map(lookup)
    keep = values.notna().to_numpy()
    pooled = voxels.loc[keep].copy()
    pooled["case"] = values[keep].to_numpy()
    if pooled.empty:
        return pd.DataFrame(columns=["condition", "condition_value", *COLUMNS[1:]])
    table = score_table(pooled, metrics=metrics, n_boot=n_boot, seed=seed, regions=regions)
    table = table[table["case"] != "all"].rename(columns={"case": "condition_value"})
    table.insert(0, "condition", condition)
    return table.reset_index(drop=True)
