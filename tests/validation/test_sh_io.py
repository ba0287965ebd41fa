"""SH conventions at IO (validation.io.sh): bases, legacy flags, frames, sidecars, refusal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.io.nifti import save_nifti
from validation.io.sh import (
    MRTRIX,
    XSCALE,
    SHConvention,
    convention_from_sidecar,
    convert_sh,
    read_sh,
    sh_amplitudes,
    sh_conversion_matrix,
    sh_order_from_n_coeffs,
    sh_sidecar,
    voxel_to_world_directions,
    world_to_voxel_directions,
    write_sh,
)


def _rotation(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_affine(axis=(1, 2, 3), angle=35.0, spacing=(1.2, 0.8, 2.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rotation(axis, angle) @ np.diag(spacing)
    a[:3, 3] = (-10.0, 4.0, 7.5)
    return a


def _basis(directions, order, basis, legacy):
    """dipy's own basis functions (D, n) at unit directions, independent of the module."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux, real_sh_tournier

    d = np.atleast_2d(np.asarray(directions, float))
    _, theta, phi = cart2sphere(d[:, 0], d[:, 1], d[:, 2])
    fn = real_sh_descoteaux if basis == "descoteaux07" else real_sh_tournier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(order, theta, phi, legacy=legacy)[0]


def test_order_from_n_coeffs():
    assert [sh_order_from_n_coeffs(n) for n in (1, 6, 15, 28, 45, 66)] == [0, 2, 4, 6, 8, 10]
    with pytest.raises(UserError, match="44 coefficients"):
        sh_order_from_n_coeffs(44)


def test_same_convention_is_identity():
    assert np.array_equal(sh_conversion_matrix(_oblique_affine(), 4, XSCALE, XSCALE), np.eye(15))


def test_legacy_descoteaux_flips_odd_negative_m():
    # dipy: descoteaux07 legacy and non-legacy differ by the sign of the odd negative m
    legacy = SHConvention("descoteaux07", True, "ijk")
    m = sh_conversion_matrix(np.eye(4), 2, legacy, XSCALE)
    # order-2 index order in dipy: (l, m) = (0,0) (2,-2) (2,-1) (2,0) (2,1) (2,2)
    assert np.allclose(m, np.diag([1, 1, -1, 1, 1, 1]), atol=1e-10)


def test_legacy_tournier_is_mrtrix02_scaling():
    # MRtrix 0.2's basis has no sqrt(2) on m != 0: its coefficients are sqrt(2) x larger
    legacy = SHConvention("tournier07", True, "ijk")
    modern = SHConvention("tournier07", False, "ijk")
    m = sh_conversion_matrix(np.eye(4), 2, legacy, modern)
    r = 1 / np.sqrt(2)
    assert np.allclose(m, np.diag([1, r, r, 1, r, r]), atol=1e-10)


def test_reproducing_kernel_rotates_with_the_affine():
    # sum_lm Y_lm(d) Y_lm(u) is the same function in any orthonormal basis and peaks at d;
    # in MRtrix convention at world direction w its XScale coefficients are the kernel at
    # the voxel direction u with w = normalise(A3 u / s)
    affine = _oblique_affine()
    u = np.array([0.3, -0.5, 0.81])
    u /= np.linalg.norm(u)
    w = voxel_to_world_directions(u, affine)
    world_kernel = _basis(w, 8, "tournier07", False)[0]
    voxel_kernel = _basis(u, 8, "descoteaux07", False)[0]
    got = convert_sh(world_kernel, affine, source=MRTRIX, target=XSCALE)
    assert np.allclose(got, voxel_kernel, atol=1e-8)
    back = convert_sh(voxel_kernel, affine, source=XSCALE, target=MRTRIX)
    assert np.allclose(back, world_kernel, atol=1e-8)


def test_axis_permutation_affine_exact():
    # voxel axis i points to world +y, j to world -x: a hand-checkable 90 degree rotation
    affine = np.array([[0.0, -2.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    assert np.allclose(voxel_to_world_directions([1, 0, 0], affine), [0, 1, 0])
    assert np.allclose(world_to_voxel_directions([1, 0, 0], affine), [0, -1, 0])
    kernel_world_y = _basis([0, 1, 0], 4, "tournier07", False)[0]
    got = convert_sh(kernel_world_y, affine, source=MRTRIX, target=XSCALE)
    assert np.allclose(got, _basis([1, 0, 0], 4, "descoteaux07", False)[0], atol=1e-9)


@settings(max_examples=8, deadline=None)
@given(
    axis=st.tuples(*[st.floats(-1, 1) for _ in range(3)]).filter(
        lambda v: np.linalg.norm(v) > 0.1),
    angle=st.floats(-180, 180),
    spacing=st.tuples(*[st.floats(0.2, 3.0) for _ in range(3)]),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conversion_preserves_amplitudes_and_round_trips(axis, angle, spacing, flip, seed):
    affine = _oblique_affine(axis, angle, spacing)
    if flip:  # a left-handed (radiological) storage
        affine[:3, 0] *= -1
    rng = np.random.default_rng(seed)
    sh = rng.normal(size=(2, 45))
    mrtrix = convert_sh(sh, affine, source=XSCALE, target=MRTRIX)
    dirs = rng.normal(size=(30, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # amplitude along a world direction: the same function whichever convention holds it
    a_x = sh_amplitudes(sh, affine, dirs, convention=XSCALE)
    a_m = mrtrix @ _basis(dirs, 8, "tournier07", False).T
    assert np.allclose(a_x, a_m, atol=1e-8 * np.abs(a_x).max())
    back = convert_sh(mrtrix, affine, source=MRTRIX, target=XSCALE)
    assert np.allclose(back, sh, atol=1e-8)


def test_float32_stays_float32():
    sh = np.ones((2, 2, 1, 15), np.float32)
    assert convert_sh(sh, np.eye(4), source=XSCALE, target=MRTRIX).dtype == np.float32


def test_sidecar_matches_fod_metadata():
    from validation.fod import sh_basis_metadata

    assert sh_sidecar(XSCALE, 8) == sh_basis_metadata(8)
    enc = sh_sidecar(MRTRIX, 6)["OrientationEncoding"]
    assert enc == {"Type": "sh", "SphericalHarmonicsBasis": "MRtrix3", "Legacy": False,
                   "SphericalHarmonicsDegree": 6, "Reference": "xyz"}


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "MRtrix3"}}, MRTRIX),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "tournier07",
                                  "Legacy": False, "Reference": "xyz"}}, MRTRIX),
        ({"orientationencoding": {"type": "SH", "sphericalharmonicsbasis": "descoteaux07",
                                  "legacy": True, "reference": "ijk"}},
         SHConvention("descoteaux07", True, "ijk")),
        ({"sh_basis": "descoteaux07", "legacy": False, "frame": "ijk"}, XSCALE),
    ],
)
def test_convention_from_sidecar(sidecar, expected):
    assert convention_from_sidecar(sidecar) == expected


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        (None, "no JSON sidecar"),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "descoteaux07",
                                  "Reference": "ijk"}}, "without a legacy flag"),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "tournier07",
                                  "Reference": "xyz"}}, "without a legacy flag"),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "descoteaux07",
                                  "Legacy": False}}, "frame of the SH directions"),
        ({"OrientationEncoding": {"Type": "peaks"}}, "is not 'sh'"),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "fibonacci",
                                  "Legacy": False, "Reference": "xyz"}}, "is not descoteaux07"),
        ({"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "MRtrix3",
                                  "Reference": "lps"}}, "Reference 'lps'"),
    ],
)
def test_ambiguous_or_bad_sidecars_are_refused(sidecar, message):
    with pytest.raises(UserError, match=message) as info:
        convention_from_sidecar(sidecar)
    if "legacy" in message or "sidecar" in message:
        assert "declare it" in str(info.value) and "Legacy" in str(info.value)


def test_write_read_round_trip_mrtrix(tmp_path):
    affine = _oblique_affine()
    rng = np.random.default_rng(3)
    sh = rng.normal(size=(3, 2, 2, 45)).astype(np.float32)
    path = write_sh(tmp_path / "fod.nii.gz", sh, affine, convention="mrtrix")
    side = json.loads((tmp_path / "fod.json").read_text())
    assert side["OrientationEncoding"]["Reference"] == "xyz"
    import nibabel as nib

    on_disk = np.asarray(nib.load(str(path)).dataobj)
    assert on_disk.dtype == np.float32
    assert np.allclose(on_disk, convert_sh(sh, affine, source=XSCALE, target=MRTRIX), atol=1e-5)
    img = read_sh(path)
    assert img.source == MRTRIX and img.sh_order_max == 8
    assert np.allclose(img.sh, sh, atol=2e-5)


def test_read_declared_legacy_file(tmp_path):
    rng = np.random.default_rng(4)
    sh = rng.normal(size=(2, 2, 2, 6))
    save_nifti(tmp_path / "old.nii.gz", sh, np.eye(4))
    # no sidecar: refused, with how to declare
    with pytest.raises(UserError, match="declare it"):
        read_sh(tmp_path / "old.nii.gz")
    img = read_sh(tmp_path / "old.nii.gz", basis="descoteaux07", legacy=True, frame="ijk")
    expected = sh.copy()
    expected[..., 2] *= -1  # (l, m) = (2, -1)
    assert np.allclose(img.sh, expected, atol=1e-10)


def test_declaration_fills_gaps_and_must_not_contradict(tmp_path):
    sh = np.random.default_rng(5).normal(size=(2, 2, 2, 15))
    enc = {"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": "descoteaux07",
                                   "Reference": "ijk"}}
    save_nifti(tmp_path / "a.nii.gz", sh, np.eye(4), sidecar=enc)
    with pytest.raises(UserError, match="legacy"):
        read_sh(tmp_path / "a.nii.gz")
    assert np.allclose(read_sh(tmp_path / "a.nii.gz", legacy=False).sh, sh)
    with pytest.raises(UserError, match="contradicts"):
        read_sh(tmp_path / "a.nii.gz", legacy=False, frame="xyz")


def test_order_mismatch_with_sidecar(tmp_path):
    side = sh_sidecar(XSCALE, 8)
    save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2, 15)), np.eye(4), sidecar=side)
    with pytest.raises(UserError, match="degree 8 but the file has 15"):
        read_sh(tmp_path / "a.nii.gz")


def test_read_rejects_nan_and_bad_shapes(tmp_path):
    sh = np.zeros((2, 2, 2, 15))
    sh[0, 0, 0, 0] = np.nan
    save_nifti(tmp_path / "nan.nii.gz", sh, np.eye(4), sidecar=sh_sidecar(XSCALE, 4))
    with pytest.raises(UserError, match="NaN"):
        read_sh(tmp_path / "nan.nii.gz")
    save_nifti(tmp_path / "odd.nii.gz", np.zeros((2, 2, 2, 7)), np.eye(4),
               sidecar=sh_sidecar(XSCALE, 4))
    with pytest.raises(UserError, match="7 coefficients"):
        read_sh(tmp_path / "odd.nii.gz")
