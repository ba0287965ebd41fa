"""Registration uncertainty: perturbed placements and the spread of scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.landmarks import Landmarks, align_landmarks
from validation.uncertainty import (
    REGISTRATION_COLUMNS,
    landmark_perturbations,
    level_centre_mm,
    perturbed_affines,
    registration_spread,
)

BASE = np.array([[0.01, 0.0, 0.0, 1.0], [0.0, 0.02, 0.0, -2.0], [0.0, 0.0, 0.01, 0.5],
                 [0.0, 0.0, 0.0, 1.0]])


def test_level_centre() -> None:
    np.testing.assert_allclose(level_centre_mm(BASE, (11, 21, 31)),
                               [1.0 + 0.05, -2.0 + 0.2, 0.5 + 0.15])


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 10.0), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_perturbations_are_rigid_in_dmri_world(rot: float, trans: float, seed: int) -> None:
    out = perturbed_affines(BASE, (11, 21, 31), n=3, rotation_deg=rot, translation_mm=trans,
                            rng=seed)
    assert len(out) == 3
    for a in out:
        p = a @ np.linalg.inv(BASE)
        np.testing.assert_allclose(p[:3, :3] @ p[:3, :3].T, np.eye(3), atol=1e-10)
        assert np.linalg.det(p[:3, :3]) == pytest.approx(1.0)
        np.testing.assert_allclose(p[3], [0, 0, 0, 1])


def test_zero_sigma_is_identity_and_rotation_is_about_the_centre() -> None:
    same = perturbed_affines(BASE, (11, 21, 31), n=2, rotation_deg=0.0, translation_mm=0.0,
                             rng=0)
    for a in same:
        np.testing.assert_allclose(a, BASE, atol=1e-12)
    centre = level_centre_mm(BASE, (11, 21, 31))
    for a in perturbed_affines(BASE, (11, 21, 31), n=4, rotation_deg=5.0,
                               translation_mm=0.0, rng=1):
        # no translation: the level's centre stays where it was
        np.testing.assert_allclose(level_centre_mm(a, (11, 21, 31)), centre, atol=1e-12)


def test_draws_are_seeded_and_independent_of_n() -> None:
    a = perturbed_affines(BASE, (4, 4, 4), n=2, rotation_deg=2.0, translation_mm=0.1, rng=7)
    b = perturbed_affines(BASE, (4, 4, 4), n=5, rotation_deg=2.0, translation_mm=0.1, rng=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = perturbed_affines(BASE, (4, 4, 4), n=2, rotation_deg=2.0, translation_mm=0.1, rng=8)
    assert not np.allclose(a[0], c[0])
    angles = [np.degrees(np.arccos(np.clip((np.trace((x @ np.linalg.inv(BASE))[:3, :3]) - 1)
                                           / 2, -1, 1)))
              for x in perturbed_affines(BASE, (4, 4, 4), n=400, rotation_deg=2.0,
                                         translation_mm=0.0, rng=3)]
    # |N(0, 2)|: mean 2 * sqrt(2 / pi) = 1.596 degrees
    assert np.mean(angles) == pytest.approx(2.0 * np.sqrt(2 / np.pi), rel=0.1)


def test_landmark_perturbations_follow_the_landmark_error() -> None:
    gen = np.random.default_rng(0)
    src = gen.uniform(0, 10, size=(8, 3))
    exact = Landmarks(tuple(f"L{i}" for i in range(8)), src, src + [1.0, 2.0, 3.0])
    fit = align_landmarks(exact, "rigid")
    for a in landmark_perturbations(BASE, fit, exact, n=3, rng=0):
        np.testing.assert_allclose(a, BASE, atol=1e-9)  # exact landmarks: no spread
    noisy = Landmarks(exact.names, src, exact.target + gen.normal(0, 0.5, size=src.shape))
    fit = align_landmarks(noisy, "rigid")
    moved = landmark_perturbations(BASE, fit, noisy, n=50, rng=1)
    shifts = [np.linalg.norm((a - BASE)[:3, 3]) for a in moved]
    assert np.median(shifts) > 0.01
    # the spread is of the order of the FLE over sqrt(N), not of the scale of the layout
    assert np.median(shifts) < 3 * fit.fle_rms_mm


def test_registration_spread_by_hand() -> None:
    base = pd.DataFrame({"case": ["c1"] * 3 + ["c2"] * 3, "model": "m",
                         "acc": [0.5, 0.6, 0.7, 0.8, 0.9, np.nan]})
    rows = []
    # perturbation k shifts every value by 0.1 k; medians per case: c1 0.6 + 0.1 k
    for k in range(3):
        for case, vals in (("c1", [0.5, 0.6, 0.7]), ("c2", [0.8, 0.9, np.nan])):
            rows += [{"case": case, "model": "m", "perturbation": k, "acc": v + 0.1 * k}
                     for v in vals]
    out = registration_spread(base, pd.DataFrame(rows), metrics=["acc"])
    assert list(out.columns) == list(REGISTRATION_COLUMNS)

    def get(case: str, stat: str) -> float:
        r = out[(out.case == case) & (out.statistic == stat)]
        assert len(r) == 1
        return float(r.value.iloc[0])

    assert get("c1", "score") == pytest.approx(0.6)
    assert get("c1", "perturbed_median") == pytest.approx(0.7)
    assert get("c1", "std") == pytest.approx(0.1)
    assert get("c1", "min") == pytest.approx(0.6)
    assert get("c1", "max") == pytest.approx(0.8)
    assert get("c1", "range") == pytest.approx(0.2)
    assert get("c1", "n") == 3
    assert get("c2", "score") == pytest.approx(0.85)
    # all cases pooled: medians of [0.5, 0.6, 0.7, 0.8, 0.9] + 0.1 k = 0.7, 0.8, 0.9
    assert get("all", "score") == pytest.approx(0.7)
    assert get("all", "std") == pytest.approx(0.1)
    assert set(out.level) == {"all"}
    assert registration_spread(base, pd.DataFrame(), metrics=["acc"]).empty
