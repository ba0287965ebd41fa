"""Landmark fits: exact recovery, leave-one-out TRE, Fitzpatrick's predicted TRE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.landmarks import (
    align_landmarks,
    fit_landmark_transform,
    fitzpatrick_tre,
    fle_from_fre,
    leave_one_out_tre,
    read_landmarks_csv,
)
from validation.transforms import rotation_matrix


def _true_transform(rng: np.random.Generator, kind: str) -> np.ndarray:
    m = rotation_matrix(rng.normal(size=3), float(rng.uniform(-180, 180)))
    if kind == "similarity":
        m[:3, :3] *= rng.uniform(0.5, 2.0)
    if kind == "affine":
        m[:3, :3] = m[:3, :3] @ (np.eye(3) + 0.2 * rng.normal(size=(3, 3)))
    m[:3, 3] = rng.normal(size=3) * 20
    return m


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["rigid", "similarity", "affine"]))
def test_known_transform_recovered_exactly(seed, kind) -> None:
    rng = np.random.default_rng(seed)
    truth = _true_transform(rng, kind)
    src = rng.uniform(-50, 50, size=(7, 3))
    tgt = src @ truth[:3, :3].T + truth[:3, 3]
    fit = fit_landmark_transform(src, tgt, kind)
    np.testing.assert_allclose(fit.as_affine(), truth, atol=1e-8)
    np.testing.assert_allclose(leave_one_out_tre(src, tgt, kind), 0.0, atol=1e-7)


def test_rigid_fit_is_a_rotation_even_for_mirrored_data() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(6, 3)) * 10
    tgt = src * [-1.0, 1.0, 1.0]  # a reflection: the best rotation is not it
    fit = fit_landmark_transform(src, tgt, "rigid").as_affine()
    assert np.linalg.det(fit[:3, :3]) == pytest.approx(1.0, abs=1e-12)


def test_similarity_scale_hand_case() -> None:
    src = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    fit = fit_landmark_transform(src, 2.5 * src, "similarity").as_affine()
    np.testing.assert_allclose(fit, np.diag([2.5, 2.5, 2.5, 1.0]), atol=1e-12)


def _fwm_independent(fid: np.ndarray, target: np.ndarray, fle2: float) -> float:
    """Fitzpatrick-West-Maurer 1998 eq. (46), written out again for the test."""
    c = fid - fid.mean(axis=0)
    r = target - fid.mean(axis=0)
    _, _, axes = np.linalg.svd(c)
    total = 0.0
    for e in axes:
        f2 = np.mean(np.linalg.norm(np.cross(c, e), axis=1) ** 2)
        d2 = np.linalg.norm(np.cross(r, e)) ** 2
        total += d2 / f2
    return float(np.sqrt(fle2 / len(fid) * (1 + total / 3)))


def test_fitzpatrick_predicted_tre_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    fid = rng.uniform(-40, 40, size=(10, 3)) * [1.0, 0.7, 0.5]  # anisotropic configuration
    targets = np.array([[0.0, 0.0, 0.0], [30.0, 10.0, -5.0], [-15.0, 25.0, 15.0]])
    sigma = 1.0  # mm per axis, isotropic: <FLE^2> = 3 sigma^2
    truth = rotation_matrix(rng.normal(size=3), 40.0)
    truth[:3, 3] = [5.0, -3.0, 2.0]
    fid_t = fid @ truth[:3, :3].T + truth[:3, 3]
    tgt_t = targets @ truth[:3, :3].T + truth[:3, 3]
    errors = []
    for _ in range(200):
        noisy = fid_t + rng.normal(0.0, sigma, size=fid_t.shape)
        fit = fit_landmark_transform(fid, noisy, "rigid")
        errors.append(np.linalg.norm(fit.apply_points(targets) - tgt_t, axis=1))
    errors = np.asarray(errors)  # (200 trials, 3 targets)
    predicted = fitzpatrick_tre(fid, targets, np.sqrt(3) * sigma)
    independent = [_fwm_independent(fid, t, 3 * sigma**2) for t in targets]
    np.testing.assert_allclose(predicted, independent, rtol=1e-12)
    # the formula predicts the RMS TRE, <TRE^2>^(1/2): within 10% over 200 trials
    rms = np.sqrt(np.mean(errors**2, axis=0))
    np.testing.assert_allclose(rms, predicted, rtol=0.10)
    # targets away from the centroid are predicted (and observed) worse
    assert predicted[1] > 1.2 * predicted[0] and rms[1] > 1.2 * rms[0]
    # the mean TRE is below the RMS (Jensen) but close: 0.8 < mean / predicted <= 1.0
    ratio = errors.mean(axis=0) / predicted
    assert np.all(ratio > 0.8) and np.all(errors.mean(axis=0) <= rms)


def test_fle_estimated_from_fre() -> None:
    rng = np.random.default_rng(7)
    fid = rng.uniform(-40, 40, size=(10, 3))
    fre2 = []
    for _ in range(300):
        noisy = fid + rng.normal(0.0, 1.0, size=fid.shape)
        fit = fit_landmark_transform(fid, noisy, "rigid")
        fre2.append(np.mean(np.sum((fit.apply_points(fid) - noisy) ** 2, axis=1)))
    fle = fle_from_fre(float(np.sqrt(np.mean(fre2))), 10)
    assert fle == pytest.approx(np.sqrt(3.0), rel=0.05)


def test_csv_round_trip_and_alignment(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(-30, 30, size=(6, 3))
    truth = _true_transform(rng, "rigid")
    tgt = src @ truth[:3, :3].T + truth[:3, 3]
    tgt[0] += [0.5, 0.0, 0.0]  # one badly placed landmark
    lines = ["name,source_x,source_y,source_z,target_x,target_y,target_z"]
    lines += [",".join([f"p{i}"] + [f"{v:.12g}" for v in (*s, *t)]) for i, (s, t) in
              enumerate(zip(src, tgt, strict=True))]
    (tmp_path / "lm.csv").write_text("\n".join(lines) + "\n")
    lm = read_landmarks_csv(tmp_path / "lm.csv")
    assert lm.names[0] == "p0" and lm.source.shape == (6, 3)
    result = align_landmarks(tmp_path / "lm.csv", "rigid")
    summary = result.summary()
    assert summary["n_landmarks"] == 6.0
    # the misplaced landmark has the largest leave-one-out error
    assert int(np.argmax(result.loo_tre_mm)) == 0
    assert result.loo_tre_mm[0] > 0.3
    assert summary["fre_rms_mm"] > 0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("a,b\n1,2\n", "lacks columns"),
        ("source_x,source_y,source_z,target_x,target_y,target_z\n1,2,x,4,5,6\n",
         "line 2 holds a value that is not a number"),
        ("source_x,source_y,source_z,target_x,target_y,target_z\n", "has no rows"),
    ],
)
def test_bad_landmark_files(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "lm.csv").write_text(content)
    with pytest.raises(UserError) as info:
        read_landmarks_csv(tmp_path / "lm.csv")
    assert needle in str(info.value) and "lm.csv" in str(info.value)


def test_degenerate_configurations() -> None:
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0.0]])
    with pytest.raises(UserError, match="not collinear"):
        fit_landmark_transform(line, line, "rigid")
    plane = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])
    with pytest.raises(UserError, match="not coplanar"):
        fit_landmark_transform(plane, plane, "affine")
    with pytest.raises(UserError, match="at least 3 landmarks"):
        fit_landmark_transform(line[:2], line[:2], "rigid")
    with pytest.raises(UserError, match="kind 'warp' is invalid"):
        fit_landmark_transform(line, line, "warp")  # type: ignore[arg-type]
