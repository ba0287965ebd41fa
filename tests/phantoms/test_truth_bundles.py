"""The truth bundles are self-consistent: their own streamlines score as a perfect
tractogram against their ROIs and masks (the Tractometer of ``metrics``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phantom_helpers import small_spec

import metrics
import phantoms
import phantoms.phantom as phantom_module
from metrics.tractography import streamline_voxel_mask
from phantoms import build_phantom

ACCEPTANCE_SUITES = ("default", "crossing-angle", "three-way", "geometry")


def _cases():
    seen = {}
    for suite in ACCEPTANCE_SUITES:
        for spec in phantoms.get_suite(suite):
            seen.setdefault(spec.case_id, spec)
    return list(seen.values())


def _check_bundle_consistency(truth, shape):
    """Every streamline inside the grid, from its head ROI to its tail ROI, through mask
    voxels only; the ROIs are parts of the mask."""
    n = np.asarray(shape)
    for b in truth.bundles:
        assert b.streamlines, b.name
        assert not (b.head_roi & ~b.mask).any() and not (b.tail_roi & ~b.mask).any()
        for s in b.streamlines:
            assert s.ndim == 2 and s.shape[1] == 3 and len(s) >= 2
            assert np.all(s > -0.5) and np.all(s < n - 0.5)
            first, last = np.floor(s[[0, -1]] + 0.5).astype(int)
            assert b.head_roi[tuple(first)] and b.tail_roi[tuple(last)]
        traversed = streamline_voxel_mask(b.streamlines, shape)
        assert not (traversed & ~b.mask).any(), b.name
    # the masks are where the truth has the bundles' peaks
    np.testing.assert_array_equal(sum(b.mask.astype(int) for b in truth.bundles), truth.nufo)


@pytest.mark.parametrize("spec", _cases(), ids=lambda s: s.case_id)
def test_truth_streamlines_score_perfectly_against_their_bundles(spec, monkeypatch):
    monkeypatch.setattr(phantom_module, "STREAMLINES_PER_BUNDLE", 80)  # faster scoring
    ph = build_phantom(spec)
    truth = ph.truth()
    streamlines = [s for b in truth.bundles for s in b.streamlines]
    assert all(len(b.streamlines) <= 80 for b in truth.bundles)
    r = metrics.tractometer(streamlines, truth.bundles,
                            voxel_size=ph.grid.voxel_size_mm)
    d = r.to_dict()
    assert d["vs"] >= 0.99
    assert d["ic_count"] == 0
    assert d["vb"] == len(truth.bundles) == ph.geometry.n_bundles
    for score in r.bundles:
        assert score.ol >= 0.95, (spec.case_id, score.name, score.ol)
        assert score.or_vs <= 0.05, (spec.case_id, score.name, score.or_vs)
    _check_bundle_consistency(truth, ph.grid.shape)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    geometry=st.sampled_from(["single", "crossing", "three-way", "curved", "fanning",
                              "kissing"]),
    angle=st.floats(30.0, 90.0),
    kappa=st.sampled_from([np.inf, 10.0, 100.0]),
    rotation=st.tuples(*[st.floats(-45.0, 45.0)] * 3),
    seed=st.integers(0, 2**16),
)
def test_truth_bundles_consistent_for_any_geometry(geometry, angle, kappa, rotation, seed):
    ph = build_phantom(small_spec(geometry=geometry, crossing_angle_deg=angle, kappa=kappa,
                                  rotation_deg=rotation, seed=seed))
    truth = ph.truth()
    _check_bundle_consistency(truth, ph.grid.shape)
    streamlines = [s for b in truth.bundles for s in b.streamlines]
    r = metrics.tractometer(streamlines, truth.bundles)
    assert r.vs_count == len(streamlines) and r.ic_count == 0
    rois = [(b.head_roi | b.tail_roi) for b in truth.bundles]
    if not any((rois[i] & rois[j]).any() for i in range(len(rois)) for j in range(i)):
        # with overlapping ROIs of two bundles (small crossing angles on a small grid) a
        # streamline can count for the other bundle (the Tractometer's --unique rule)
        assert [score.vs for score in r.bundles] == [len(b.streamlines) for b in truth.bundles]
        assert all(score.or_vs == 0.0 for score in r.bundles)


def test_streamline_ends_lie_on_the_field_of_view():
    """Truth streamlines are the axons clipped at the grid's outer faces (-0.5, n - 0.5)."""
    ph = build_phantom(phantoms.get_suite("default")[0])  # single, along i
    n = ph.grid.shape[0]
    inset = phantom_module.ENDPOINT_INSET_VOX
    for s in ph.truth().bundles[0].streamlines:
        np.testing.assert_allclose(s[0, 0], -0.5 + inset, atol=1e-12)
        np.testing.assert_allclose(s[-1, 0], n - 0.5 - inset, atol=1e-12)
        # interior points are axon vertices: 50 um steps along i (1/3 voxel)
        assert np.all(np.diff(s[:, 0]) > 0) and np.all(np.diff(s[:, 0]) <= 1 / 3 + 1e-6)
