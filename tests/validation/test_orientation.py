"""Structure-tensor orientations: exact cases, a scipy reference, physical units, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from validation.errors import UserError
from validation.orientation import (
    halo_voxels,
    structure_tensor_orientation,
    structure_tensor_orientations,
)


def tube_volume(shape, spacing, direction, *, radius=2.0, centre=None, rng=None, noise=0.0):
    """A straight Gaussian-profile tube through ``centre`` (physical units), float32."""
    spacing = np.asarray(spacing, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    d /= np.linalg.norm(d)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                        indexing="ij")
    pts = np.stack(grids, axis=-1)
    if centre is None:
        centre = (np.asarray(shape) - 1) * spacing / 2.0
    rel = pts - centre
    along = rel @ d
    dist2 = (rel**2).sum(-1) - along**2
    vol = np.exp(-dist2 / (2 * radius**2))
    if noise:
        vol = vol + noise * np.random.default_rng(rng).normal(size=vol.shape)
    return vol.astype(np.float32)


def angle_deg(a, b):
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    cos = np.abs((a * b).sum(-1)) / (na * nb)
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def reference_tensor(volume, sigma, rho, spacing, truncate=4.0):
    """Slow reference: scipy Gaussian derivatives/integration per axis, mode nearest."""
    vol = volume.astype(np.float64)
    sig = [sigma / s for s in spacing]
    r = [rho / s for s in spacing]
    grads = []
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 1
        g = ndimage.gaussian_filter(vol, sig, order=order, mode="nearest", truncate=truncate)
        grads.append(g / spacing[axis])
    t = np.empty(vol.shape + (3, 3))
    for a in range(3):
        for b in range(a, 3):
            s = ndimage.gaussian_filter(grads[a] * grads[b], r, mode="nearest", truncate=truncate)
            t[..., a, b] = s
            t[..., b, a] = s
    return t


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_noise_free_tube_along_an_array_axis_gives_that_axis(axis):
    direction = np.eye(3)[axis]
    vol = tube_volume((25, 25, 25), (1, 1, 1), direction)
    res = structure_tensor_orientation(vol, sigma=1.0, rho=2.0)
    centre = (12, 12, 12)
    # off-diagonal terms vanish on the axis: the reference package gives NaN here
    np.testing.assert_array_equal(res.vectors[centre], direction.astype(np.float32))
    assert np.isfinite(res.vectors).all()
    assert np.isfinite(res.eigenvalues).all() and np.isfinite(res.anisotropy).all()
    assert res.anisotropy[centre] > 0.9
    assert res.vectors.dtype == np.float32 and res.eigenvalues.dtype == np.float32


def test_constant_volume_gives_zero_vectors_and_zero_anisotropy():
    res = structure_tensor_orientation(np.full((12, 13, 14), 7.0), sigma=1.0, rho=1.5)
    np.testing.assert_array_equal(res.vectors, 0.0)
    np.testing.assert_array_equal(res.eigenvalues, 0.0)
    np.testing.assert_array_equal(res.anisotropy, 0.0)
    assert res.vectors.shape == (12, 13, 14, 3)


def test_matches_a_scipy_reference_with_anisotropic_spacing():
    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.random((20, 22, 18)), 1.0).astype(np.float32)
    spacing = (1.5, 1.0, 0.8)
    res = structure_tensor_orientation(vol, sigma=1.6, rho=3.0, spacing=spacing)
    t = reference_tensor(vol, 1.6, 3.0, spacing)
    evals, evecs = np.linalg.eigh(t)
    expected = evals[..., ::-1]
    scale = expected[..., 0].max()
    np.testing.assert_allclose(res.eigenvalues, expected, atol=2e-5 * scale, rtol=2e-4)
    gap = (evals[..., 1] - evals[..., 0]) / np.maximum(evals[..., 2], 1e-30)
    sel = gap > 0.05
    assert sel.sum() > 1000
    err = angle_deg(res.vectors[sel], evecs[..., :, 0][sel])
    assert np.percentile(err, 99) < 0.05
    aniso = (expected[..., 1] - expected[..., 2]) / expected[..., 0]
    np.testing.assert_allclose(res.anisotropy, aniso, atol=1e-4)


def test_agrees_with_the_structure_tensor_package_on_noise():
    pytest.importorskip("structure_tensor")
    from structure_tensor import eig_special_3d, structure_tensor_3d

    rng = np.random.default_rng(0)
    n, sigma, rho = 64, 1.5, 4.0
    vol = ndimage.gaussian_filter(rng.random((n, n, n)), 1.0) + 0.3 * rng.random((n, n, n))
    vol = vol.astype(np.float32)
    res = structure_tensor_orientation(vol, sigma=sigma, rho=rho)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        val, vec = eig_special_3d(structure_tensor_3d(vol, sigma, rho))
    vref = np.moveaxis(vec[::-1], 0, -1)  # (x, y, z) -> array-axis order
    lam = np.sort(np.moveaxis(val, 0, -1), axis=-1)[..., ::-1]
    m = math.ceil(4.0 * (sigma + rho))
    interior = np.zeros(vol.shape, dtype=bool)
    interior[m:-m, m:-m, m:-m] = True
    sel = interior & ((lam[..., 1] - lam[..., 2]) / lam[..., 0] > 0.2)
    sel &= np.isfinite(vref).all(-1)
    assert sel.sum() > 1000
    err = angle_deg(res.vectors[sel], vref[sel])
    assert np.median(err) < 0.1
    assert np.percentile(err, 99) < 1.0


def test_anisotropic_sampling_gives_the_same_orientations():
    direction = np.array([0.3, 0.8, 0.52])
    iso = tube_volume((40, 40, 40), (1, 1, 1), direction, radius=2.5,
                      centre=np.array([19.5, 19.5, 19.5]))
    # the same physical tube sampled every 2 um along axis 0
    aniso = tube_volume((20, 40, 40), (2, 1, 1), direction, radius=2.5,
                        centre=np.array([19.5, 19.5, 19.5]))
    r_iso = structure_tensor_orientation(iso, sigma=1.5, rho=3.0)
    r_aniso = structure_tensor_orientation(aniso, sigma=1.5, rho=3.0, spacing=(2, 1, 1))
    truth = direction / np.linalg.norm(direction)
    for res, vol in ((r_iso, iso), (r_aniso, aniso)):
        core = (vol > 0.5) & (res.anisotropy > 0.2)
        core[:6] = core[-6:] = False
        core[:, :8] = core[:, -8:] = False
        core[:, :, :8] = core[:, :, -8:] = False
        assert core.sum() > 50
        assert np.median(angle_deg(res.vectors[core], truth)) < 2.0
    # voxel by voxel at the shared physical points (aniso z index k = iso z index 2 k)
    shared = (aniso > 0.5) & (r_aniso.anisotropy > 0.2)
    shared[:4] = shared[-4:] = False
    shared[:, :8] = shared[:, -8:] = False
    shared[:, :, :8] = shared[:, :, -8:] = False
    err = angle_deg(r_aniso.vectors[shared], r_iso.vectors[::2][shared])
    assert np.median(err) < 2.0


@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 1, 0), (0, 2, 1)])
def test_permuted_axes_permute_the_vectors(perm):
    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.random((18, 20, 22)), 1.2).astype(np.float32)
    res = structure_tensor_orientation(vol, sigma=1.0, rho=2.0)
    res_t = structure_tensor_orientation(np.transpose(vol, perm).copy(), sigma=1.0, rho=2.0)
    expected = np.transpose(res.vectors, perm + (3,))[..., list(perm)]
    sel = np.transpose(res.anisotropy, perm) > 0.1
    assert angle_deg(res_t.vectors[sel], expected[sel]).max() < 0.05
    np.testing.assert_allclose(
        res_t.anisotropy, np.transpose(res.anisotropy, perm), atol=1e-5
    )


def test_rotated_tube_gives_the_rotated_orientation():
    theta = np.deg2rad(35.0)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    d0 = np.array([0.2, 0.9, 0.4])
    d0 /= np.linalg.norm(d0)
    for d in (d0, rot @ d0):
        vol = tube_volume((36, 36, 36), (1, 1, 1), d, radius=2.0, noise=0.02, rng=4)
        res = structure_tensor_orientation(vol, sigma=1.0, rho=2.5)
        core = (vol > 0.6) & (res.anisotropy > 0.2)
        core[:8] = core[-8:] = False
        core[:, :8] = core[:, -8:] = False
        core[:, :, :8] = core[:, :, -8:] = False
        assert core.sum() > 40
        assert np.median(angle_deg(res.vectors[core], d)) < 2.0


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(4, 12), st.integers(4, 12), st.integers(4, 12)),
    sigma=st.floats(0.6, 2.0),
    rho=st.floats(0.6, 3.0),
)
def test_invariants_on_random_volumes(seed, shape, sigma, rho):
    vol = np.random.default_rng(seed).random(shape).astype(np.float32)
    res = structure_tensor_orientation(vol, sigma=sigma, rho=rho)
    assert np.isfinite(res.vectors).all()
    norms = np.linalg.norm(res.vectors, axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))
    ev = res.eigenvalues
    scale = max(float(ev[..., 0].max()), 1e-30)
    assert np.all(ev[..., 0] >= ev[..., 1] - 1e-6 * scale)
    assert np.all(ev[..., 1] >= ev[..., 2] - 1e-6 * scale)
    assert np.all((res.anisotropy >= 0) & (res.anisotropy <= 1))
    # the largest component is positive (canonical sign of an axis)
    lead = np.take_along_axis(res.vectors, np.abs(res.vectors).argmax(-1)[..., None], -1)
    assert np.all(lead >= 0)


def test_integer_input_is_not_rescaled():
    vol = (tube_volume((16, 16, 16), (1, 1, 1), (0, 0, 1)) * 1000).astype(np.uint16)
    a = structure_tensor_orientation(vol, sigma=1.0, rho=2.0)
    b = structure_tensor_orientation(vol.astype(np.float32), sigma=1.0, rho=2.0)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)


def test_several_scale_pairs_equal_single_calls():
    rng = np.random.default_rng(5)
    vol = ndimage.gaussian_filter(rng.random((16, 18, 20)), 1.0).astype(np.float32)
    pairs = [(1.0, 2.0), (1.5, 3.0)]
    many = structure_tensor_orientations(vol, scales=pairs, spacing=(1, 1, 1.5))
    for (s, r), res in zip(pairs, many, strict=True):
        one = structure_tensor_orientation(vol, sigma=s, rho=r, spacing=(1, 1, 1.5))
        np.testing.assert_array_equal(res.vectors, one.vectors)
        assert (res.sigma, res.rho) == (s, r)


def test_halo_is_the_sum_of_the_kernel_radii():
    assert halo_voxels(1.5, 4.0, (1, 1, 1)) == (6 + 16, 6 + 16, 6 + 16)
    assert halo_voxels(2.0, 4.0, (1.0, 2.0, 0.5)) == (8 + 16, 4 + 8, 16 + 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"volume": np.zeros((4, 4))}, "not 3-D"),
        ({"volume": np.zeros((4, 4, 4, 2))}, "not 3-D"),
        ({"spacing": (1, 0, 1)}, "spacing"),
        ({"spacing": (1, -2, 1)}, "spacing"),
        ({"spacing": (1, 1)}, "spacing"),
        ({"sigma": 0.0}, "sigma"),
        ({"rho": -1.0}, "rho"),
        ({"volume": np.full((5, 5, 5), np.nan)}, "NaN"),
        ({"volume": np.zeros((5, 5, 5), dtype=bool)}, "dtype"),
    ],
)
def test_bad_input_raises_a_one_line_user_error(kwargs, message):
    args = {"volume": np.zeros((6, 6, 6), np.float32), "sigma": 1.0, "rho": 1.0}
    args.update(kwargs)
    volume = args.pop("volume")
    with pytest.raises(UserError, match=message) as info:
        structure_tensor_orientation(volume, **args)
    assert "\n" not in str(info.value)


def test_sigma_below_half_a_voxel_warns():
    with pytest.warns(UserWarning, match="half a voxel"):
        structure_tensor_orientation(np.zeros((6, 6, 6)), sigma=0.4, rho=1.0)
    with pytest.warns(UserWarning, match="axes \\[0\\]"):
        structure_tensor_orientation(
            np.zeros((6, 6, 6)), sigma=1.0, rho=2.0, spacing=(3.0, 1.0, 1.0)
        )
