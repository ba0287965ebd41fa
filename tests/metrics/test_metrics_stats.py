"""TASKS and score_table: layout, hand-computed statistics, ranks, seeded CIs."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics import STATISTICS, TASKS, MetricInputError, bootstrap_ci, score_table

DESIGN_METRICS = [
    "peak_angular_error_deg", "peak_precision", "peak_recall", "peak_f1", "nufo_correct",
    "acc", "jsd", "dispersion_error", "vs", "is", "ic", "nc", "vb", "ib", "ol", "or_gt",
    "or_vs", "f1", "streamline_angle_deg",
]


def test_tasks_cover_design_names():
    assert set(TASKS) == set(DESIGN_METRICS)
    for name, task in TASKS.items():
        assert set(task) == {"main", "higher_is_better", "unit", "description"}, name
        assert isinstance(task["main"], bool) and isinstance(task["higher_is_better"], bool)
    assert TASKS["peak_angular_error_deg"]["higher_is_better"] is False
    assert TASKS["acc"]["higher_is_better"] is True


def _table():
    return pd.DataFrame(
        {
            "case": ["c1"] * 6 + ["c2"] * 4,
            "model": ["a", "a", "a", "b", "b", "b", "a", "a", "b", "b"],
            "region": ["single", "crossing", "single", "single", "crossing", "single",
                       "single", "single", "crossing", "crossing"],
            "peak_angular_error_deg": [1.0, 3.0, np.nan, 2.0, 6.0, 4.0, 5.0, 7.0, np.nan, np.nan],
            "acc": [0.9, 0.5, 0.7, 0.8, 0.2, 0.6, 0.1, 0.3, 0.9, 0.9],
        }
    )


def _get(t, case, region, model, metric, stat):
    row = t[(t.case == case) & (t.region == region) & (t.model == model) & (t.metric == metric)
            & (t.statistic == stat)]
    assert len(row) == 1, (case, region, model, metric, stat)
    return row.iloc[0]


def test_score_table_layout_and_values():
    t = score_table(_table(), metrics=["peak_angular_error_deg", "acc"], n_boot=200, seed=3)
    assert list(t.columns) == ["case", "region", "model", "metric", "statistic", "value",
                               "ci_low", "ci_high"]
    assert set(t.statistic) == set(STATISTICS)
    assert set(t.case) == {"c1", "c2", "all"}
    # c1 / all / a: errors [1, 3, NaN] -> n 2, undefined 1, median 2, mean 2
    assert _get(t, "c1", "all", "a", "peak_angular_error_deg", "median").value == 2.0
    assert _get(t, "c1", "all", "a", "peak_angular_error_deg", "n").value == 2
    assert _get(t, "c1", "all", "a", "peak_angular_error_deg", "n_undefined").value == 1
    # c1 / all / b: [2, 6, 4] -> median 4, mean 4, quartiles 3 and 5 (linear)
    assert _get(t, "c1", "all", "b", "peak_angular_error_deg", "iqr_low").value == 3.0
    assert _get(t, "c1", "all", "b", "peak_angular_error_deg", "iqr_high").value == 5.0
    # lower error is better: a (2) ranks 1, b (4) ranks 2; higher acc is better
    assert _get(t, "c1", "all", "a", "peak_angular_error_deg", "rank").value == 1
    assert _get(t, "c1", "all", "b", "peak_angular_error_deg", "rank").value == 2
    assert _get(t, "c1", "all", "a", "acc", "rank").value == 1  # 0.7 vs 0.6
    # all cases, single region, model a: errors [1, NaN, 5, 7] -> median 5
    assert _get(t, "all", "single", "a", "peak_angular_error_deg", "median").value == 5.0
    assert _get(t, "all", "single", "a", "peak_angular_error_deg", "n_undefined").value == 1
    # c2 has no crossing rows for a: that group is left out, b only (all NaN error)
    assert t[(t.case == "c2") & (t.region == "crossing") & (t.model == "a")].empty
    undefined = _get(t, "c2", "crossing", "b", "peak_angular_error_deg", "median")
    assert np.isnan(undefined.value)
    assert np.isnan(_get(t, "c2", "crossing", "b", "peak_angular_error_deg", "rank").value)
    # CIs only on median and mean rows, and they bracket the estimate
    med = _get(t, "c1", "all", "b", "acc", "median")
    assert med.ci_low <= med.value <= med.ci_high
    assert np.isnan(_get(t, "c1", "all", "b", "acc", "n").ci_low)


def test_ties_share_rank_and_seeds():
    df = _table()
    df["acc"] = 0.5
    t = score_table(df, metrics=["acc"], n_boot=100, seed=0)
    assert set(t[(t.statistic == "rank")].value) == {1.0}
    t1 = score_table(_table(), metrics=["acc"], n_boot=100, seed=1)
    t2 = score_table(_table(), metrics=["acc"], n_boot=100, seed=1)
    pd.testing.assert_frame_equal(t1, t2)
    # removing model b does not change model a's intervals
    t3 = score_table(_table()[lambda d: d.model == "a"], metrics=["acc"], n_boot=100, seed=1)
    a1 = t1[(t1.model == "a") & (t1.statistic != "rank")].reset_index(drop=True)
    a3 = t3[t3.statistic != "rank"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a1, a3)


def test_score_table_errors():
    with pytest.raises(MetricInputError, match="lacks the column"):
        score_table(_table().drop(columns="region"), metrics=["acc"])
    with pytest.raises(MetricInputError, match="unknown metric"):
        score_table(_table(), metrics=["accuracy"])


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**32 - 1))
def test_bootstrap_median_matches_explicit_resampling(n, seed):
    # the order-statistic shortcut has the distribution of explicit resampling:
    # compare the 2.5/97.5 % quantiles of both with many replicates (Monte-Carlo noise:
    # quantile indices of neighbouring order statistics)
    rng = np.random.default_rng(seed)
    x = np.sort(rng.exponential(size=n))
    (lo, hi), _ = bootstrap_ci(x, n_boot=40000, rng=seed)
    explicit = np.median(x[rng.integers(0, n, size=(40000, n))], axis=1)
    elo, ehi = np.percentile(explicit, (2.5, 97.5))
    spread = np.ptp(x) / 4 + 1e-12
    assert abs(lo - elo) <= spread and abs(hi - ehi) <= spread
    assert x[0] <= lo <= hi <= x[-1]


def test_bootstrap_large_n_mean_is_normal_limit():
    x = np.random.default_rng(0).normal(10.0, 2.0, size=100000)
    (_, _), (lo, hi) = bootstrap_ci(x, n_boot=4000, rng=0)
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert bootstrap_ci([], n_boot=10)[0][0] != bootstrap_ci([], n_boot=10)[0][0]  # NaN


def test_score_table_by_condition():
    from metrics import score_table_by_condition

    cases = pd.DataFrame({"case": ["c1", "c2"], "crossing_angle_deg": [45, 60]})
    df = _table()
    df = pd.concat([df, df.assign(case="c3")])  # c3 has no conditions row: left out
    t = score_table_by_condition(df, cases, condition="crossing_angle_deg",
                                 metrics=["peak_angular_error_deg"], n_boot=50)
    assert list(t.columns[:2]) == ["condition", "condition_value"]
    assert set(t.condition_value) == {"45", "60"}
    row = t[(t.condition_value == "60") & (t.region == "single") & (t.model == "a")
            & (t.statistic == "median")]
    assert row.value.iloc[0] == 6.0  # c2, model a, single: errors 5 and 7
    with pytest.raises(MetricInputError, match="lacks the column"):
        score_table_by_condition(df, cases, condition="snr", metrics=["acc"])
