"""Structure tensor and microscopy FOD on microscopy rendered by phantoms/ (issue 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree

phantoms = pytest.importorskip("phantoms")

from validation.fod import microscopy_fod  # noqa: E402
from validation.orientation import structure_tensor_orientation  # noqa: E402


def _case(suite: str, case_id: str):
    return next(c for c in phantoms.get_suite(suite) if c.case_id == case_id)


def _local_axis(geometry, points_um):
    """Axis direction of the nearest tube segment and the distance to it."""
    seg = geometry.p1 - geometry.p0
    mid = (geometry.p0 + geometry.p1) / 2
    _, near = cKDTree(mid).query(points_um, k=4)
    best = np.full(len(points_um), np.inf)
    axis = np.zeros((len(points_um), 3))
    radius = np.zeros(len(points_um))
    for j in range(near.shape[1]):
        s = near[:, j]
        rel = points_um - geometry.p0[s]
        t = np.clip((rel * seg[s]).sum(1) / (seg[s] ** 2).sum(1), 0.0, 1.0)
        d = np.linalg.norm(rel - t[:, None] * seg[s], axis=1)
        better = d < best
        best[better] = d[better]
        axis[better] = seg[s][better] / np.linalg.norm(seg[s][better], axis=1, keepdims=True)
        radius[better] = geometry.tube_radius[geometry.tube[s[better]]]
    return axis, best, radius


def test_single_bundle_orientations_follow_the_axons():
    spec = dataclasses.replace(_case("default", "single"), grid_size=2)
    phantom = phantoms.build_phantom(spec)
    mic = phantom.render_microscopy(voxel_size_um=2.5, rng=0)
    vol = np.asarray(mic.volume)
    tissue = np.asarray(mic.mask)
    st = structure_tensor_orientation(vol, sigma=2.5, rho=5.0, spacing=tuple(mic.spacing_um))
    edge = 8  # rho and sigma reach 6 voxels: keep clear of the faces
    core = np.zeros(vol.shape, dtype=bool)
    core[edge:-edge, edge:-edge, edge:-edge] = True
    candidates = np.argwhere(core & tissue & (st.anisotropy > 0.2))
    # microscopy voxel i is centred at (i + 0.5) * spacing um in the phantom frame
    points = (candidates + 0.5) * np.asarray(mic.spacing_um)
    axis, dist, radius = _local_axis(phantom.geometry, points)
    inside = dist < radius
    assert inside.sum() > 10_000
    vectors = st.vectors[tuple(candidates[inside].T)]
    err = np.degrees(np.arccos(np.clip(np.abs((vectors * axis[inside]).sum(1)), 0, 1)))
    assert np.median(err) < 5.0


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["cross90", "cross60"])
def test_microscopy_fod_resolves_crossings(case_id):
    import metrics

    spec = dataclasses.replace(_case("crossing-angle", case_id), grid_size=8,
                               voxel_size_mm=0.075, bundle_diameter_um=360.0)
    phantom = phantoms.build_phantom(spec)
    mic = phantom.render_microscopy(voxel_size_um=2.5, rng=0)
    vol = np.asarray(mic.volume)
    # an integration scale below the spacing of interleaved axons: larger ones mix the
    # two populations into one tensor (whose axis is their bisector at 60 degrees)
    st = structure_tensor_orientation(vol, sigma=1.25, rho=2.5, spacing=tuple(mic.spacing_um))
    fod = microscopy_fod(st.vectors, st.anisotropy, mask=np.asarray(mic.mask),
                         microscopy_affine=mic.affine, grid_shape=phantom.grid.shape,
                         grid_affine=phantom.grid.affine, relative_peak_threshold=0.15)
    truth = phantom.truth()
    match = metrics.match_peaks(truth.peaks, fod.peaks.astype(np.float64), threshold_deg=25)
    two = truth.nufo == 2
    assert two.sum() >= 30
    errors = match.errors_deg[two][:, :2]
    resolved = np.all(np.isfinite(errors) & (errors < 10.0), axis=1)
    assert resolved.mean() >= 0.9
    single = truth.nufo == 1
    assert np.nanmedian(match.errors_deg[single][:, 0]) < 5.0
