"""Peak matching: hand-built voxels, invariants and agreement with a Hungarian solver."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from metrics import (
    MetricInputError,
    match_peaks,
    nufo_confusion_matrix,
    peak_detection_summary,
    peak_voxel_metrics,
)


def _unit(deg_xy):
    t = np.radians(deg_xy)
    return np.array([np.cos(t), np.sin(t), 0.0])


def test_hand_built_voxel_prefers_more_matches_over_smaller_angle():
    # reference at 0 and 40 deg; estimates at 20 and 60 deg, tau = 25.
    # Greedy nearest-first matches ref0-est20 (20 deg) then ref40-est60 (20 deg): 2 TP.
    # A matching that optimised total angle alone with est20 -> ref40 would leave ref0
    # unmatched. The design rule: most matches first.
    ref = np.stack([_unit(0), _unit(40)])[None]
    est = np.stack([_unit(20), _unit(60)])[None]
    m = match_peaks(ref, est, threshold_deg=25)
    assert (m.tp[0], m.fp[0], m.fn[0]) == (2, 0, 0)
    np.testing.assert_allclose(m.errors_deg[0], [20.0, 20.0], atol=1e-9)
    np.testing.assert_array_equal(m.assignment[0], [0, 1])


def test_hand_built_voxel_smallest_total_angle_among_maximal():
    # ref 0 and 10 deg, est 4 and 12 deg: both pairings match 2; totals 4+2=6 vs 12+6=18
    ref = np.stack([_unit(0), _unit(10)])[None]
    est = np.stack([_unit(12), _unit(4)])[None]
    m = match_peaks(ref, est)
    np.testing.assert_array_equal(m.assignment[0], [1, 0])
    np.testing.assert_allclose(m.errors_deg[0], [4.0, 2.0], atol=1e-9)


def test_threshold_is_inclusive_and_absent_rows():
    ref = np.array([[_unit(0), [0, 0, 0]]])
    est = np.array([[_unit(25), _unit(90), [0, 0, 0]]])
    m = match_peaks(ref, est, threshold_deg=25.0 + 1e-9)
    assert (m.tp[0], m.fp[0], m.fn[0]) == (1, 1, 0)
    assert m.n_reference[0] == 1 and m.n_estimate[0] == 2 and not m.nufo_correct[0]
    assert np.isnan(m.errors_deg[0, 1])
    m = match_peaks(ref, est, threshold_deg=24.9)
    assert (m.tp[0], m.fp[0], m.fn[0]) == (0, 2, 1)


def test_empty_voxels_and_voxel_metrics():
    ref = np.zeros((3, 2, 3))
    est = np.zeros((3, 2, 3))
    ref[1, 0] = [1, 0, 0]
    est[2, 0] = [0, 1, 0]
    ref[2, 0] = [0, 0, 1]
    out = peak_voxel_metrics(ref, est)
    # voxel 0: nothing at all; voxel 1: one missed reference; voxel 2: one miss, one FP
    assert np.isnan(out["peak_precision"][0]) and np.isnan(out["peak_recall"][0])
    assert np.isnan(out["peak_f1"][0]) and out["nufo_correct"][0] == 1.0
    assert np.isnan(out["peak_precision"][1]) and out["peak_recall"][1] == 0.0
    assert out["peak_f1"][1] == 0.0 and out["nufo_correct"][1] == 0.0
    assert out["peak_precision"][2] == 0.0 and out["peak_recall"][2] == 0.0
    assert np.all(np.isnan(out["peak_angular_error_deg"]))
    assert out["nufo_correct"][2] == 1.0


def test_voxel_metrics_known_values():
    ref = np.stack([_unit(0), _unit(90), [0, 0, 1]])[None]
    est = np.stack([_unit(10), _unit(96), _unit(45), [0, 0, 0]])[None]
    out = peak_voxel_metrics(ref, est)
    assert out["peak_angular_error_deg"][0] == pytest.approx(8.0)
    assert out["peak_precision"][0] == pytest.approx(2 / 3)
    assert out["peak_recall"][0] == pytest.approx(2 / 3)
    assert out["peak_f1"][0] == pytest.approx(2 / 3)
    assert out["nufo_correct"][0] == 1.0


def test_bad_inputs():
    good = np.zeros((2, 3, 3))
    with pytest.raises(MetricInputError, match="NaN"):
        bad = good.copy()
        bad[1, 0, 0] = np.nan
        match_peaks(bad, good)
    with pytest.raises(MetricInputError, match="voxel shape"):
        match_peaks(np.zeros((2, 3, 3)), np.zeros((4, 3, 3)))
    with pytest.raises(MetricInputError, match="expected"):
        match_peaks(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)))
    with pytest.raises(MetricInputError, match="threshold"):
        match_peaks(good, good, threshold_deg=120)


def _random_peaks(rng, n_vox, k, p_absent=0.3):
    v = rng.normal(size=(n_vox, k, 3))
    v[rng.random((n_vox, k)) < p_absent] = 0.0
    return v


def _hungarian_reference(ref, est, tau):
    """Per-voxel loop with scipy: the design's rule as a min-cost assignment."""
    tp = np.zeros(len(ref), int)
    total = np.zeros(len(ref))
    for v in range(len(ref)):
        r = ref[v][np.any(ref[v] != 0, axis=1)]
        e = est[v][np.any(est[v] != 0, axis=1)]
        if len(r) == 0 or len(e) == 0:
            continue
        rn = r / np.linalg.norm(r, axis=1, keepdims=True)
        en = e / np.linalg.norm(e, axis=1, keepdims=True)
        theta = np.degrees(np.arccos(np.clip(np.abs(rn @ en.T), 0, 1)))
        cost = np.where(theta <= tau, theta, 1e4)
        rows, cols = linear_sum_assignment(cost)
        ok = theta[rows, cols] <= tau
        tp[v] = ok.sum()
        total[v] = theta[rows, cols][ok].sum()
    return tp, total


@pytest.mark.parametrize(("k", "m"), [(1, 1), (2, 3), (3, 3), (5, 5), (4, 2), (7, 7)])
def test_agrees_with_hungarian(k, m):
    rng = np.random.default_rng(k * 10 + m)
    ref = _random_peaks(rng, 400, k)
    est = np.concatenate([ref, _random_peaks(rng, 400, m)], axis=1)[:, :m]
    est = est + 0.25 * rng.normal(size=est.shape) * np.any(est != 0, axis=-1, keepdims=True)
    res = match_peaks(ref, est, threshold_deg=25.0)
    tp, total = _hungarian_reference(ref, est, 25.0)
    np.testing.assert_array_equal(res.tp, tp)
    np.testing.assert_allclose(np.nansum(res.errors_deg, axis=1), total, atol=1e-6)


peak_sets = st.integers(0, 2**32 - 1).map(np.random.default_rng)


@settings(max_examples=60, deadline=None)
@given(peak_sets, st.integers(1, 5), st.integers(1, 5), st.floats(5, 60))
def test_invariants(rng, k, m, tau):
    ref = _random_peaks(rng, 50, k)
    est = _random_peaks(rng, 50, m)
    res = match_peaks(ref, est, threshold_deg=tau)
    n_ref = np.any(ref != 0, axis=-1).sum(-1)
    n_est = np.any(est != 0, axis=-1).sum(-1)
    np.testing.assert_array_equal(res.tp + res.fn, n_ref)
    np.testing.assert_array_equal(res.tp + res.fp, n_est)
    assert np.all(res.errors_deg[np.isfinite(res.errors_deg)] <= tau + 1e-6)
    # one-to-one: no estimate used twice
    for row in res.assignment:
        used = row[row >= 0]
        assert len(used) == len(set(used.tolist()))
    # invariant to peak order and sign flips
    perm_r, perm_e = rng.permutation(k), rng.permutation(m)
    signs = rng.choice([-1.0, 1.0], size=(50, m, 1))
    res2 = match_peaks(ref[:, perm_r], signs * est[:, perm_e], threshold_deg=tau)
    np.testing.assert_array_equal(res2.tp, res.tp)
    np.testing.assert_allclose(
        np.nansum(res2.errors_deg, axis=1), np.nansum(res.errors_deg, axis=1), atol=1e-6
    )
    # swapping roles swaps FP and FN
    res3 = match_peaks(est, ref, threshold_deg=tau)
    np.testing.assert_array_equal(res3.fp, res.fn)
    np.testing.assert_array_equal(res3.fn, res.fp)


def test_summary_and_confusion():
    ref = np.zeros((4, 2, 3))
    est = np.zeros((4, 3, 3))
    ref[0, 0] = est[0, 0] = [1, 0, 0]  # TP
    ref[1, 0] = [1, 0, 0]
    ref[1, 1] = [0, 1, 0]
    est[1, 0] = [1, 0.1, 0]  # TP + FN
    est[2, :2] = [[0, 0, 1], [0, 1, 0]]  # 2 FP
    m = match_peaks(ref, est)
    s = peak_detection_summary(m)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 1)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(4 / 7)
    assert s["nufo_accuracy"] == pytest.approx(0.5)
    c = nufo_confusion_matrix(m.n_reference, m.n_estimate)
    expected = np.zeros((3, 3), int)
    expected[1, 1] = 1
    expected[2, 1] = 1
    expected[0, 2] = 1
    expected[0, 0] = 1
    np.testing.assert_array_equal(c, expected)
    assert peak_detection_summary(m, mask=[True, False, False, False])["f1"] == 1.0
