import numpy as np
import pytest

from phantoms.geometry import (
    RADIUS_MAX_UM,
    RADIUS_MIN_UM,
    build_geometry,
    pack_cross_section,
    sample_radii,
    sample_watson,
)


def test_watson_infinite_kappa_is_exactly_the_axis():
    v = sample_watson(10, np.inf, 0)
    np.testing.assert_array_equal(v, np.tile([0.0, 0.0, 1.0], (10, 1)))


@pytest.mark.parametrize("kappa", [5.0, 50.0])
def test_watson_concentration_matches_theory(kappa):
    # For large kappa the Watson polar angle has E[sin^2 theta] ~ 1/kappa (1 - ...):
    # compare with the exact expectation by numerical integration.
    v = sample_watson(200_000, kappa, 1)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    t = np.linspace(0, 1, 20001)
    w = np.exp(kappa * (t**2 - 1))
    expected = np.trapezoid((1 - t**2) * w, t) / np.trapezoid(w, t)
    assert np.mean(1 - v[:, 2] ** 2) == pytest.approx(expected, rel=0.02)


def test_radii_are_clipped_gamma():
    r = sample_radii(50_000, 1.0, 4.0, 0)
    assert r.min() >= RADIUS_MIN_UM and r.max() <= RADIUS_MAX_UM
    assert np.mean(r) == pytest.approx(1.0, rel=0.05)


def test_packing_reaches_target_without_overlap():
    centres, radii = pack_cross_section(100.0, 0.45, 2.0, 4.0, 3)
    achieved = np.sum(radii**2) / 100.0**2
    assert achieved == pytest.approx(0.45, abs=0.01)
    assert np.all(np.hypot(*centres.T) + radii <= 100.0 + 1e-9)
    d = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert np.all(d >= (radii[:, None] + radii[None]))


def test_same_seed_same_geometry_and_different_seed_differs(make_spec):
    spec = make_spec(geometry="crossing")
    a, b = build_geometry(spec, 5), build_geometry(spec, 5)
    np.testing.assert_array_equal(a.p0, b.p0)
    np.testing.assert_array_equal(a.tube_radius, b.tube_radius)
    c = build_geometry(spec, 6)
    assert a.p0.shape != c.p0.shape or not np.array_equal(a.p0, c.p0)


@pytest.mark.parametrize("geometry", ["single", "crossing", "three-way", "curved", "fanning",
                                      "kissing"])
def test_every_geometry_builds_segments_inside_the_box(make_spec, geometry):
    spec = make_spec(geometry=geometry, n_vessels=1)
    g = build_geometry(spec)
    assert g.n_bundles == {"crossing": 2, "three-way": 3, "kissing": 2}.get(geometry, 1)
    mid = 0.5 * (g.p0 + g.p1)
    inside = np.all((mid >= 0) & (mid < g.fov_um), axis=1)
    assert inside.sum() > 100
    assert (g.tube_bundle == -1).sum() == 1  # the vessel
    seg_len = np.linalg.norm(g.p1 - g.p0, axis=1)
    assert np.all(seg_len > 0) and np.all(seg_len < 3 * spec.step_um)


def test_crossing_bundle_directions_are_at_the_angle(make_spec):
    spec = make_spec(geometry="crossing", crossing_angle_deg=50.0, kappa=np.inf,
                     undulation_amplitude_um=0.0)
    g = build_geometry(spec)
    d = g.p1 - g.p0
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = g.tube_bundle[g.tube]
    m0, m1 = np.mean(d[b == 0], axis=0), np.mean(d[b == 1], axis=0)
    m0 /= np.linalg.norm(m0)
    m1 /= np.linalg.norm(m1)
    assert np.degrees(np.arccos(abs(m0 @ m1))) == pytest.approx(50.0, abs=1e-6)
