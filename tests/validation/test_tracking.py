"""Tractography: seeds, dipy local tracking from SH/peaks, voxelisation, TRK/TRX, scores."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from validation.errors import UserError
from validation.tracking import (
    bundle_overlap,
    peaks_to_sh,
    save_tractogram,
    seeds_from_mask,
    streamline_voxels,
    track,
    track_and_score,
    track_vector_field,
)


def straight_field(shape=(12, 3, 3), axis=0):
    peaks = np.zeros(shape + (1, 3))
    peaks[..., 0, axis] = 1.0
    return peaks


# ----------------------------------------------------------------------------- seeds


def test_seeds_lie_in_their_voxels_and_are_reproducible():
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 2, 3] = mask[3, 0, 0] = True
    seeds = seeds_from_mask(mask, seeds_per_voxel=5, rng=7)
    assert seeds.shape == (10, 3)
    centres = np.rint(seeds).astype(int)
    assert {tuple(c) for c in centres} == {(1, 2, 3), (3, 0, 0)}
    assert np.all(np.abs(seeds - centres) <= 0.5)
    np.testing.assert_array_equal(seeds, seeds_from_mask(mask, seeds_per_voxel=5, rng=7))
    assert not np.array_equal(seeds, seeds_from_mask(mask, seeds_per_voxel=5, rng=8))


def test_seeds_reject_bad_input():
    with pytest.raises(UserError, match="seeds_per_voxel"):
        seeds_from_mask(np.ones((2, 2, 2), bool), seeds_per_voxel=0)
    with pytest.raises(UserError, match="3-D"):
        seeds_from_mask(np.ones((2, 2), bool))


# ----------------------------------------------------------------------------- voxelisation


def test_voxelisation_follows_segments_not_only_points():
    line = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    vox = streamline_voxels([line], (3, 3, 1))
    assert vox[1, 1, 0]  # passed through, no point there
    assert vox.sum() == 3  # the exact diagonal through voxel centres: (0,0), (1,1), (2,2)
    along = streamline_voxels([np.array([[0.2, 1.0, 0.0], [3.8, 1.0, 0.0]])], (5, 3, 1))
    assert np.flatnonzero(along[:, 1, 0]).tolist() == [0, 1, 2, 3, 4] and along.sum() == 5


def test_voxelisation_ignores_points_outside_the_grid():
    vox = streamline_voxels([np.array([[-3.0, 0.0, 0.0], [1.0, 0.0, 0.0]])], (2, 1, 1))
    assert vox.tolist() == [[[True]], [[True]]]


def _bundle(shape=(10, 3, 3)):
    mask = np.zeros(shape, bool)
    mask[:, 1, 1] = True
    head = np.zeros(shape, bool)
    head[0, 1, 1] = True
    tail = np.zeros(shape, bool)
    tail[-1, 1, 1] = True
    return SimpleNamespace(name="b", mask=mask, head_roi=head, tail_roi=tail)


def test_bundle_overlap_hand_computed():
    b = _bundle()
    full = np.array([[0.0, 1.0, 1.0], [9.0, 1.0, 1.0]])
    reversed_full = full[::-1]
    outside = np.array([[0.0, 1.0, 1.0], [4.0, 2.0, 1.0], [9.0, 1.0, 1.0]])
    partial = np.array([[0.0, 1.0, 1.0], [4.0, 1.0, 1.0]])  # ends outside the tail ROI
    s = bundle_overlap([full, reversed_full, partial], b, b.mask.shape)
    assert s == {"ol": 1.0, "or_gt": 0.0, "or_vs": 0.0, "f1": 1.0, "n_valid": 2.0}
    s = bundle_overlap([outside], b, b.mask.shape)
    # the detour passes through voxels of row j=2 between i=2 and i=7 (bresenham-like)
    b_vox = streamline_voxels([outside], b.mask.shape)
    n_out = int((b_vox & ~b.mask).sum())
    n_in = int((b_vox & b.mask).sum())
    assert n_out > 0
    assert s["ol"] == pytest.approx(n_in / 10)
    assert s["or_gt"] == pytest.approx(n_out / 10)
    assert s["or_vs"] == pytest.approx(n_out / (n_in + n_out))
    none = bundle_overlap([partial], b, b.mask.shape)
    assert none["ol"] == 0.0 and none["or_vs"] == 0.0 and none["n_valid"] == 0.0


# ----------------------------------------------------------------------------- tracking


def test_deterministic_tracking_in_a_straight_field_is_straight():
    peaks = straight_field()
    mask = np.ones(peaks.shape[:3], bool)
    result = track(mask=mask, peaks=peaks, seeds=np.array([[5.0, 1.2, 0.9]]), step_size=0.5,
                   rng=0)
    assert len(result.streamlines) == 1
    line = result.streamlines[0]
    steps = np.diff(line, axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), 0.5, atol=1e-6)
    # directions are vertices of the tracking sphere (~8 degrees apart): within 4 degrees
    deviation = np.degrees(np.arccos(np.abs(steps[:, 0]) / 0.5))
    assert deviation.max() < 4.0
    # it spans the mask along i (stops within half a voxel of its border)
    assert line[:, 0].min() < 0.0 and line[:, 0].max() > 11.0
    assert result.params["source"] == "peaks" and result.params["step_size_vox"] == 0.5
    assert result.params["max_angle_deg"] == 30.0 and result.params["n_seeds"] == 1


def test_tracking_from_sh_equals_tracking_from_its_peaks():
    peaks = straight_field(axis=1, shape=(3, 10, 3))
    mask = np.ones(peaks.shape[:3], bool)
    a = track(mask=mask, peaks=peaks, seeds_per_voxel=1, rng=3)
    b = track(mask=mask, sh=peaks_to_sh(peaks), seeds_per_voxel=1, rng=3)
    assert len(a.streamlines) == len(b.streamlines) >= mask.sum() - 2
    for x, y in zip(a.streamlines, b.streamlines, strict=True):
        np.testing.assert_array_equal(x, y)


def test_probabilistic_tracking_is_seeded():
    ph_peaks = straight_field()
    sh = peaks_to_sh(ph_peaks, sh_order_max=4)  # a broad fODF: random steps differ
    mask = np.ones(sh.shape[:3], bool)
    kw = dict(mask=mask, sh=sh, method="probabilistic", seeds_per_voxel=1, max_angle_deg=60)
    a, b, c = track(**kw, rng=1), track(**kw, rng=1), track(**kw, rng=2)
    assert len(a.streamlines) == len(b.streamlines)
    assert all(np.array_equal(x, y) for x, y in zip(a.streamlines, b.streamlines, strict=True))
    assert not all(
        np.array_equal(x, y) for x, y in zip(a.streamlines, c.streamlines, strict=False)
    )


def test_gfa_stopping_stops_in_isotropic_voxels():
    peaks = straight_field()
    sh = peaks_to_sh(peaks)
    sh[6:, ..., 1:] = 0.0  # isotropic from i = 6 on: GFA 0
    sh[6:, ..., 0] = 1.0
    mask = np.ones(sh.shape[:3], bool)
    seeds = np.array([[2.0, 1.0, 1.0]])
    by_mask = track(mask=mask, sh=sh, seeds=seeds, stopping="mask", rng=0)
    by_gfa = track(mask=mask, sh=sh, seeds=seeds, stopping="gfa", gfa_threshold=0.1, rng=0)
    assert by_gfa.streamlines[0][:, 0].max() < 6.0
    assert by_gfa.params["gfa_threshold"] == 0.1 and by_gfa.params["stopping"] == "gfa"
    assert len(by_mask.streamlines[0]) > len(by_gfa.streamlines[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "eudx"}, "tracking method 'eudx' is invalid"),
        ({"stopping": "fa"}, "stopping 'fa' is invalid"),
        ({"max_angle_deg": 0}, "max_angle_deg"),
        ({"step_size": -1}, "step_size"),
    ],
)
def test_tracking_rejects_bad_options(kwargs, message):
    peaks = straight_field()
    with pytest.raises(UserError, match=message):
        track(mask=np.ones(peaks.shape[:3], bool), peaks=peaks, **kwargs)


# ----------------------------------------------------------------------------- files


def test_trk_round_trip_keeps_voxel_coordinates(tmp_path):
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 3.0]
    lines = [np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), np.array([[2.0, 1.0, 0.5]] * 3)]
    path = save_tractogram(lines, tmp_path / "t.trk", affine=affine, shape=(4, 4, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.trk"]
    loaded = nib.streamlines.load(str(path))  # RAS+ mm
    for orig, got in zip(lines, loaded.streamlines, strict=True):
        np.testing.assert_allclose(got, nib.affines.apply_affine(affine, orig), atol=1e-4)


def test_trx_output(tmp_path):
    pytest.importorskip("trx")
    lines = [np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])]
    path = save_tractogram(lines, tmp_path / "t.trx", affine=np.eye(4), shape=(4, 4, 4))
    from trx.trx_file_memmap import load

    trx = load(str(path))
    np.testing.assert_allclose(np.asarray(trx.streamlines[0]), lines[0], atol=1e-4)
    trx.close()


def test_bad_tractogram_suffix(tmp_path):
    with pytest.raises(UserError, match=r"\.trk or \.trx"):
        save_tractogram([], tmp_path / "t.tck", affine=np.eye(4), shape=(2, 2, 2))


# ----------------------------------------------------------------------------- field tracking


def test_vector_field_tracking_maps_to_dmri_voxels_and_stops_at_corners():
    shape = (20, 8, 3)
    vectors = np.zeros(shape + (3,))
    vectors[:12, 2, 1] = [-1.0, 0.0, 0.0]  # axial: the sign does not matter
    vectors[12:, 2, 1] = [1.0, 0.0, 0.0]
    vectors[12, 3:, 1] = [0.0, 1.0, 0.0]  # a branch at right angles from i = 12
    mask = np.linalg.norm(vectors, axis=-1) > 0
    half = np.diag([0.5, 0.5, 0.5, 1.0])  # microscopy voxels are half a dMRI voxel
    r = track_vector_field(vectors, mask=mask, seeds=np.array([[5.0, 2.0, 1.0]]),
                           step_size=0.5, max_angle_deg=45, to_dmri_voxel=half)
    line = r.streamlines[0]
    np.testing.assert_allclose(line[:, 1], 1.0)  # j = 2 field voxels = 1 dMRI voxel
    assert line[:, 0].min() <= 0.0 and line[:, 0].max() >= 9.5  # along the whole row
    r90 = track_vector_field(vectors, mask=mask, seeds=np.array([[12.0, 5.0, 1.0]]),
                             step_size=0.5, max_angle_deg=45)
    # from the branch it reaches the row and does not turn into it
    branch = r90.streamlines[0]
    np.testing.assert_allclose(branch[:, 0], 12.0)
    assert branch[:, 1].min() >= 2.5 and branch[:, 1].max() >= 7.0


# ----------------------------------------------------------------------------- acceptance


def test_csd_deterministic_tracking_of_a_straight_bundle(tmp_path):
    phantoms = pytest.importorskip("phantoms")
    from validation.models import ModelSpec, fit_case

    spec = next(s for s in phantoms.get_suite("default") if s.geometry == "single")
    phantom = phantoms.build_phantom(spec, rng=0)
    truth = phantom.truth()
    signal = phantom.simulate_dmri(rng=1)
    out = fit_case(ModelSpec("csd", "csd", "CSD", {}), signal.data, signal.bvals, signal.bvecs,
                   np.asarray(truth.mask, bool))
    rows = track_and_score(case_id=spec.case_id, label="csd", peaks=out.peaks, sh=out.sh,
                           truth=truth, grid=phantom.grid,
                           config={"method": "deterministic", "seeds_per_voxel": 2,
                                   "step_size": 0.5, "max_angle_deg": 30.0},
                           seed=0, out_dir=tmp_path)
    assert len(rows) == len(truth.bundles) >= 1
    for row, bundle in zip(rows, truth.bundles, strict=True):
        assert row["bundle"] == bundle.name and row["case"] == spec.case_id
        assert row["ol"] > 0.8
        assert row["or_vs"] < 0.2
        assert row["vs"] > 0.5  # most streamlines join the bundle's two ROIs
        assert row["tracking_method"] == "deterministic"
        assert row["tracking_step_size_vox"] == 0.5
        # our quick per-bundle check agrees with the full scorer on this clean bundle
        quick = bundle_overlap(_streamlines_of(tmp_path, spec.case_id), bundle,
                               truth.mask.shape)
        assert quick["ol"] == pytest.approx(row["ol"], abs=0.02)
    assert len(_streamlines_of(tmp_path, spec.case_id)) == rows[0]["n_streamlines"]


def _streamlines_of(folder, case_id):
    """Streamlines of the TRK that track_and_score wrote, back in dMRI voxel coordinates."""
    trk = nib.streamlines.load(str(folder / f"sub-{case_id}_model-csd_tractography.trk"))
    to_vox = np.linalg.inv(trk.affine)
    return [nib.affines.apply_affine(to_vox, s) for s in trk.streamlines]


# ----------------------------------------------------------------------------- properties

_points = arrays(np.float64, st.tuples(st.integers(2, 6), st.just(3)),
                 elements=st.floats(0.0, 7.0, allow_nan=False, width=32))


@settings(max_examples=60, deadline=None)
@given(_points)
def test_voxelisation_marks_every_point_and_only_voxels_near_the_line(line):
    shape = (8, 8, 8)
    vox = streamline_voxels([line], shape)
    # every point's nearest voxel is marked
    idx = np.rint(line).astype(int)
    assert vox[tuple(idx.T)].all()
    # every marked voxel centre is within half a voxel diagonal (+ sampling) of a segment
    centres = np.argwhere(vox).astype(float)
    a, b = line[:-1], line[1:]
    d = b - a
    t = np.clip(np.einsum("vsk,sk->vs", centres[:, None] - a, d)
                / np.maximum(np.einsum("sk,sk->s", d, d), 1e-12), 0, 1)
    nearest = a + t[..., None] * d
    dist = np.linalg.norm(centres[:, None] - nearest, axis=-1).min(axis=1)
    assert np.all(dist <= np.sqrt(3) / 2 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 3, elements=st.floats(-1, 1, allow_nan=False)).filter(
    lambda v: np.linalg.norm(v) > 0.1))
def test_peaks_to_sh_has_its_maximum_at_the_peak(direction):
    from dipy.data import default_sphere
    from dipy.reconst.shm import sh_to_sf

    u = direction / np.linalg.norm(direction)
    sh = peaks_to_sh(u[None, None, :])[0]
    odf = sh_to_sf(sh, default_sphere, sh_order_max=8, basis_type="descoteaux07",
                   legacy=False)
    best = default_sphere.vertices[np.argmax(odf)]
    # the sphere's best vertex is the one nearest the peak (vertices ~8 degrees apart)
    nearest = default_sphere.vertices[np.argmax(np.abs(default_sphere.vertices @ u))]
    assert abs(best @ u) == pytest.approx(abs(nearest @ u), abs=1e-9)


def test_microscopy_tractogram_lands_in_dmri_voxels():
    from validation.tracking import track_microscopy

    # microscopy at 4x the dMRI resolution, same origin corner: a tube along j
    shape = (16, 32, 8)
    vectors = np.zeros(shape + (3,))
    vectors[6:10, :, 2:6] = [0.0, 1.0, 0.0]
    mask = np.linalg.norm(vectors, axis=-1) > 0
    grid_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    micro_affine = np.diag([0.25, 0.25, 0.25, 1.0])
    micro_affine[:3, 3] = -0.375  # microscopy voxel centres inside dMRI voxel 0: -0.375..0.375
    r = track_microscopy(vectors, mask=mask, microscopy_affine=micro_affine,
                         grid_affine=grid_affine, seeds_per_voxel=1, rng=0)
    assert len(r.streamlines) == mask.sum()
    pts = np.concatenate(r.streamlines)
    # i in microscopy 6..9 -> dMRI 1.125..1.875; the tube spans all of j: 0 ..7.75 - 0.375
    assert pts[:, 0].min() >= 6 * 0.25 - 0.375 - 0.13 and pts[:, 0].max() <= 9 * 0.25 - 0.375 + 0.13
    assert pts[:, 1].min() < 0.0 and pts[:, 1].max() > 7.0
    assert r.params["source"] == "microscopy"
