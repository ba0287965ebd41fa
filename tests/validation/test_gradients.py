"""bval/bvec reading: FSL flip as MRtrix applies it, b0 handling, unit checks, dipy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.io.gradients import (
    check_gradients,
    default_gradient_paths,
    read_bvals_bvecs,
    write_bvals_bvecs,
)

DIPY_FILES = Path(__import__("dipy").__file__).parent / "data" / "files"
NEURO = np.diag([2.0, 2.0, 2.0, 1.0])  # det > 0: FSL flips x
RADIO = np.diag([-2.0, 2.0, 2.0, 1.0])  # det < 0: no flip


def _write(tmp_path: Path, bvals: str, bvecs: str) -> tuple[Path, Path]:
    (tmp_path / "dwi.bval").write_text(bvals)
    (tmp_path / "dwi.bvec").write_text(bvecs)
    return tmp_path / "dwi.bval", tmp_path / "dwi.bvec"


def test_fsl_flip_follows_determinant(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "0 1000 1000\n", "0 0.6 0\n0 0.8 0\n0 0 1\n")
    neuro = read_bvals_bvecs(bval, bvec, affine=NEURO)
    radio = read_bvals_bvecs(bval, bvec, affine=RADIO)
    np.testing.assert_array_equal(neuro.bvecs, [[0, 0, 0], [-0.6, 0.8, 0], [0, 0, 1]])
    np.testing.assert_array_equal(radio.bvecs, [[0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    # world direction: MRtrix applies the flip then the image rotation; for an identity
    # rotation with det > 0, FSL's +x is world -x (FSL's voxel frame is radiological)
    np.testing.assert_allclose(neuro.world_bvecs(NEURO)[1], [-0.6, 0.8, 0.0])
    # radiological storage: i points to world -x, so FSL's x = +0.6 is world -0.6 too
    np.testing.assert_allclose(radio.world_bvecs(RADIO)[1], [-0.6, 0.8, 0.0])
    np.testing.assert_array_equal(neuro.b0_mask, [True, False, False])


def test_b0_volumes_accept_nan_and_zero_vectors(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "0 50 1000\n", "nan 0 1\nnan 0 0\nnan 0 0\n")
    g = read_bvals_bvecs(bval, bvec, affine=RADIO)
    np.testing.assert_array_equal(g.bvecs, [[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(g.bvals, [0, 50, 1000])


def test_nearly_unit_vectors_are_normalised(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "1000\n", "1.005\n0\n0\n")
    g = read_bvals_bvecs(bval, bvec, affine=RADIO)
    assert g.bvecs[0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("bvals", "bvecs", "needle"),
    [
        ("0 1000\n", "0 nan\n0 0\n0 1\n", "b-vector of volume 1 is [nan, 0.0, 1.0] (not finite)"),
        ("0 1000\n", "0 0\n0 0\n0 0\n", "b-vector of volume 1 is zero at b = 1000 > 50"),
        ("0 51\n", "0 0\n0 0\n0 0\n", "b-vector of volume 1 is zero at b = 51 > 50"),
        ("0 1000\n", "0 1.05\n0 0\n0 0\n", "has length 1.05, not unit within 0.01"),
        ("0 1000 1000\n", "0 1\n0 0\n0 0\n", "2 b-vectors but dwi.bval has 3 b-values"),
        ("0 -5\n", "0 1\n0 0\n0 0\n", "b-value of volume 1 is -5.0"),
        ("0 inf\n", "0 1\n0 0\n0 0\n", "b-value of volume 1 is inf"),
        ("0 x\n", "0 1\n0 0\n0 0\n", "is not a number"),
        ("0 1000\n", "0 1\n0 0\n", "are not 3 x N or N x 3"),
    ],
)
def test_bad_tables_name_file_and_problem(
    tmp_path: Path, bvals: str, bvecs: str, needle: str
) -> None:
    bval, bvec = _write(tmp_path, bvals, bvecs)
    with pytest.raises(UserError) as info:
        read_bvals_bvecs(bval, bvec, affine=RADIO)
    message = str(info.value)
    assert needle in message
    assert "dwi.bv" in message
    assert "\n" not in message


def test_count_must_match_volumes(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "0 1000\n", "0 1\n0 0\n0 0\n")
    with pytest.raises(UserError, match="2 b-values but the DWI has 3 volumes"):
        read_bvals_bvecs(bval, bvec, affine=RADIO, n_volumes=3)


def test_singular_affine_is_refused(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "0 1000\n", "0 1\n0 0\n0 0\n")
    with pytest.raises(UserError, match="singular"):
        read_bvals_bvecs(bval, bvec, affine=np.diag([1.0, 1.0, 0.0, 1.0]))


def test_n_by_3_layout_is_accepted(tmp_path: Path) -> None:
    bval, bvec = _write(tmp_path, "0 1000 1000 1000\n", "0 0 0\n1 0 0\n0 1 0\n0 0 1\n")
    g = read_bvals_bvecs(bval, bvec, affine=RADIO)
    np.testing.assert_array_equal(g.bvecs[1:], np.eye(3))


def test_default_paths_strip_nifti_suffix() -> None:
    assert default_gradient_paths("/a/sub-01_dwi.nii.gz") == (
        Path("/a/sub-01_dwi.bval"),
        Path("/a/sub-01_dwi.bvec"),
    )
    assert default_gradient_paths("x/dwi.nii")[1] == Path("x/dwi.bvec")


@pytest.mark.parametrize(
    ("stem", "nifti", "n", "n_b0"),
    [("small_64D", "small_64D.nii", 65, 1), ("small_101D", "small_101D.nii.gz", 102, 1),
     ("small_25", "small_25.nii.gz", 26, 1)],
)
def test_dipy_small_files_load(stem: str, nifti: str, n: int, n_b0: int) -> None:
    import nibabel as nib
    from dipy.io import read_bvals_bvecs as dipy_read

    if not (DIPY_FILES / nifti).exists():
        pytest.skip(f"dipy data file {nifti} not shipped")
    img = nib.load(str(DIPY_FILES / nifti))
    g = read_bvals_bvecs(
        DIPY_FILES / f"{stem}.bval", DIPY_FILES / f"{stem}.bvec",
        affine=img.affine, n_volumes=img.shape[3],
    )
    assert g.bvals.shape == (n,) and g.bvecs.shape == (n, 3)
    assert int(g.b0_mask.sum()) == n_b0
    dw = ~g.b0_mask
    np.testing.assert_allclose(np.linalg.norm(g.bvecs[dw], axis=1), 1.0, atol=1e-12)
    assert np.all(g.bvecs[g.b0_mask] == 0)
    # same as dipy's reader up to the FSL x flip (det > 0) and normalisation
    bvals_ref, bvecs_ref = dipy_read(
        str(DIPY_FILES / f"{stem}.bval"), str(DIPY_FILES / f"{stem}.bvec")
    )
    flip = np.linalg.det(img.affine[:3, :3]) > 0
    ref = bvecs_ref[dw] * ([-1.0, 1.0, 1.0] if flip else 1.0)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(g.bvecs[dw], ref, atol=1e-12)
    np.testing.assert_array_equal(g.bvals, bvals_ref)
    gtab = g.to_dipy()
    assert int(gtab.b0s_mask.sum()) == n_b0


def test_small_101d_lowest_b_is_b0() -> None:
    if not (DIPY_FILES / "small_101D.bval").exists():
        pytest.skip("small_101D not shipped")
    g = read_bvals_bvecs(
        DIPY_FILES / "small_101D.bval", DIPY_FILES / "small_101D.bvec",
        affine=np.diag([-2.5, 2.5, 2.5, 1.0]),
    )
    assert g.bvals.min() == 15.0
    assert len(np.unique(g.bvals)) == 55
    assert g.bvecs[g.bvals == 15.0].tolist() == [[0.0, 0.0, 0.0]]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1, 1), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 0.1),
    st.sampled_from([NEURO, RADIO]),
)
def test_write_read_round_trip(tmp_path_factory, vec, affine) -> None:
    d = tmp_path_factory.mktemp("rt")
    v = np.asarray(vec) / np.linalg.norm(vec)
    g = check_gradients([0.0, 1000.0], [[0, 0, 0], v])
    write_bvals_bvecs(d / "a.bval", d / "a.bvec", g, affine=affine)
    again = read_bvals_bvecs(d / "a.bval", d / "a.bvec", affine=affine)
    np.testing.assert_allclose(again.bvecs, g.bvecs, atol=1e-9)
    np.testing.assert_array_equal(again.bvals, g.bvals)
