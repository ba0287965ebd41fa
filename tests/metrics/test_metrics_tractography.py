"""Tractometer on a hand-built tractogram, voxel traversal and field agreement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics import MetricInputError
from metrics.tractography import (
    IC,
    NC,
    VS,
    WPC,
    BundleDefinition,
    streamline_field_angle,
    streamline_voxel_mask,
    tractometer,
)

SHAPE = (8, 4, 1)


def _vol(*voxels):
    v = np.zeros(SHAPE, bool)
    for x, y in voxels:
        v[x, y, 0] = True
    return v


def _row(y):
    return _vol(*[(x, y) for x in range(8)])


def _sl(*xy):
    return np.array([[x, y, 0.0] for x, y in xy])


def _bundles(**kw_a):
    a = BundleDefinition("A", head=_vol((0, 0)), tail=_vol((7, 0)), mask=_row(0), **kw_a)
    b = BundleDefinition("B", head=_vol((0, 3)), tail=_vol((7, 3)), mask=_row(3),
                         length_mm=(0.0, 5.0))
    return [a, b]


TRACTOGRAM = [
    _sl((0, 0), (7, 0)),  # 0: VS A
    _sl((7, 0), (0, 0)),  # 1: VS A, reversed
    _sl((0, 0), (3, 1.2), (7, 0)),  # 2: VS A, leaves the mask through row 1
    _sl((0, 3), (7, 3)),  # 3: joins B's ROIs but is 7 mm long (limit 5): WPC -> NC
    _sl((0, 0), (7, 3)),  # 4: A head to B tail: IC
    _sl((0, 3), (0, 0)),  # 5: B head to A head: IC
    _sl((3, 2), (4, 2)),  # 6: no ROI: NC
    _sl((0, 0), (0, 0.2)),  # 7: both ends in one ROI: NC
]


def test_hand_built_tractogram():
    r = tractometer(TRACTOGRAM, _bundles())
    np.testing.assert_array_equal(r.category, [VS, VS, VS, WPC, IC, IC, NC, NC])
    np.testing.assert_array_equal(r.bundle_index, [0, 0, 0, 1, -1, -1, -1, -1])
    assert (r.vs_count, r.wpc_count, r.ic_count, r.nc_count, r.is_count) == (3, 1, 2, 3, 5)
    assert (r.vb, r.ib) == (1, 2)
    assert r.invalid_bundles == {("A_head", "B_tail"): 1, ("A_head", "B_head"): 1}
    a, b = r.bundles
    # B_A = row 0 (8 voxels, from streamline 0) + row-1 voxels x = 1..5 of streamline 2:
    # segment (0,0)->(3,1.2) enters row 1 at x = 1.25 and (3,1.2)->(7,0) leaves it at
    # x = 5.33, so |B| = 13, |A & B| = 8, |B - A| = 5
    assert (a.n_voxels_gt, a.n_voxels_vs, a.tp, a.fp, a.fn) == (8, 13, 8, 5, 0)
    assert a.ol == 1.0
    assert a.or_gt == pytest.approx(5 / 8)
    assert a.or_vs == pytest.approx(5 / 13)
    assert a.f1 == pytest.approx(16 / 21)
    assert (b.vs, b.wpc, b.ol, b.or_gt, b.or_vs, b.f1) == (0, 1, 0.0, 0.0, 0.0, 0.0)
    d = r.to_dict()
    assert d["vs"] == pytest.approx(3 / 8) and d["is"] == pytest.approx(5 / 8)
    assert d["ic"] == pytest.approx(2 / 8) and d["nc"] == pytest.approx(3 / 8)
    assert d["wpc"] == pytest.approx(1 / 8)
    assert d["ol"] == pytest.approx(0.5) and d["or_gt"] == pytest.approx(5 / 16)
    assert d["f1"] == pytest.approx(8 / 21)
    s = r.to_scilpy_dict()
    # scilpy (--save_wpc_separately) keeps WPC out of NC and IS
    assert (s["VS"], s["WPC"], s["IC"], s["NC"], s["IS"]) == (3, 1, 2, 2, 4)
    assert s["total_streamlines"] == 8 and s["VB"] == 1 and s["IB"] == 2
    assert s["bundle_wise"]["A"]["OR_pct_vs"] == pytest.approx(5 / 13)
    assert s["mean_f1"] == pytest.approx(8 / 21)


def test_limits_masks_and_dilation():
    # a turn of 38.5 deg in streamline 2 (directions (3, 1.2) then (4, -1.2))
    r = tractometer(TRACTOGRAM[:3], _bundles(max_angle_deg=30.0))
    np.testing.assert_array_equal(r.category, [VS, VS, WPC])
    r = tractometer(TRACTOGRAM[:3], _bundles(max_angle_deg=40.0))
    np.testing.assert_array_equal(r.category, [VS, VS, VS])
    r = tractometer(TRACTOGRAM[:3], _bundles(all_mask=_row(0)))
    np.testing.assert_array_equal(r.category, [VS, VS, WPC])
    r = tractometer(TRACTOGRAM[:3], _bundles(any_mask=_row(1)))
    np.testing.assert_array_equal(r.category, [WPC, WPC, VS])
    r = tractometer(TRACTOGRAM[:3], _bundles(length_mm=(7.2, 100.0)))
    np.testing.assert_array_equal(r.category, [WPC, WPC, VS])  # 3.23 + 4.18 = 7.41 mm
    short = [_sl((1, 0), (6, 0))]
    assert tractometer(short, _bundles()).category[0] == NC
    assert tractometer(short, _bundles(), dilate_endpoints=1).category[0] == VS
    # voxel size scales the length limit: 7 voxels of 0.5 mm pass B's 5 mm limit
    r = tractometer([TRACTOGRAM[3]], _bundles(), voxel_size=(0.5, 0.5, 0.5))
    assert r.category[0] == VS and r.bundle_index[0] == 1


def test_each_streamline_in_one_bundle():
    # two bundles with the same ROIs: the first claims the streamline
    a, _ = _bundles()
    twin = BundleDefinition("A2", head=a.head, tail=a.tail, mask=a.mask)
    r = tractometer([TRACTOGRAM[0]], [a, twin])
    assert r.bundle_index[0] == 0 and [b.vs for b in r.bundles] == [1, 0]
    # wrong path for the first bundle, valid for the second: valid wins
    strict = BundleDefinition("A", head=a.head, tail=a.tail, mask=a.mask, length_mm=(0, 1))
    r = tractometer([TRACTOGRAM[0]], [strict, twin])
    assert r.category[0] == VS and r.bundle_index[0] == 1


def test_bad_inputs():
    with pytest.raises(MetricInputError, match="bundles is empty"):
        tractometer(TRACTOGRAM, [])
    a, _ = _bundles()
    wrong = BundleDefinition("W", head=np.zeros((3, 3, 3), bool), tail=a.tail)
    with pytest.raises(MetricInputError, match="shape"):
        tractometer(TRACTOGRAM, [a, wrong])
    empty = BundleDefinition("E", head=a.head, tail=a.tail, mask=np.zeros(SHAPE, bool))
    with pytest.raises(MetricInputError, match="empty ground-truth mask"):
        tractometer(TRACTOGRAM, [empty])
    with pytest.raises(MetricInputError, match="NaN"):
        tractometer([_sl((0, 0), (np.nan, 0))], [a])
    with pytest.raises(MetricInputError, match="expected \\(n, 3\\)"):
        tractometer([np.zeros((3, 2))], [a])


def test_duck_typed_truth_bundles():
    class Truth:  # the phantoms' TruthBundle attribute names
        name = "A"
        head_roi = _vol((0, 0))
        tail_roi = _vol((7, 0))
        mask = _row(0)

    r = tractometer(TRACTOGRAM[:2], [Truth()])
    assert r.vs_count == 2 and r.bundles[0].ol == 1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_traversal_matches_fine_sampling(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 12, 12)
    pts = rng.uniform(-1.0, 12.0, size=(4, 3))
    exact = streamline_voxel_mask([pts], shape)
    # samples every 1e-4 voxel along each segment: a subset of the exact traversal, and
    # equal to it unless a segment clips a voxel corner by less than the step
    t = np.linspace(0, 1, 200001)[:, None]
    samples = np.concatenate([a + t * (b - a) for a, b in zip(pts[:-1], pts[1:], strict=True)])
    vox = np.floor(samples + 0.5).astype(int)
    vox = vox[np.all((vox >= 0) & (vox < 12), axis=1)]
    sampled = np.zeros(shape, bool)
    sampled[tuple(vox.T)] = True
    assert np.all(exact[sampled])
    assert np.count_nonzero(exact & ~sampled) <= 1


def test_field_angle():
    sl = [_sl((0, 0), (4, 0)), _sl((0, 1), (2, 1 + 2 * np.tan(np.radians(30))))]
    field = np.zeros(SHAPE + (3,))
    field[..., 0] = -1.0  # along x, sign irrelevant
    out = streamline_field_angle(sl, field)
    assert out[0] == pytest.approx(0.0) and out[1] == pytest.approx(30.0)
    peaks = np.zeros(SHAPE + (2, 3))
    peaks[..., 0, :] = [0, 1, 0]
    peaks[..., 1, :] = [np.cos(np.radians(10)), np.sin(np.radians(10)), 0]
    out = streamline_field_angle(sl, peaks)
    assert out[0] == pytest.approx(10.0) and out[1] == pytest.approx(20.0)
    # weighted by segment length: 3 voxels at 0 deg and 1 voxel at 90 deg
    bent = [_sl((0, 0), (3, 0), (3, 1))]
    assert streamline_field_angle(bent, field)[0] == pytest.approx(22.5)
    outside = streamline_field_angle([_sl((20, 20), (21, 20))], field)
    assert np.isnan(outside[0])
    with pytest.raises(MetricInputError, match="field has shape"):
        streamline_field_angle(sl, np.zeros((3, 3, 3, 2)))


def test_empty_and_degenerate_tractograms():
    r = tractometer([], _bundles())
    assert r.n_streamlines == 0 and np.isnan(r.to_dict()["vs"])
    assert r.bundles[0].fn == 8 and r.bundles[0].f1 == 0.0
    # a single point in a head ROI (both ends in one ROI) and a streamline off the grid
    r = tractometer([_sl((0, 0)), _sl((20, 20), (30, 20))], _bundles())
    np.testing.assert_array_equal(r.category, [NC, NC])
    assert streamline_field_angle([], np.zeros(SHAPE + (3,))).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_tractometer_invariants(seed):
    rng = np.random.default_rng(seed)
    shape = (10, 10, 3)
    vol = np.zeros(shape, bool)
    heads = [vol.copy(), vol.copy()]
    tails = [vol.copy(), vol.copy()]
    heads[0][0:2, 0:3] = True
    tails[0][8:10, 0:3] = True
    heads[1][0:2, 6:10] = True
    tails[1][8:10, 6:10] = True
    masks = [np.zeros(shape, bool), np.zeros(shape, bool)]
    masks[0][:, 0:4] = True
    masks[1][:, 5:10] = True
    bundles = [BundleDefinition(f"b{i}", heads[i], tails[i], masks[i], length_mm=(5, 30))
               for i in range(2)]
    lines = []
    for _ in range(40):
        n = int(rng.integers(2, 8))
        start = rng.uniform([-0.4, -0.4, 0], [2, 9.4, 2])
        end = rng.uniform([7.6, -0.4, 0], [9.4, 9.4, 2])
        t = np.sort(rng.random(n))
        t[0], t[-1] = 0.0, 1.0
        bend = rng.normal(0, 0.3, (n, 3)) * (t * (1 - t))[:, None]
        pts = start + t[:, None] * (end - start) + bend
        lines.append(pts)
    r = tractometer(lines, bundles)
    counts = (r.vs_count, r.wpc_count, r.ic_count, r.nc_count)
    assert r.vs_count + r.ic_count + r.nc_count == len(lines)  # WPC are inside NC
    # reversing every streamline and shuffling their order changes nothing
    order = rng.permutation(len(lines))
    r2 = tractometer([lines[i][::-1] for i in order], bundles)
    assert (r2.vs_count, r2.wpc_count, r2.ic_count, r2.nc_count) == counts
    np.testing.assert_array_equal(r2.category, r.category[order])
    for b1, b2 in zip(r.bundles, r2.bundles, strict=True):
        assert (b1.tp, b1.fp, b1.vs) == (b2.tp, b2.fp, b2.vs)
        assert 0.0 <= b1.ol <= 1.0 and 0.0 <= b1.or_vs <= 1.0 and 0.0 <= b1.f1 <= 1.0
        # B is the union of its streamlines' voxels
        mine = [lines[i] for i in np.flatnonzero((r.category == VS) & (r.bundle_index == 0))]
        if b1.name == "b0" and mine:
            union = streamline_voxel_mask(mine, shape)
            assert b1.n_voxels_vs == union.sum()
            assert b1.tp == (union & masks[0]).sum()


def test_many_bundles():
    # 40 bundles = 80 ROIs, one row each; one valid streamline per bundle, one IC
    shape = (6, 40, 1)
    bundles = []
    for y in range(40):
        head = np.zeros(shape, bool)
        head[0, y, 0] = True
        tail = np.zeros(shape, bool)
        tail[5, y, 0] = True
        mask = np.zeros(shape, bool)
        mask[:, y, 0] = True
        bundles.append(BundleDefinition(f"b{y}", head, tail, mask))
    lines = [np.array([[0.0, y, 0], [5.0, y, 0]]) for y in range(40)]
    lines.append(np.array([[0.0, 39, 0], [5.0, 0, 0]]))  # head of b39 to tail of b0
    r = tractometer(lines, bundles)
    assert r.vs_count == 40 and r.vb == 40 and r.ic_count == 1
    assert r.invalid_bundles == {("b0_tail", "b39_head"): 1}
    assert all(b.f1 == 1.0 for b in r.bundles)
