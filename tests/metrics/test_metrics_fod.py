"""ACC, JSD, sphere weights and ODI: hand-computed answers and properties."""

import numpy as np
import pytest
from dipy.core.sphere import HemiSphere, Sphere
from dipy.data import get_sphere
from dipy.reconst.shm import sh_to_sf_matrix
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics import (
    MetricInputError,
    acc,
    dispersion_error,
    jsd,
    odi_from_sh,
    sh_order_from_ncoeffs,
    sphere_weights,
)

SPHERE = get_sphere(name="repulsion724")


def _basis(sphere, order=8):
    """(n_coeffs, V) descoteaux07 (legacy=False) basis on ``sphere``."""
    return sh_to_sf_matrix(sphere, sh_order_max=order, basis_type="descoteaux07",
                           legacy=False, return_inv=False)


_PINV8 = np.linalg.pinv(_basis(SPHERE))


def _fit_sh(values, sphere=SPHERE, order=8):
    """Least-squares SH fit (descoteaux07, legacy=False) of samples on ``sphere``."""
    if sphere is SPHERE and order == 8:
        return np.asarray(values) @ _PINV8
    coef, *_ = np.linalg.lstsq(_basis(sphere, order).T, np.asarray(values).T, rcond=None)
    return coef.T


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_order_from_ncoeffs():
    assert [sh_order_from_ncoeffs(n) for n in (1, 6, 15, 28, 45, 66)] == [0, 2, 4, 6, 8, 10]
    for bad in (0, 2, 9, 44, 46):
        with pytest.raises(MetricInputError, match="not an even-order"):
            sh_order_from_ncoeffs(bad)


def test_acc_coefficients_by_hand():
    u = [3.0, 1.0, 2.0, 0.0, 0.0, 0.0]
    v = [1.0, 2.0, 1.0, 0.0, 0.0, 2.0]
    # l >= 2 only: (1*2 + 2*1) / sqrt((1 + 4) * (4 + 1 + 4)); l = 0 terms are ignored
    assert acc(u, v) == pytest.approx(4 / np.sqrt(45))


def test_acc_of_two_functions_by_hand():
    # f = z^2, g = x^2 on the unit sphere. With E the mean over the sphere:
    # E[z^2] = 1/3, E[z^4] = 1/5, E[x^2 z^2] = 1/15, so the zero-mean parts give
    # E[f0 g0] = 1/15 - 1/9 = -2/45 and E[f0^2] = 1/5 - 1/9 = 4/45: ACC = -1/2.
    x, _, z = SPHERE.vertices.T
    f, g = _fit_sh(z**2, order=4), _fit_sh(x**2, order=4)
    assert acc(f, g) == pytest.approx(-0.5, abs=1e-10)
    # and f = z^2 against h = z^2 + x^2 (zero mean part 1/3 - y^2, E[f0 h0] = 2/45,
    # E[h0^2] = 4/45): ACC = (2/45) / (4/45) = 1/2
    h = _fit_sh(z**2 + x**2, order=4)
    assert acc(f, h) == pytest.approx(0.5, abs=1e-10)


def test_acc_undefined_and_errors():
    iso = np.array([1.0, 0, 0, 0, 0, 0])
    assert np.isnan(acc(iso, [1.0, 1, 0, 0, 0, 0]))
    with pytest.raises(MetricInputError, match="SH order 8 .* order 4"):
        acc(np.ones(45), np.ones(15))
    with pytest.raises(MetricInputError, match="not an even-order"):
        acc(np.ones(44), np.ones(44))
    with pytest.raises(MetricInputError, match="expected sh_order_max=6"):
        acc(np.ones(45), np.ones(45), sh_order_max=6)
    with pytest.raises(MetricInputError, match="do not broadcast"):
        acc(np.ones((3, 45)), np.ones((4, 45)))


coeffs = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).normal(size=(2, 45)))


@settings(max_examples=40, deadline=None)
@given(coeffs, st.integers(0, 2**32 - 1))
def test_acc_properties(uv, seed):
    u, v = uv
    assert acc(u, u) == pytest.approx(1.0)
    a = acc(u, v)
    assert -1.0 <= a <= 1.0
    assert a == pytest.approx(acc(v, u))
    assert acc(u, -u) == pytest.approx(-1.0)
    # invariant to scaling and to the l = 0 term
    w = 3.0 * v
    w[0] = 100.0
    assert acc(u, w) == pytest.approx(a)
    # rotating both functions together: resample f(R^T x) on the sphere and refit
    rot = _random_rotation(np.random.default_rng(seed))
    rotated = Sphere(xyz=SPHERE.vertices @ rot)  # rows R^T x
    basis_rot = _basis(rotated)
    ur, vr = _fit_sh(u @ basis_rot), _fit_sh(v @ basis_rot)
    assert not np.allclose(ur, u)
    assert acc(ur, vr) == pytest.approx(a, abs=1e-8)


def test_sphere_weights_integrate():
    w = sphere_weights(SPHERE)
    assert w.shape == (len(SPHERE.vertices),) and w.sum() == pytest.approx(1.0)
    x, y, z = SPHERE.vertices.T
    assert w @ z**2 == pytest.approx(1 / 3, abs=2e-3)
    assert w @ (x**2 * z**2) == pytest.approx(1 / 15, abs=2e-3)
    hemi = HemiSphere.from_sphere(get_sphere(name="symmetric362"))
    wh = sphere_weights(hemi)
    assert wh.sum() == pytest.approx(1.0)
    assert wh @ hemi.vertices[:, 2] ** 2 == pytest.approx(1 / 3, abs=5e-3)


def test_jsd_by_hand():
    w = np.full(4, 0.25)
    p = [2.0, 2.0, 0.0, 0.0]  # already normalised: sum w p = 1
    q = [2.0, 0.0, 2.0, 0.0]
    # m = [2, 1, 1, 0]: 1/2 (1/4 * 2 * log2(2)) * 2 = 1/2
    assert jsd(p, q, weights=w) == pytest.approx(0.5)
    # scale does not matter, negatives are clipped
    assert jsd([4.0, 4.0, -1.0, 0.0], [7.0, 0.0, 7.0, -3.0], weights=w) == pytest.approx(0.5)
    # non-uniform weights: the mass of vertex 0 decides the overlap
    w2 = np.array([0.5, 0.25, 0.25, 0.0])
    # p ~ [1, 1, 0, *] -> normalised [4/3, 4/3, 0, *]; q -> [4/3, 0, 4/3, *]
    # overlap mass on vertex 0 = 2/3; JSD = 1/3 (the non-shared mass contributes fully)
    assert jsd([1.0, 1.0, 0.0, 5.0], [1.0, 0.0, 1.0, 5.0], weights=w2) == pytest.approx(1 / 3)


odfs = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).random((2, 362)) - 0.2)


@settings(max_examples=40, deadline=None)
@given(odfs)
def test_jsd_properties(pq):
    sphere = HemiSphere.from_sphere(SPHERE)
    p, q = pq
    d = jsd(p, q, sphere)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(jsd(q, p, sphere), abs=1e-12)
    assert jsd(p, p, sphere) == 0.0
    assert jsd(p, 5.0 * p, sphere) == pytest.approx(0.0, abs=1e-12)
    disjoint_p = np.where(np.arange(362) % 2 == 0, np.abs(p) + 0.1, 0.0)
    disjoint_q = np.where(np.arange(362) % 2 == 1, np.abs(q) + 0.1, 0.0)
    assert jsd(disjoint_p, disjoint_q, sphere) == pytest.approx(1.0, abs=1e-12)


def test_jsd_undefined_and_errors():
    sphere = HemiSphere.from_sphere(SPHERE)
    out = jsd(np.stack([np.zeros(362), np.ones(362), np.full(362, np.nan)]), np.ones(362), sphere)
    assert np.isnan(out[0]) and out[1] == 0.0 and np.isnan(out[2])
    with pytest.raises(MetricInputError, match="362 values .* 724 vertices"):
        jsd(np.ones(362), np.ones(362), SPHERE)
    with pytest.raises(MetricInputError, match="last axes must match"):
        jsd(np.ones(362), np.ones(100), sphere)
    with pytest.raises(MetricInputError, match="sphere or explicit"):
        jsd(np.ones(4), np.ones(4))
    assert jsd(np.ones(362, np.float32), np.ones(362), sphere) == 0.0


def _watson_sh(kappa, axis=(0.0, 0.0, 1.0)):
    dense = SPHERE.subdivide(n=1)
    f = np.exp(kappa * (dense.vertices @ np.asarray(axis)) ** 2)
    return _fit_sh(f, sphere=dense)


@pytest.mark.parametrize("kappa", [0.5, 2.0, 8.0])
def test_odi_of_watson(kappa):
    expected = 2 / np.pi * np.arctan(1 / kappa)
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    assert odi_from_sh(_watson_sh(kappa, axis)) == pytest.approx(expected, abs=1e-4)


def test_odi_limits_and_dispersion_error():
    iso = np.zeros(45)
    iso[0] = 1.0
    assert odi_from_sh(iso) == pytest.approx(1.0)
    assert np.isnan(odi_from_sh(-iso))
    a, b = _watson_sh(2.0), _watson_sh(8.0)
    expected = 2 / np.pi * (np.arctan(1 / 2) - np.arctan(1 / 8))
    assert dispersion_error(a, b) == pytest.approx(expected, abs=2e-4)
    assert dispersion_error(b, a) == dispersion_error(a, b)
    assert dispersion_error(a, a) == 0.0
    with pytest.raises(MetricInputError, match="order"):
        dispersion_error(np.ones(45), np.ones(28))
