"""Acceptance: microscopy imaged through a known rotation, shear or smooth displacement
field, with that transform in the manifest, gives the dMRI-space orientations of the
untransformed fibres (structure tensor -> reorientation through the chain)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from validation.io.omezarr import write_ome_zarr
from validation.manifest import load_dataset, write_manifest
from validation.transforms import (
    AffineTransform,
    DisplacementFieldTransform,
    Transform,
    rotation_matrix,
    to_dmri_space,
    vectors_world_to_ijk,
    write_matrix_txt,
)

SHAPE = (40, 40, 40)
VOXEL_MM = 0.05
DIRECTION = np.array([1.0, 0.5, 0.2]) / np.linalg.norm([1.0, 0.5, 0.2])  # dMRI world
DMRI_AFFINE = np.array([[1.0, 0, 0, -2.0], [0, 1.0, 0, -2.0], [0, 0, 1.0, -2.0], [0, 0, 0, 1]])
CENTRE = (np.asarray(SHAPE) - 1) / 2 * VOXEL_MM


def _tubes(points_dmri: np.ndarray) -> np.ndarray:
    """Straight bright tubes along DIRECTION (radius ~0.1 mm, 0.5 mm apart), dMRI world."""
    e1 = np.cross(DIRECTION, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(DIRECTION, e1)
    a = (points_dmri @ e1) % 0.5 - 0.25
    b = (points_dmri @ e2) % 0.5 - 0.25
    return np.exp(-(a**2 + b**2) / (2 * 0.08**2)).astype(np.float32)


def _micro_to_world() -> np.ndarray:
    m = np.zeros((4, 4))
    m[0, 2] = m[1, 1] = m[2, 0] = VOXEL_MM  # array (z, y, x) -> world (x, y, z)
    m[3, 3] = 1.0
    return m


def _about_centre(linear: np.ndarray) -> np.ndarray:
    c = CENTRE
    m = np.eye(4)
    m[:3, :3] = linear[:3, :3]
    m[:3, 3] = c - linear[:3, :3] @ c - c  # microscopy centre -> dMRI origin
    return m


def _field_transform(tmp_path: Path) -> tuple[Transform, list]:
    shape = (16, 16, 16)
    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    affine[:3, 3] = -0.5
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x = ijk * 0.2 - 0.5
    u = 0.08 * np.stack([np.sin(2 * np.pi * x[..., 1] / 3.0), np.sin(2 * np.pi * x[..., 2] / 3.0),
                         np.sin(2 * np.pi * x[..., 0] / 3.0)], axis=-1)
    u -= CENTRE  # also move the microscopy centre to the dMRI origin
    lps = u * [-1.0, -1.0, 1.0]
    nib.save(nib.Nifti1Image(lps[:, :, :, None, :].astype(np.float64), affine),
             tmp_path / "warp.nii.gz")
    return DisplacementFieldTransform(u, affine), ["warp.nii.gz"]


def _dataset(tmp_path: Path, case: str) -> Path:
    if case == "rotation":
        m = _about_centre(rotation_matrix([0.3, -0.4, 1.0], 35.0))
        t: Transform = AffineTransform(m)
        write_matrix_txt(tmp_path / "t.txt", m)
        chain: list = ["t.txt"]
    elif case == "shear":
        lin = np.eye(4)
        lin[0, 1], lin[2, 0] = 0.4, -0.25
        m = _about_centre(lin)
        t = AffineTransform(m)
        write_matrix_txt(tmp_path / "t.txt", m)
        chain = ["t.txt"]
    else:
        t, chain = _field_transform(tmp_path)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    m2w = _micro_to_world()
    world = ijk.reshape(-1, 3) @ m2w[:3, :3].T
    volume = _tubes(t.apply_points(world)).reshape(SHAPE)  # imaged in microscopy space
    write_ome_zarr(tmp_path / "m.ome.zarr", volume, spacing=(50.0,) * 3, units="micrometer")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), DMRI_AFFINE), tmp_path / "d.nii")
    (tmp_path / "d.bval").write_text("0 1000\n")
    (tmp_path / "d.bvec").write_text("0 1\n0 0\n0 0\n")
    return write_manifest(tmp_path / "manifest.toml", {
        "dmri": {"dwi": "d.nii"},
        "microscopy": [{"name": case, "path": "m.ome.zarr", "transform": chain}],
    })


@pytest.mark.parametrize("case", ["rotation", "shear", "field"])
def test_known_transform_restores_fibre_orientation(tmp_path: Path, case: str) -> None:
    from validation.orientation import structure_tensor_orientation

    ds = load_dataset(_dataset(tmp_path, case))
    level = ds.level(case)
    assert (level.voxel_to_dmri is None) == (case == "field")
    st = structure_tensor_orientation(np.asarray(level.volume), sigma=1.0, rho=3.0)
    inner = np.zeros(SHAPE, dtype=bool)
    inner[6:-6, 6:-6, 6:-6] = True
    keep = inner & (st.anisotropy > np.quantile(st.anisotropy[inner], 0.5))
    v, _ = to_dmri_space(st.vectors[keep], np.argwhere(keep), level.transform,
                         microscopy_affine=level.voxel_to_world, grid_affine=ds.affine)
    expected = vectors_world_to_ijk(DIRECTION, ds.affine)
    angles = np.degrees(np.arccos(np.clip(np.abs(v @ expected), 0, 1)))
    assert np.median(angles) < 4.0
    # ignoring the transform's local Jacobian (identity reorientation) is clearly wrong
    raw = vectors_world_to_ijk(
        st.vectors[keep] @ level.voxel_to_world[:3, :3].T, ds.affine)
    raw_angles = np.degrees(np.arccos(np.clip(np.abs(raw @ expected), 0, 1)))
    # (the field's gradient is ~0.17, so its local rotation/shear is a few degrees)
    margin = 3.0 if case == "field" else 10.0
    assert np.median(raw_angles) > np.median(angles) + margin
