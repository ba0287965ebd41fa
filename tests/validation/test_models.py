"""fit_case: the runner's interface to dMRI models (shapes, baselines, failures, parallel)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.models import (
    Capabilities,
    ModelFailure,
    ModelNotFoundError,
    ModelSpec,
    fit_case,
)
from validation.models.baselines import UNIFORM_C00
from validation.models.conformance import tiny_phantom

T = "validation.models.testing"


@pytest.fixture(scope="module")
def phantom():
    return tiny_phantom(shape=(6, 4, 2), snr=30, rng=1)


@pytest.fixture(scope="module")
def clean():
    return tiny_phantom(shape=(6, 2, 1), snr=None)


def spec(name, label="m", **kw):
    params = kw.pop("params", {})
    return ModelSpec(name=name, label=label, display_name=name, params=params, **kw)


def fit(ph, name, **kw):
    params = kw.pop("params", {})
    timeout_s = kw.pop("timeout_s", 120)
    return fit_case(spec(name, params=params, timeout_s=timeout_s), ph.data, ph.bvals, ph.bvecs,
                    ph.mask, truth=ph.truth, **kw)


def angle_deg(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.abs(np.sum(a * b, axis=-1)) / (
            np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        )
    return np.degrees(np.arccos(np.clip(cos, 0, 1)))


def n_peaks(peaks):
    return (np.linalg.norm(peaks, axis=-1) > 0).sum(axis=-1)


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("label", ["CSD", "csd-8", "", "csd 8", "é"])
def test_spec_rejects_bad_labels(label):
    with pytest.raises(UserError, match="label"):
        ModelSpec(name="csd", label=label, display_name="CSD", params={})


def test_spec_rejects_bad_timeout():
    with pytest.raises(UserError, match="timeout_s"):
        ModelSpec(name="csd", label="csd", display_name="CSD", params={}, timeout_s=0)


def test_unknown_model_is_a_user_error_with_a_suggestion(clean):
    with pytest.raises(ModelNotFoundError, match="did you mean csd"):
        fit(clean, "cdd")
    assert issubclass(ModelNotFoundError, UserError)


def test_bad_input_shapes_are_user_errors(clean):
    with pytest.raises(UserError, match="bvecs has shape"):
        fit_case(spec("dti"), clean.data, clean.bvals, clean.bvecs[:-1], clean.mask)
    with pytest.raises(UserError, match="mask has shape"):
        fit_case(spec("dti"), clean.data, clean.bvals, clean.bvecs, clean.mask[:-1])


# ----------------------------------------------------------------------------- dti and csd


@pytest.mark.parametrize("name", ["dti", "csd"])
def test_outputs_follow_the_contract(phantom, name):
    out = fit(phantom, name)
    shape = phantom.mask.shape
    assert out.peaks.shape == shape + (5, 3) and out.peaks.dtype == np.float64
    assert out.peak_values.shape == shape + (5,)
    assert out.sh.shape == shape + (45,) and out.sh.dtype == np.float64
    norms = np.linalg.norm(out.peaks, axis=-1)
    assert np.all((norms == 0) | (np.abs(norms - 1) < 1e-9))
    assert np.all(out.peaks[~phantom.mask] == 0) and np.all(out.sh[~phantom.mask] == 0)
    assert np.all(out.peak_values[norms == 0] == 0)
    # sorted by decreasing value
    assert np.all(np.diff(out.peak_values, axis=-1) <= 1e-12)
    assert out.peak_params["relative_peak_threshold"] == 0.5
    assert out.peak_params["min_separation_angle"] == 25.0
    assert out.peak_params["npeaks"] == 5
    assert out.cached is False and out.fit_seconds > 0


@pytest.mark.parametrize("name", ["dti", "csd"])
def test_single_fibre_voxels_are_within_5_degrees(phantom, name):
    out = fit(phantom, name)
    single = phantom.truth.nufo == 1
    err = angle_deg(out.peaks[single][:, 0], phantom.truth.peaks[single][:, 0])
    assert np.median(err) < 5.0


def test_dti_gives_one_peak_and_csd_resolves_the_90_degree_crossing(phantom):
    crossing90 = np.zeros(phantom.mask.shape, bool)
    ref = phantom.truth.peaks
    crossing90[(phantom.truth.nufo == 2) & (angle_deg(ref[..., 0, :], ref[..., 1, :]) > 85)] = True
    assert crossing90.sum() >= 2
    dti = fit(phantom, "dti")
    csd = fit(phantom, "csd")
    assert np.all(n_peaks(dti.peaks)[phantom.mask] == 1)
    assert np.all(n_peaks(csd.peaks)[crossing90] == 2)
    for v in zip(*np.nonzero(crossing90), strict=True):
        est, tru = csd.peaks[v][:2], ref[v]
        # best one-to-one pairing of two peaks
        e = min(angle_deg(est[0], tru[0]) + angle_deg(est[1], tru[1]),
                angle_deg(est[0], tru[1]) + angle_deg(est[1], tru[0]))
        assert e / 2 < 10.0


def test_csd_records_its_estimated_response(phantom):
    out = fit(phantom, "csd")
    l1, l2, l3 = out.details["response_evals"]
    # the phantom's single fibres have eigenvalues (1.7, 0.3, 0.3) um^2/ms
    assert l1 == pytest.approx(1.7e-3, rel=0.15)
    assert l2 == pytest.approx(0.3e-3, rel=0.3)
    assert out.details["response_voxels"] >= 1


def test_csd_with_a_given_response_uses_it(clean):
    a = fit(clean, "csd", params={"response": ((1.7e-3, 0.3e-3, 0.3e-3), 100.0)})
    assert "response_evals" not in a.details
    single = clean.truth.nufo == 1
    # noise-free, the exact response: refined peaks are far closer than the 8 degree sphere
    assert np.max(angle_deg(a.peaks[single][:, 0], clean.truth.peaks[single][:, 0])) < 1.0


# ----------------------------------------------------------------------------- SH handling


def test_sh_of_an_sh_model_equals_its_own_coefficients_in_the_new_basis(clean):
    """csa gives legacy-basis SH; our projection of its ODF must equal the exact conversion."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.shm import CsaOdfModel, convert_sh_from_legacy

    out = fit(clean, "csa")
    gtab = gradient_table(clean.bvals, bvecs=clean.bvecs, b0_threshold=50)
    raw = CsaOdfModel(gtab, sh_order_max=8, smooth=0.006).fit(clean.data[clean.mask])
    expected = convert_sh_from_legacy(raw.shm_coeff, "descoteaux07")
    np.testing.assert_allclose(out.sh[clean.mask], expected, atol=1e-8 * np.abs(expected).max())


def test_lower_order_sh_are_zero_padded(clean):
    out = fit(clean, "csa", params={"sh_order_max": 4}, sh_order_max=8)
    scale = np.abs(out.sh).max()
    assert np.abs(out.sh[..., 15:]).max() < 1e-12 * scale  # order 4 projects to order 4
    assert np.abs(out.sh[clean.mask][:, 3:15]).max() > 1e-3 * scale


def test_output_sh_order_can_be_chosen(clean):
    out = fit(clean, "csd", sh_order_max=6)
    assert out.sh.shape == clean.mask.shape + (28,)


# ----------------------------------------------------------------------------- baselines


def test_oracle_returns_the_truth(phantom):
    out = fit(phantom, "oracle")
    m = phantom.mask
    np.testing.assert_array_equal(out.sh[m], phantom.truth.fod_sh[m])
    k = phantom.truth.peaks.shape[-2]
    # equal fractions: the stable sort keeps the truth's order
    np.testing.assert_array_equal(out.peaks[m][:, :k], phantom.truth.peaks[m])
    assert np.all(out.peaks[..., k:, :] == 0)
    np.testing.assert_array_equal(out.peak_values[m][:, :k], phantom.truth.fractions[m])
    assert out.capabilities.needs_truth


def test_oracle_without_truth_fails_cleanly(clean):
    with pytest.raises(ModelFailure, match="needs the ground truth") as info:
        fit_case(spec("oracle"), clean.data, clean.bvals, clean.bvecs, clean.mask)
    assert info.value.stage == "capabilities"


def test_isotropic_has_no_peaks_and_only_l0(phantom):
    out = fit(phantom, "isotropic")
    assert np.all(out.peaks == 0) and np.all(out.peak_values == 0)
    assert np.all(out.sh[..., 1:] == 0)
    np.testing.assert_array_equal(out.sh[phantom.mask][:, 0], UNIFORM_C00)
    assert np.all(out.sh[~phantom.mask] == 0)


# ----------------------------------------------------------------------------- multi-shell


def test_multi_shell_model_on_single_shell_fails_with_the_reason(clean):
    with pytest.raises(ModelFailure, match="needs a multi-shell scheme.*has 1") as info:
        fit(clean, "msmt-csd")
    assert info.value.stage == "capabilities"


def test_msmt_csd_on_a_multi_shell_scheme():
    ph = tiny_phantom(shape=(6, 2, 1), shells=(1000.0, 2000.0, 3000.0), snr=None)
    out = fit(ph, "msmt-csd")
    single = ph.truth.nufo == 1
    assert np.median(angle_deg(out.peaks[single][:, 0], ph.truth.peaks[single][:, 0])) < 5.0
    assert out.capabilities.multi_shell_only


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("model", "stage", "pattern"),
    [
        ("RaisingModel", "fit", r"^ValueError: this model always fails$"),
        ("NaNModel", "output", r"shm_coeff contains NaN or Inf in \d+ of \d+ voxels"),
        ("WrongShapeModel", "output", r"odf\(sphere\) has shape .*361\); expected .*362\)"),
        ("CrashingModel", "worker", r"died without a result \(exit code 3\)"),
    ],
)
def test_model_failures_are_caught_with_their_reason(clean, model, stage, pattern):
    with pytest.raises(ModelFailure) as info:
        fit(clean, f"{T}:{model}")
    assert re.search(pattern, info.value.reason), info.value.reason
    assert info.value.stage == stage
    assert str(info.value) == f"{stage}: {info.value.reason}"


def test_a_model_sleeping_past_its_timeout_is_stopped(clean):
    t0 = time.monotonic()
    with pytest.raises(ModelFailure, match=r"exceeded timeout_s=1 s") as info:
        fit(clean, f"{T}:SleepingModel", timeout_s=1)
    elapsed = time.monotonic() - t0
    assert info.value.stage == "timeout"
    assert elapsed < 5.0


def test_timeout_stops_the_chunk_workers_too(clean):
    """With jobs=2 the fit runs in a pool inside the worker; all of it is killed."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(ModelFailure, match="timeout"):
        fit(clean, f"{T}:SleepingModel", timeout_s=1, jobs=2, chunk_voxels=2)
    assert set(multiprocessing.active_children()) <= before


def test_a_failure_leaves_the_next_fit_unchanged(clean):
    a = fit(clean, "dti")
    with pytest.raises(ModelFailure):
        fit(clean, f"{T}:RaisingModel")
    b = fit(clean, "dti")
    np.testing.assert_array_equal(a.peaks, b.peaks)


class _NoODF:
    name = "no-odf"

    def fit(self, data, gtab, *, mask=None):
        return object()


class _NoSH(_NoODF):
    capabilities = {"gives_odf": False, "gives_sh": True}


class _NoPeaks(_NoODF):
    capabilities = {"gives_odf": False, "gives_sh": True, "gives_peaks": True}

    def fit(self, data, gtab, *, mask=None):
        class Fit:
            shm_coeff = np.zeros(data.shape[:-1] + (45,))

        return Fit()


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("_NoODF", "declares gives_odf but its fit (object) has no odf(sphere) method"),
        ("_NoSH", "declares gives_sh but its fit (object) has no shm_coeff"),
        ("_NoPeaks", "declares gives_peaks but its fit (Fit) has no peaks() method"),
    ],
)
def test_declared_capabilities_must_be_delivered(clean, monkeypatch, model, words):
    import validation.models.testing as testing

    monkeypatch.setattr(testing, model, globals()[model], raising=False)
    with pytest.raises(ModelFailure) as info:
        fit(clean, f"{T}:{model}")
    assert info.value.reason == words and info.value.stage == "output"


def test_bad_hyper_parameter_is_an_init_failure(clean):
    with pytest.raises(ModelFailure, match="unexpected keyword argument 'lamda'") as info:
        fit(clean, "csd", params={"lamda": 1})
    assert info.value.stage == "init"


# ----------------------------------------------------------------------------- parallel


@pytest.mark.parametrize("name", ["csd", "dti"])
def test_parallel_fit_is_identical_to_serial(phantom, name):
    serial = fit(phantom, name, jobs=1, chunk_voxels=7)
    parallel = fit(phantom, name, jobs=2, chunk_voxels=7)
    assert parallel.details["chunks"] == int(np.ceil(phantom.mask.sum() / 7))
    np.testing.assert_array_equal(serial.peaks, parallel.peaks)
    np.testing.assert_array_equal(serial.peak_values, parallel.peak_values)
    np.testing.assert_array_equal(serial.sh, parallel.sh)


def test_capabilities_are_declared_not_guessed():
    from validation.models import capabilities_of, make_model

    assert capabilities_of(make_model("oracle")) == Capabilities(
        gives_odf=False, gives_sh=True, gives_peaks=True, needs_truth=True, voxelwise=False
    )
    assert capabilities_of(make_model("msmt-csd")).multi_shell_only
    assert not capabilities_of(make_model("csd")).multi_shell_only
    assert capabilities_of(object()) == Capabilities()


# ----------------------------------------------------------------------------- peak finder


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_peak_finder_equals_dipys_peak_directions(shift):
    """The compiled finder returns the vertices dipy's peak_directions returns, in order."""
    from dipy.direction.peaks import peak_directions

    from validation.models.fitting import PEAK_PARAMS, _geometry, _peak_vertices

    g = _geometry(8)
    rng = np.random.default_rng(0)
    # smooth random ODFs (random order-8 SH) and rough ones (with negative lobes)
    smooth = rng.normal(size=(200, 45)) @ g.sh_to_sf
    rough = rng.random((200, len(g.sphere.vertices))) - shift
    for odf in (smooth, rough):
        out = np.full((len(odf), 60), -1, dtype=np.int64)
        _peak_vertices(odf, g.nb_index, g.nb_count, g.sphere.vertices,
                       PEAK_PARAMS["relative_peak_threshold"],
                       np.cos(np.radians(PEAK_PARAMS["min_separation_angle"])), out)
        for row, found in zip(odf, out, strict=True):
            _, _, expected = peak_directions(row, g.sphere, relative_peak_threshold=0.5,
                                             min_separation_angle=25)
            np.testing.assert_array_equal(found[found >= 0], expected)


def test_peak_refinement_recovers_off_vertex_directions():
    """A sharp order-8 fODF pointing between vertices: the refined peak is far closer than
    the nearest vertex."""
    from dipy.reconst.shm import real_sh_descoteaux

    from validation.models.fitting import _find_peaks, _geometry

    g = _geometry(8)
    rng = np.random.default_rng(3)
    true = rng.normal(size=(50, 3))
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    theta, phi = np.arccos(true[:, 2]), np.arctan2(true[:, 1], true[:, 0])
    sh, _, _ = real_sh_descoteaux(8, theta, phi, legacy=False)
    peaks, values = _find_peaks(sh @ g.sh_to_sf, g)
    assert np.all(n_peaks(peaks) == 1)
    refined = angle_deg(peaks[:, 0], true)
    nearest_vertex = angle_deg(g.sphere.vertices[np.argmax(np.abs(true @ g.sphere.vertices.T),
                                                           axis=1)], true)
    assert np.median(nearest_vertex) > 2.0
    assert refined.max() < 0.5


@settings(max_examples=5, deadline=None)
@given(chunk_voxels=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_jobs_never_change_the_result(chunk_voxels, seed):
    ph = tiny_phantom(shape=(5, 3, 2), snr=20, rng=seed % 1000)
    kw = dict(chunk_voxels=chunk_voxels, seed=seed)
    a = fit(ph, "csa", jobs=1, **kw)
    b = fit(ph, "csa", jobs=2, **kw)
    np.testing.assert_array_equal(a.peaks, b.peaks)
    np.testing.assert_array_equal(a.sh, b.sh)


def test_csd_response_equals_dipys_estimator_from_one_tensor_fit() -> None:
    from dipy.core.gradients import gradient_table
    from dipy.reconst.csdeconv import response_from_mask_ssst

    from validation.models.builtins import response_ssst, response_voxels
    from validation.models.conformance import tiny_phantom

    ph = tiny_phantom(shape=(8, 8, 8), snr=30, rng=3)
    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    (evals, s0), voxels = response_ssst(gtab, ph.data, ph.mask, fa_thr=0.7)
    expected_voxels = response_voxels(gtab, ph.data, ph.mask, fa_thr=0.7)
    (ref_evals, ref_s0), _ = response_from_mask_ssst(gtab, ph.data, expected_voxels)
    np.testing.assert_array_equal(voxels, expected_voxels)
    np.testing.assert_allclose(evals, ref_evals, rtol=1e-12)
    assert s0 == pytest.approx(float(ref_s0), rel=1e-12)
    assert evals[1] == evals[2] < evals[0]
