"""Issue 6 acceptance on the crossing-angle suite at SNR 30: csd vs dti, oracle, isotropic."""

from __future__ import annotations

import numpy as np
import pytest

import metrics
import phantoms
from validation.models import ModelSpec, fit_case

MODELS = ("csd", "dti", "oracle", "isotropic")


@pytest.fixture(scope="module", params=["cross90", "cross60"])
def scored(request):
    spec = next(s for s in phantoms.get_suite("crossing-angle") if s.case_id == request.param)
    assert spec.snr == 30.0
    phantom = phantoms.build_phantom(spec, rng=0)
    truth = phantom.truth()
    signal = phantom.simulate_dmri(rng=1)
    mask = np.asarray(truth.mask, bool)
    out = {}
    for name in MODELS:
        fitted = fit_case(ModelSpec(name, name, name, {}), signal.data, signal.bvals,
                          signal.bvecs, mask, truth=truth, seed=0)
        m = metrics.peak_voxel_metrics(truth.peaks, fitted.peaks, threshold_deg=25.0)
        m["acc"] = metrics.acc(truth.fod_sh, fitted.sh)
        out[name] = {k: np.asarray(v)[mask] for k, v in m.items()}
    nufo = np.asarray(truth.nufo)[mask]
    return request.param, out, nufo


def test_csd_beats_dti_on_peak_f1(scored):
    _, out, nufo = scored
    crossing = nufo >= 2
    assert crossing.sum() > 20
    f1 = {name: out[name]["peak_f1"] for name in ("csd", "dti")}
    assert np.nanmean(f1["csd"][crossing]) > np.nanmean(f1["dti"][crossing]) + 0.2
    assert np.nanmean(f1["csd"]) > np.nanmean(f1["dti"])


@pytest.mark.parametrize("name", ["csd", "dti"])
def test_single_bundle_voxels_median_error_below_5_degrees(scored, name):
    _, out, nufo = scored
    single = nufo == 1
    assert single.sum() > 20
    assert np.nanmedian(out[name]["peak_angular_error_deg"][single]) < 5.0


def test_oracle_is_a_ceiling(scored):
    _, out, _ = scored
    assert np.nanmax(out["oracle"]["peak_angular_error_deg"]) < 1e-5
    assert np.all(out["oracle"]["peak_f1"] == 1.0)
    np.testing.assert_allclose(out["oracle"]["acc"], 1.0, atol=1e-12)


def test_isotropic_is_a_floor(scored):
    _, out, _ = scored
    assert np.all(out["isotropic"]["peak_recall"] == 0.0)
    assert np.all(np.isnan(out["isotropic"]["acc"]))
