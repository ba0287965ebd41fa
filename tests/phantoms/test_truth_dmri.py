import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phantom_helpers import small_spec

import phantoms
from phantoms import build_phantom
from phantoms.dmri import signal_fraction, voxel_sums


def _axial_deg(a, b):
    return np.degrees(np.arccos(np.clip(np.abs(np.sum(a * b, axis=-1)), 0, 1)))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    geometry=st.sampled_from(["single", "crossing", "three-way", "kissing"]),
    angle=st.floats(30.0, 90.0),
    kappa=st.sampled_from([np.inf, 5.0, 40.0]),
    seed=st.integers(0, 2**16),
)
def test_truth_and_noise_free_signal_properties(geometry, angle, kappa, seed):
    ph = build_phantom(small_spec(geometry=geometry, crossing_angle_deg=angle, kappa=kappa,
                                  seed=seed))
    t = ph.truth()
    x, y, z = ph.grid.shape
    k = ph.geometry.n_bundles
    assert t.peaks.shape == (x, y, z, k, 3) and t.fractions.shape == (x, y, z, k)
    norms = np.linalg.norm(t.peaks, axis=-1)
    present = t.fractions > 0
    np.testing.assert_allclose(norms[present], 1.0, atol=1e-9)
    assert np.all(norms[~present] == 0)
    assert np.all((t.fractions >= 0) & (t.fractions <= 1))
    assert np.all(t.fractions.sum(-1) <= 1 + 1e-12)
    np.testing.assert_array_equal(t.nufo, present.sum(-1))
    np.testing.assert_array_equal(t.mask, t.nufo > 0)
    s = ph.simulate_dmri()
    assert np.all(s.data > 0) and np.all(s.data <= s.s0 * (1 + 1e-12))
    np.testing.assert_allclose(s.data[..., s.bvals == 0], s.s0, rtol=1e-12)
    # the truth FOD integrates to 1 where there is fibre: c00 = 1 / sqrt(4 pi)
    fib = t.fod_sh[..., 0] != 0
    np.testing.assert_allclose(t.fod_sh[fib][:, 0], 1 / np.sqrt(4 * np.pi), rtol=1e-9)


def test_same_seed_identical_arrays_and_noise_seeded():
    spec = small_spec(geometry="crossing", snr=20.0)
    a, b = build_phantom(spec), build_phantom(spec)
    np.testing.assert_array_equal(a.truth().peaks, b.truth().peaks)
    np.testing.assert_array_equal(a.truth().fod_sh, b.truth().fod_sh)
    np.testing.assert_array_equal(a.simulate_dmri(rng=3).data, b.simulate_dmri(rng=3).data)
    assert not np.array_equal(a.simulate_dmri(rng=3).data, a.simulate_dmri(rng=4).data)


def test_rician_noise_level_matches_snr():
    spec = small_spec(snr=10.0)
    ph = build_phantom(spec)
    clean = build_phantom(spec.replace(snr=None)).simulate_dmri().data
    noisy = ph.simulate_dmri(rng=0).data
    b0 = ph.simulate_dmri().bvals == 0
    # at S0 = 100 and sigma = 10 the Rician b0 is nearly Gaussian: std of (noisy - clean)
    assert np.std(noisy[..., b0] - clean[..., b0]) == pytest.approx(10.0, rel=0.1)


def test_rotation_by_90_degrees_rotates_truth_and_signal():
    spec = small_spec(geometry="crossing", crossing_angle_deg=70.0, kappa=30.0)
    rot = spec.replace(rotation_deg=(0.0, 0.0, 90.0))
    a, b = build_phantom(spec), build_phantom(rot)
    r = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    n = spec.grid_size
    i, j, k = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    # voxel (i, j, k) moves to (n - 1 - j, i, k)
    ta, tb = a.truth(), b.truth()
    tb_moved = (n - 1 - j, i, k)
    np.testing.assert_allclose(tb.fractions[tb_moved], ta.fractions, atol=1e-9)
    present = ta.fractions > 0
    err = _axial_deg(tb.peaks[tb_moved][present], ta.peaks[present] @ r.T)
    assert err.max() < 1e-5
    # signal: S_rot(R x, g) = S(x, R^T g)
    sch = phantoms.get_scheme(spec.scheme)
    sums = voxel_sums(a.geometry, a.grid.shape, a.voxel_um, sch.bvals, sch.bvecs @ r,
                      sch.diffusivities)
    expected = signal_fraction(sums, sch.bvals, sch.bvecs @ r, sch.diffusivities)
    got = b.simulate_dmri().data[tb_moved] / 100.0
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-9, atol=1e-12)


def test_known_answer_dti_single_bundle_noise_free():
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    ph = build_phantom(phantoms.CaseSpec("s", geometry="single", snr=None,
                                         rotation_deg=(10.0, 25.0, 40.0)))
    t, s = ph.truth(), ph.simulate_dmri()
    fit = TensorModel(gradient_table(s.bvals, bvecs=s.bvecs)).fit(s.data)
    m = t.nufo == 1
    err = _axial_deg(fit.evecs[..., 0][m], t.peaks[m][:, 0])
    assert m.sum() > 100
    assert np.mean(err < 1.0) >= 0.95


def test_known_answer_csd_90_degree_crossing_snr50():
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction import peaks_from_model
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst

    ph = build_phantom(phantoms.CaseSpec("c", geometry="crossing", snr=50.0))
    t, s = ph.truth(), ph.simulate_dmri(rng=1)
    gtab = gradient_table(s.bvals, bvecs=s.bvecs)
    response, _ = auto_response_ssst(gtab, s.data, roi_radii=10, fa_thr=0.5)
    csd = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8)
    two = t.nufo == 2
    pk = peaks_from_model(csd, s.data, default_sphere, relative_peak_threshold=0.3,
                          min_separation_angle=20, mask=two, npeaks=3)
    ok = []
    for v in zip(*np.nonzero(two), strict=True):
        est = pk.peak_dirs[v]
        est = est[np.linalg.norm(est, axis=1) > 0]
        ok.append(len(est) > 0 and all(
            _axial_deg(est, p[None]).min() < 8.0 for p in t.peaks[v][:2]))
    assert two.sum() > 50
    assert np.mean(ok) >= 0.90


def _sh_maxima(sh, sphere, n=2, threshold=0.1):
    from dipy.direction.peaks import peak_directions
    from dipy.reconst.shm import sh_to_sf

    sf = sh_to_sf(sh, sphere, sh_order_max=8, basis_type="descoteaux07", legacy=False)
    dirs, _, _ = peak_directions(sf, sphere, relative_peak_threshold=threshold,
                                 min_separation_angle=10)
    return dirs[:n]


def test_truth_fod_of_90_degree_crossing_has_maxima_at_the_peaks():
    from dipy.data import get_sphere

    sphere = get_sphere(name="repulsion724").subdivide(n=1)
    ph = build_phantom(phantoms.CaseSpec("c", geometry="crossing", snr=None))
    t = ph.truth()
    two = np.argwhere(t.nufo == 2)
    assert len(two) > 50
    errors = []
    for v in map(tuple, two[:: max(1, len(two) // 40)]):
        dirs = _sh_maxima(t.fod_sh[v], sphere)
        assert len(dirs) == 2
        errors += [_axial_deg(dirs, p[None]).min() for p in t.peaks[v][:2]]
    assert np.max(errors) < 5.0


def test_order8_delta_pair_merges_below_documented_angle():
    # docs/phantoms.md: two equal delta functions truncated at order 8 give one maximum
    # below ~30 degrees, two above (maxima above half the largest).
    from dipy.data import get_sphere
    from dipy.reconst.shm import real_sh_descoteaux

    sphere = get_sphere(name="repulsion724").subdivide(n=1)

    def n_maxima(angle):
        a = np.radians(angle) / 2
        u = np.array([[np.cos(a), np.sin(a), 0], [np.cos(a), -np.sin(a), 0]])
        th, ph = np.arccos(u[:, 2]), np.arctan2(u[:, 1], u[:, 0])
        y, _, _ = real_sh_descoteaux(8, th, ph, legacy=False)
        return len(_sh_maxima(y.mean(0), sphere, n=5, threshold=0.5))

    assert n_maxima(26.0) == 1
    assert n_maxima(34.0) == 2
    assert n_maxima(60.0) == 2


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rot=st.tuples(*[st.floats(-180.0, 180.0, allow_nan=False)] * 3))
def test_any_rotation_rotates_the_truth_peaks(rot):
    from scipy.spatial.transform import Rotation

    spec = small_spec(kappa=np.inf, undulation_amplitude_um=0.0, rotation_deg=rot)
    t = build_phantom(spec).truth()
    axis = Rotation.from_euler("xyz", rot, degrees=True).as_matrix() @ [1.0, 0.0, 0.0]
    first = t.peaks[t.nufo == 1][:, 0]
    assert len(first) > 5
    assert _axial_deg(first, axis[None]).max() < 1e-4  # arccos near 1: ~1e-6 deg is eps


def test_curved_bundle_peaks_follow_the_arc_tangent():
    # arc of radius 0.8 FOV about a pivot 0.8 FOV above the grid centre along j, in the
    # i-j plane: the tangent at a point is perpendicular to its radial vector
    spec = small_spec(geometry="curved", kappa=np.inf, undulation_amplitude_um=0.0)
    ph = build_phantom(spec)
    t = ph.truth()
    fov = spec.fov_um
    pivot = np.array([fov / 2, fov / 2 + 0.8 * fov, fov / 2])
    vox = np.argwhere(t.nufo == 1)
    centres = (vox + 0.5) * ph.voxel_um
    radial = centres - pivot
    tangent = np.stack([-radial[:, 1], radial[:, 0], np.zeros(len(radial))], axis=1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    err = _axial_deg(t.peaks[tuple(vox.T)][:, 0], tangent)
    assert len(vox) > 10
    # a 100 um voxel spans ~12 degrees of a 480 um arc: its mean direction is the
    # tangent near its centre
    assert np.median(err) < 3.0 and err.max() < 8.0
