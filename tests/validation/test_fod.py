"""Microscopy FODs: exact SH projections, voxel assignment, frames, peaks, ODI, CLI."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from dipy.core.geometry import cart2sphere
from dipy.reconst.shm import real_sh_descoteaux
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.fod import microscopy_fod, monomial_exponents, monomials_to_sh


def basis_at(v, order=8):
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    _, theta, phi = cart2sphere(v[:, 0], v[:, 1], v[:, 2])
    b, _, _ = real_sh_descoteaux(order, theta, phi, legacy=False)
    return b


def angle_deg(a, b):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    cos = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return np.degrees(np.arccos(min(1.0, cos)))


IDENTITY = np.eye(4)


def one_voxel_grid(n):
    """A microscopy block of n^3 unit voxels exactly inside one target voxel of size n."""
    grid = np.diag([float(n)] * 3 + [1.0])
    grid[:3, 3] = (n - 1) / 2.0
    return grid


@pytest.mark.parametrize("order", [2, 4, 6, 8, 10])
def test_monomials_span_the_even_sh_exactly(order):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    exps = monomial_exponents(order)
    assert len(exps) == (order + 1) * (order + 2) // 2 == (order // 2 + 1) * (order + 1)
    mono = np.prod(v[:, None, :] ** exps[None], axis=-1)
    np.testing.assert_allclose(mono @ monomials_to_sh(order), basis_at(v, order), atol=1e-9)


def test_one_direction_gives_the_basis_at_that_direction():
    v = np.array([0.3, -0.5, 0.8])
    v /= np.linalg.norm(v)
    vec = np.broadcast_to(v, (4, 4, 4, 3)).astype(np.float32)
    fod = microscopy_fod(vec, np.full((4, 4, 4), 0.7, np.float32), microscopy_affine=IDENTITY,
                         grid_shape=(1, 1, 1), grid_affine=one_voxel_grid(4))
    np.testing.assert_allclose(fod.sh[0, 0, 0], basis_at(v)[0], atol=2e-6)
    assert fod.sh[0, 0, 0, 0] * np.sqrt(4 * np.pi) == pytest.approx(1.0, abs=1e-6)
    assert fod.count[0, 0, 0] == 64
    assert fod.weight[0, 0, 0] == pytest.approx(64 * 0.7, rel=1e-6)
    assert angle_deg(fod.peaks[0, 0, 0, 0], v) < 1.5
    np.testing.assert_array_equal(fod.peaks[0, 0, 0, 1:], 0.0)
    assert fod.odi[0, 0, 0] < 0.02


def test_weighted_mixture_and_exclusions_are_exact():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 0.6, 0.8])
    vec = np.zeros((2, 2, 2, 3), np.float32)
    w = np.zeros((2, 2, 2), np.float32)
    mask = np.ones((2, 2, 2), bool)
    vec[0, 0, 0], w[0, 0, 0] = a, 1.0
    vec[0, 0, 1], w[0, 0, 1] = -a, 2.0      # axial: -a counts as a
    vec[0, 1, 0], w[0, 1, 0] = b, 0.5
    vec[0, 1, 1], w[0, 1, 1] = b, 5.0        # masked out below
    mask[0, 1, 1] = False
    vec[1, 0, 0], w[1, 0, 0] = a, 0.0        # zero weight
    vec[1, 0, 1], w[1, 0, 1] = 0.0, 3.0      # zero vector (no orientation)
    fod = microscopy_fod(vec, w, mask=mask, microscopy_affine=IDENTITY, grid_shape=(1, 1, 1),
                         grid_affine=one_voxel_grid(2))
    expected = (3.0 * basis_at(a)[0] + 0.5 * basis_at(b)[0]) / 3.5
    np.testing.assert_allclose(fod.sh[0, 0, 0], expected, atol=2e-6)
    assert fod.count[0, 0, 0] == 3
    assert fod.weight[0, 0, 0] == pytest.approx(3.5)


def test_voxels_go_to_the_target_with_the_nearest_centre():
    # microscopy 6 x 1 x 1 voxels of 0.5 mm starting at -0.25 mm; targets of 1 mm at 0, 1, 2
    micro = np.diag([0.5, 0.5, 0.5, 1.0])
    micro[:3, 3] = [-0.25, 0.0, 0.0]
    vec = np.broadcast_to([0.0, 0.0, 1.0], (6, 1, 1, 3)).astype(np.float32)
    fod = microscopy_fod(vec, np.ones((6, 1, 1), np.float32), microscopy_affine=micro,
                         grid_shape=(4, 1, 1), grid_affine=IDENTITY)
    # centres -0.25, 0.25 | 0.75, 1.25 | 1.75, 2.25 -> targets 0, 0, 1, 1, 2, 2
    np.testing.assert_array_equal(fod.count[:, 0, 0], [2, 2, 2, 0])
    np.testing.assert_array_equal(fod.sh[3, 0, 0], 0.0)
    assert np.isnan(fod.odi[3, 0, 0]) and not np.isnan(fod.odi[0, 0, 0])
    np.testing.assert_array_equal(fod.peaks[3, 0, 0], 0.0)


def test_microscopy_voxels_outside_the_grid_are_ignored():
    micro = np.eye(4)
    micro[:3, 3] = [-5.0, 0.0, 0.0]
    vec = np.broadcast_to([1.0, 0.0, 0.0], (10, 2, 2, 3)).astype(np.float32)
    fod = microscopy_fod(vec, np.ones((10, 2, 2), np.float32), microscopy_affine=micro,
                         grid_shape=(3, 2, 2), grid_affine=IDENTITY)
    assert fod.count.sum() == 3 * 2 * 2


def test_vectors_are_mapped_into_the_grid_frame():
    # microscopy array axes (z, y, x) = grid axes (k, j, i): a permutation of axes, with
    # anisotropic voxels on both sides (0.25 x 0.5 x 1 mm vs 1 x 2 x 0.5 mm)
    micro = np.zeros((4, 4))
    micro[3, 3] = 1.0
    micro[2, 0], micro[1, 1], micro[0, 2] = 0.25, 0.5, 1.0
    grid = np.diag([1.0, 2.0, 0.5, 1.0])
    v_micro = np.array([0.6, 0.0, 0.8])  # physical, along microscopy axes (0, 1, 2)
    vec = np.broadcast_to(v_micro, (4, 4, 4, 3)).astype(np.float32)
    fod = microscopy_fod(vec, np.ones((4, 4, 4), np.float32), microscopy_affine=micro,
                         grid_shape=(2, 2, 2), grid_affine=grid, npeaks=1)
    target = np.array([0.8, 0.0, 0.6])  # components reversed
    got = fod.sh[fod.count > 0]
    np.testing.assert_allclose(got, np.broadcast_to(basis_at(target)[0], got.shape), atol=2e-6)


def test_a_rotated_grid_rotates_the_fod():
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    grid = np.eye(4)
    grid[:3, :3] = rot * 2.0  # 2 mm voxels, rotated by 30 degrees about the world z axis
    v = np.array([1.0, 0.0, 0.0])
    vec = np.broadcast_to(v, (3, 3, 3, 3)).astype(np.float32)
    micro = np.eye(4)
    micro[:3, :3] *= 0.1
    fod = microscopy_fod(vec, np.ones((3, 3, 3), np.float32), microscopy_affine=micro,
                         grid_shape=(2, 2, 2), grid_affine=grid)
    expected = rot.T @ v  # world x axis seen from the rotated grid frame
    assert angle_deg(fod.peaks[0, 0, 0, 0], expected) < 1.5
    np.testing.assert_allclose(fod.sh[0, 0, 0], basis_at(expected)[0], atol=2e-6)


@pytest.mark.parametrize("crossing_deg", [90.0, 60.0])
def test_crossings_give_two_peaks(crossing_deg):
    rng = np.random.default_rng(1)
    half = np.deg2rad(crossing_deg) / 2
    a = np.array([np.cos(half), np.sin(half), 0.0])
    b = np.array([np.cos(half), -np.sin(half), 0.0])
    n = 12
    pick = rng.random((n, n, n)) < 0.5
    vec = np.where(pick[..., None], a, b)
    vec = vec + rng.normal(scale=0.05, size=vec.shape)
    vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
    fod = microscopy_fod(vec.astype(np.float32), np.ones((n, n, n), np.float32),
                         microscopy_affine=IDENTITY, grid_shape=(1, 1, 1),
                         grid_affine=one_voxel_grid(n))
    peaks = fod.peaks[0, 0, 0]
    found = peaks[np.abs(peaks).sum(-1) > 0]
    assert len(found) == 2
    errs = sorted(min(angle_deg(p, t) for p in found) for t in (a, b))
    assert errs[-1] < 5.0


def test_dask_input_equals_numpy_input():
    rng = np.random.default_rng(2)
    vec = rng.normal(size=(20, 18, 16, 3)).astype(np.float32)
    w = rng.random((20, 18, 16)).astype(np.float32)
    mask = rng.random((20, 18, 16)) > 0.2
    micro = np.diag([0.3, 0.3, 0.3, 1.0])
    kwargs = {"microscopy_affine": micro, "grid_shape": (3, 3, 3), "grid_affine": np.diag(
        [2.0, 2.0, 2.0, 1.0])}
    ref = microscopy_fod(vec, w, mask=mask, **kwargs)
    lazy = microscopy_fod(da.from_array(vec, chunks=(7, 5, 16, 3)),
                          da.from_array(w, chunks=(6, 6, 6)),
                          mask=da.from_array(mask, chunks=(20, 9, 8)), **kwargs)
    np.testing.assert_allclose(lazy.sh, ref.sh, atol=1e-6)
    np.testing.assert_array_equal(lazy.count, ref.count)


def test_isotropic_directions_give_odi_near_one():
    rng = np.random.default_rng(3)
    vec = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    fod = microscopy_fod(vec, np.ones((16, 16, 16), np.float32), microscopy_affine=IDENTITY,
                         grid_shape=(1, 1, 1), grid_affine=one_voxel_grid(16))
    assert fod.odi[0, 0, 0] > 0.9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40))
def test_order_two_terms_hold_the_orientation_tensor(seed, n):
    from metrics import orientation_tensor

    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 1, 1, 3))
    w = rng.random((n, 1, 1)) + 0.01
    fod = microscopy_fod(v.astype(np.float32), w.astype(np.float32),
                         microscopy_affine=np.diag([0.4 / n, 1, 1, 1]), grid_shape=(1, 1, 1),
                         grid_affine=np.eye(4), sh_order_max=4)
    u = v[:, 0, 0] / np.linalg.norm(v[:, 0, 0], axis=1, keepdims=True)
    expected = np.einsum("n,na,nb->ab", w[:, 0, 0], u, u) / w.sum()
    np.testing.assert_allclose(orientation_tensor(fod.sh[0, 0, 0].astype(np.float64)),
                               expected, atol=2e-5)
    assert fod.sh[0, 0, 0, 0] * np.sqrt(4 * np.pi) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sh_order_max": 7}, "even"),
        ({"vectors": np.zeros((2, 2, 2))}, r"\(I, J, K, 3\)"),
        ({"weights": np.zeros((2, 2, 3))}, "do not match"),
        ({"mask": np.zeros((2, 3, 2), bool)}, "does not match"),
        ({"microscopy_affine": np.zeros((4, 4))}, "singular"),
        ({"grid_affine": np.eye(3)}, "4x4"),
        ({"grid_shape": (2, 0, 2)}, "positive"),
    ],
)
def test_bad_input_raises_user_error(kwargs, message):
    args = {"vectors": np.zeros((2, 2, 2, 3), np.float32),
            "weights": np.ones((2, 2, 2), np.float32),
            "microscopy_affine": np.eye(4), "grid_shape": (2, 2, 2), "grid_affine": np.eye(4)}
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        microscopy_fod(args.pop("vectors"), args.pop("weights"), **args)


def test_cli_orient_then_fod_on_a_tube(tmp_path, capsys):
    import nibabel as nib

    from validation.cli import main
    from validation.io.omezarr import write_ome_zarr

    # a tube along array axis 2 (NGFF x) of a 40 um volume at 2 um voxels
    z, y, x = np.mgrid[:20, :20, :20]
    tube = np.exp(-((z - 9.5) ** 2 + (y - 9.5) ** 2) / 6.0).astype(np.float32)
    src = write_ome_zarr(tmp_path / "tube.ome.zarr", tube, spacing=(2, 2, 2))
    assert main(["orient", str(src), "-o", str(tmp_path / "st.ome.zarr"), "--sigma-um", "2",
                 "--rho-um", "4", "--chunks", "10", "--mask-threshold", "0.3", "-q"]) == 0
    # a dMRI grid of 2 x 2 x 2 voxels of 20 um covering the microscopy (world x, y, z mm)
    grid = np.diag([0.02, 0.02, 0.02, 1.0])
    grid[:3, 3] = 0.009
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), grid), tmp_path / "dwi.nii.gz")
    out = tmp_path / "fod.nii.gz"
    assert main(["fod", str(tmp_path / "st.ome.zarr"), "--grid", str(tmp_path / "dwi.nii.gz"),
                 "-o", str(out), "-q"]) == 0
    sh = nib.load(out).get_fdata()
    assert sh.shape == (2, 2, 2, 45)
    peaks = nib.load(tmp_path / "fod_peaks.nii.gz").get_fdata().reshape(2, 2, 2, 3, 3)
    count = nib.load(tmp_path / "fod_count.nii.gz").get_fdata()
    assert count.sum() > 0
    # array axis 2 is world x, which is the grid's i axis
    for idx in np.argwhere(count > 0):
        assert angle_deg(peaks[tuple(idx)][0], [1.0, 0.0, 0.0]) < 3.0
    side = json.loads((tmp_path / "fod.json").read_text())
    assert side["OrientationEncoding"]["SphericalHarmonicsBasis"] == "descoteaux07"
    assert side["OrientationEncoding"]["Reference"] == "ijk"
    assert side["legacy"] is False and side["sh_order_max"] == 8
    assert (tmp_path / "fod_odi.json").exists() and (tmp_path / "fod_odi.nii.gz").exists()
    # refuses to overwrite; missing grid is a user error
    capsys.readouterr()
    assert main(["fod", str(tmp_path / "st.ome.zarr"), "--grid", str(tmp_path / "dwi.nii.gz"),
                 "-o", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["fod", str(tmp_path / "st.ome.zarr"), "--grid", str(tmp_path / "no.nii.gz"),
                 "-o", str(tmp_path / "f2.nii.gz")]) == 2
    # a transform shifting the microscopy out of the grid leaves no voxel with data
    np.savetxt(tmp_path / "shift.txt", np.array([[1, 0, 0, 5.0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                  [0, 0, 0, 1]]))
    assert main(["fod", str(tmp_path / "st.ome.zarr"), "--grid", str(tmp_path / "dwi.nii.gz"),
                 "--transform", str(tmp_path / "shift.txt"), "-o",
                 str(tmp_path / "f3.nii.gz"), "-q"]) == 0
    assert nib.load(tmp_path / "f3_count.nii.gz").get_fdata().sum() == 0
