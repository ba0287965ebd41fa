"""The real-data example: dipy small_64D + a synthetic microscopy level through an affine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from validation.manifest import load_dataset
from validation.transforms import to_dmri_space, vectors_world_to_ijk

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real-data"


def _make_example():
    spec = importlib.util.spec_from_file_location("make_example", EXAMPLE / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    if not (Path(__import__("dipy").__file__).parent / "data" / "files" / "small_64D.nii").exists():
        pytest.skip("dipy's small_64D is not shipped")
    module = _make_example()
    out = tmp_path_factory.mktemp("real-data")
    manifest = module.main(out)
    return module, manifest


def test_committed_manifest_matches_the_script(example) -> None:
    _, manifest = example
    assert (EXAMPLE / "manifest.toml").read_text() == manifest.read_text()


def test_example_loads_with_oblique_affine_and_nan_b0(example) -> None:
    _, manifest = example
    ds = load_dataset(manifest)
    assert ds.dwi.shape == (10, 10, 10, 65)
    assert np.linalg.det(ds.affine[:3, :3]) < 0  # no FSL flip
    assert ds.bvecs[0].tolist() == [0.0, 0.0, 0.0]  # its NaN b0 row
    level = ds.level("synthetic-50um")
    assert level.overlap_fraction == 1.0
    assert level.spacing_um == (50.0, 50.0, 50.0)
    # the microscopy centre lands on the dMRI grid centre (voxel 4.5, 4.5, 4.5)
    centre = level.voxels_to_dmri([31.5, 31.5, 31.5])
    inv = np.linalg.inv(ds.affine)
    np.testing.assert_allclose(inv[:3, :3] @ centre + inv[:3, 3], [4.5, 4.5, 4.5], atol=1e-9)


def test_structure_tensor_orientations_land_in_dmri_frame(example) -> None:
    module, manifest = example
    from validation.orientation import structure_tensor_orientation

    ds = load_dataset(manifest)
    level = ds.level("synthetic-50um")
    vol = np.asarray(level.volume[8:40, 8:40, 8:40])
    st = structure_tensor_orientation(vol, sigma=1.0, rho=3.0)
    keep = st.anisotropy > np.quantile(st.anisotropy, 0.5)
    ijk = np.argwhere(keep) + 8
    v_dmri, p_dmri = to_dmri_space(st.vectors[keep], ijk, level.transform,
                                   microscopy_affine=level.voxel_to_world, grid_affine=ds.affine)
    # expected: the tube axis (array x) pushed through the whole affine, in dMRI ijk frame
    a = level.voxel_to_dmri
    expected_world = a[:3, :3] @ module.TUBE_AXIS_ARRAY
    expected = vectors_world_to_ijk(expected_world / np.linalg.norm(expected_world), ds.affine)
    angles = np.degrees(np.arccos(np.clip(np.abs(v_dmri @ expected), 0.0, 1.0)))
    assert np.median(angles) < 3.0
    # without the shear/rotation (identity reorientation) the error would be large
    naive = vectors_world_to_ijk(np.array([1.0, 0.0, 0.0]), ds.affine)
    assert np.degrees(np.arccos(abs(naive @ expected))) > 20.0
    # all sampled positions fall inside the dMRI grid
    assert np.all((p_dmri > -0.5) & (p_dmri < 9.5))
