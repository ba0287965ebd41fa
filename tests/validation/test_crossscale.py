"""Cross-scale comparison: one phantom at 2 um and 8 um agrees; misregistration lowers it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dipy.core.geometry import cart2sphere
from dipy.reconst.shm import real_sh_descoteaux

from validation.crossscale import (
    CROSSSCALE_COLUMNS,
    OrientationSource,
    compare_sources,
    crossscale_table,
    crossscale_voxels,
    level_fod,
)
from validation.errors import UserError
from validation.transforms import rotation_matrix


def _delta_sh(direction: np.ndarray, order: int = 8) -> np.ndarray:
    """Even SH of an axial delta along ``direction``."""
    _, theta, phi = cart2sphere(*np.asarray(direction, float))
    basis, _, _ = real_sh_descoteaux(order, np.atleast_1d(theta), np.atleast_1d(phi),
                                     legacy=False)
    return basis[0]


def _source(directions: np.ndarray, label: str = "s", count=None) -> OrientationSource:
    """A (n, 1, 1) grid with one peak per voxel and its delta SH."""
    d = np.asarray(directions, float).reshape(-1, 3)
    peaks = np.zeros((len(d), 1, 1, 1, 3))
    peaks[:, 0, 0, 0] = d / np.linalg.norm(d, axis=1, keepdims=True)
    sh = np.stack([_delta_sh(v) for v in peaks[:, 0, 0, 0]]).reshape(len(d), 1, 1, -1)
    return OrientationSource(label, peaks, sh, None if count is None
                             else np.asarray(count).reshape(len(d), 1, 1))


def test_identical_sources_agree_exactly() -> None:
    a = _source(np.eye(3))
    r = compare_sources(a, a)
    np.testing.assert_allclose(r.values["acc"], 1.0, atol=1e-12)
    np.testing.assert_allclose(r.values["peak_angular_error_deg"], 0.0, atol=1e-6)
    np.testing.assert_allclose(r.values["jsd"], 0.0, atol=1e-12)
    assert r.voxels.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0]]


def test_known_angles_give_known_peak_errors_and_lower_acc() -> None:
    angles = np.array([0.0, 10.0, 20.0])
    ref = _source(np.tile([0.0, 0.0, 1.0], (3, 1)))
    tilted = np.stack([[np.sin(np.radians(a)), 0.0, np.cos(np.radians(a))] for a in angles])
    r = compare_sources(ref, _source(tilted))
    np.testing.assert_allclose(r.values["peak_angular_error_deg"], angles, atol=1e-6)
    acc = r.values["acc"]
    assert acc[0] == pytest.approx(1.0)
    assert acc[0] > acc[1] > acc[2]
    assert r.values["jsd"][0] == pytest.approx(0.0, abs=1e-12)
    assert r.values["jsd"][0] < r.values["jsd"][1] < r.values["jsd"][2]
    # axial: a flipped direction is the same orientation
    flipped = compare_sources(ref, _source(-np.tile([0.0, 0.0, 1.0], (3, 1))))
    np.testing.assert_allclose(flipped.values["peak_angular_error_deg"], 0.0, atol=1e-6)


def test_mask_and_coverage_select_voxels() -> None:
    a = _source(np.eye(3), count=[5, 0, 2])
    b = _source(np.eye(3), count=[1, 1, 0])
    r = compare_sources(a, b)
    assert r.voxels.tolist() == [[0, 0, 0]]
    r = compare_sources(_source(np.eye(3)), _source(np.eye(3)),
                        mask=np.array([False, True, True]).reshape(3, 1, 1))
    assert r.voxels.tolist() == [[1, 0, 0], [2, 0, 0]]
    none = compare_sources(a, b, mask=np.zeros((3, 1, 1), bool))
    assert len(none.voxels) == 0 and np.isnan(none.median("acc"))


def test_peaks_only_source_has_undefined_acc_and_jsd() -> None:
    a = _source(np.eye(3))
    r = compare_sources(a, (a.peaks, None))
    assert np.all(np.isnan(r.values["acc"])) and np.all(np.isnan(r.values["jsd"]))
    np.testing.assert_allclose(r.values["peak_angular_error_deg"], 0.0, atol=1e-6)


def test_bad_inputs_name_the_problem() -> None:
    a = _source(np.eye(3))
    b = _source(np.eye(2, 3))
    with pytest.raises(UserError, match="different grids"):
        compare_sources(a, b)
    with pytest.raises(UserError, match="mask of shape"):
        compare_sources(a, a, mask=np.ones((2, 2, 2), bool))
    low = OrientationSource("low", a.peaks, a.sh[..., :15])  # type: ignore[index]
    with pytest.raises(UserError, match="coefficients"):
        compare_sources(a, low)


def test_crossscale_table_aggregates_every_pair() -> None:
    a = _source(np.tile([0.0, 0.0, 1.0], (4, 1)))
    tilt = [[np.sin(np.radians(x)), 0, np.cos(np.radians(x))] for x in (2.0, 4.0, 6.0, 8.0)]
    b = _source(np.array(tilt))
    c = _source(np.tile([0.0, 0.0, 1.0], (4, 1)))
    vox = crossscale_voxels("case1", {"a": a, "b": b, "c": c})
    assert list(dict.fromkeys(zip(vox.source_a, vox.source_b, strict=True))) == [
        ("a", "b"), ("a", "c"), ("b", "c")]
    table = crossscale_table(vox, n_boot=50, seed=0)
    assert list(table.columns) == list(CROSSSCALE_COLUMNS)
    assert "rank" not in set(table.statistic)
    assert set(table.case) == {"case1", "all"}

    def value(a_: str, b_: str, metric: str, stat: str) -> float:
        rows = table[(table.case == "all") & (table.source_a == a_) & (table.source_b == b_)
                     & (table.metric == metric) & (table.statistic == stat)]
        assert len(rows) == 1
        return float(rows.value.iloc[0])

    assert value("a", "b", "peak_angular_error_deg", "median") == pytest.approx(5.0, abs=1e-5)
    assert value("a", "b", "peak_angular_error_deg", "mean") == pytest.approx(5.0, abs=1e-5)
    assert value("a", "c", "acc", "median") == pytest.approx(1.0)
    assert value("a", "b", "acc", "n") == 4
    assert value("a", "b", "acc", "n_undefined") == 0
    empty = crossscale_table(crossscale_voxels("x", {"a": a}))
    assert empty.empty and list(empty.columns) == list(CROSSSCALE_COLUMNS)


# ----------------------------------------------------------------------------------------
# acceptance: one phantom at 2 um and 8 um


@pytest.fixture(scope="module")
def two_scales():
    import phantoms

    # a single straight bundle filling a 240 um field of view (3^3 voxels of 80 um):
    # 120^3 voxels at 2 um, 30^3 at 8 um
    spec = phantoms.CaseSpec("crossscale", geometry="single", grid_size=3,
                             voxel_size_mm=0.08, snr=None, kappa=float("inf"),
                             undulation_amplitude_um=0.0, rotation_deg=(0.0, 30.0, 20.0))
    phantom = phantoms.build_phantom(spec, rng=0)
    grid = phantom.grid
    levels = {}
    for size in (2.0, 8.0):
        micro = phantom.render_microscopy(voxel_size_um=size, rng=1)
        levels[size] = (micro.volume.compute(), micro.mask.compute(), micro)
    fods = {
        size: level_fod(vol, spacing_um=m.spacing_um, voxel_to_grid=m.affine,
                        grid_shape=grid.shape, grid_affine=grid.affine, mask=mask)
        for size, (vol, mask, m) in levels.items()
    }
    return phantom, levels, fods


def test_two_resolutions_of_one_phantom_agree(two_scales) -> None:
    phantom, _, fods = two_scales
    fibre = phantom.truth().mask
    assert fibre.sum() == 27
    r = compare_sources(fods[2.0], fods[8.0], mask=fibre)
    assert len(r.voxels) == 27
    assert r.median("acc") > 0.9
    assert np.mean(r.values["acc"] > 0.8) > 0.9
    assert r.median("peak_angular_error_deg") < 8.0


def test_misregistration_lowers_crossscale_acc_monotonically(two_scales) -> None:
    phantom, levels, fods = two_scales
    grid = phantom.grid
    fibre = phantom.truth().mask
    centre = grid.affine[:3, :3] @ ((np.asarray(grid.shape) - 1) / 2) + grid.affine[:3, 3]
    shift, unshift = np.eye(4), np.eye(4)
    shift[:3, 3], unshift[:3, 3] = centre, -centre
    vol, mask, micro = levels[8.0]
    acc = [compare_sources(fods[2.0], fods[8.0], mask=fibre).median("acc")]
    for angle in (5.0, 10.0, 20.0):
        moved = shift @ rotation_matrix((1.0, 0.0, 0.0), angle) @ unshift @ micro.affine
        fod = level_fod(vol, spacing_um=micro.spacing_um, voxel_to_grid=moved,
                        grid_shape=grid.shape, grid_affine=grid.affine, mask=mask)
        acc.append(compare_sources(fods[2.0], fod, mask=fibre).median("acc"))
    assert acc[0] > 0.9
    assert all(x > y for x, y in zip(acc, acc[1:], strict=False)), acc
    assert acc[-1] < 0.8


def test_crossscale_voxels_of_the_two_levels(two_scales) -> None:
    phantom, _, fods = two_scales
    vox = crossscale_voxels("p", {"2um": fods[2.0], "8um": fods[8.0]},
                            mask=phantom.truth().mask)
    assert isinstance(vox, pd.DataFrame) and len(vox) == 27
    assert set(vox.source_a) == {"2um"} and set(vox.source_b) == {"8um"}
    assert vox["acc"].median() > 0.9
