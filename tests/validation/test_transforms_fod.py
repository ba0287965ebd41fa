"""Acceptance: a microscopy volume imaged through a known rotation or shear, with that
transform in the manifest, gives the same microscopy FOD in dMRI space as the volume
imaged without it (ACC > 0.95 in fibre voxels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("validation.fod")

from metrics import acc  # noqa: E402
from validation.fod import microscopy_fod  # noqa: E402
from validation.io.omezarr import write_ome_zarr  # noqa: E402
from validation.manifest import load_dataset, write_manifest  # noqa: E402
from validation.orientation import structure_tensor_orientation  # noqa: E402
from validation.transforms import rotation_matrix, write_matrix_txt  # noqa: E402

SHAPE = (48, 48, 48)
VOXEL_MM = 0.05
CENTRE = (np.asarray(SHAPE) - 1) / 2 * VOXEL_MM
DIRECTION = np.array([1.0, 0.5, 0.2]) / np.linalg.norm([1.0, 0.5, 0.2])
GRID_SHAPE = (4, 4, 4)
GRID_AFFINE = np.diag([0.5, 0.5, 0.5, 1.0])
GRID_AFFINE[:3, 3] = -0.75  # voxel centres at -0.75, -0.25, 0.25, 0.75 mm


def _tubes(points: np.ndarray) -> np.ndarray:
    e1 = np.cross(DIRECTION, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(DIRECTION, e1)
    a = (points @ e1) % 0.4 - 0.2
    b = (points @ e2) % 0.4 - 0.2
    return np.exp(-(a**2 + b**2) / (2 * 0.06**2)).astype(np.float32)


def _placement(linear: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = linear[:3, :3]
    m[:3, 3] = -linear[:3, :3] @ CENTRE  # microscopy centre -> dMRI origin
    return m


def _fod(tmp_path: Path, name: str, linear: np.ndarray):
    folder = tmp_path / name
    folder.mkdir()
    m = _placement(linear)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = ijk[:, ::-1] * VOXEL_MM  # array (z, y, x) -> world (x, y, z)
    volume = _tubes(world @ m[:3, :3].T + m[:3, 3]).reshape(SHAPE)
    write_ome_zarr(folder / "m.ome.zarr", volume, spacing=(50.0,) * 3, units="micrometer")
    write_matrix_txt(folder / "t.txt", m)
    manifest = write_manifest(folder / "manifest.toml", {
        "microscopy": [{"name": name, "path": "m.ome.zarr", "transform": ["t.txt"]}]})
    level = load_dataset(manifest).level(name)
    st = structure_tensor_orientation(np.asarray(level.volume), sigma=1.0, rho=3.0)
    fod = microscopy_fod(
        st.vectors, st.anisotropy, microscopy_affine=level.voxel_to_dmri,
        grid_shape=GRID_SHAPE, grid_affine=GRID_AFFINE,
        spacing=np.linalg.norm(level.voxel_to_world[:3, :3], axis=0),
    )
    return fod, st, level


@pytest.mark.parametrize("case", ["rotation", "shear"])
def test_transformed_microscopy_gives_the_same_fod(tmp_path: Path, case: str) -> None:
    reference, _, _ = _fod(tmp_path, "reference", np.eye(4))
    if case == "rotation":
        linear = rotation_matrix([0.3, -0.4, 1.0], 35.0)
    else:
        linear = np.eye(4)
        linear[0, 1], linear[2, 0] = 0.4, -0.25
    moved, st, level = _fod(tmp_path, case, linear)
    both = (reference.count > 0.5 * reference.count.max()) & (moved.count > 0.5 * moved.count.max())
    assert both.sum() >= 8
    values = acc(reference.sh[both], moved.sh[both])
    assert np.all(values > 0.95)
    # the FOD peaks point along the tubes in the dMRI frame
    expected = DIRECTION  # grid axes are world axes here
    cos = np.abs(moved.peaks[both][:, 0] @ expected)
    assert np.degrees(np.arccos(np.clip(cos, 0, 1))).max() < 5.0
    # placing the same orientations without the rotation / shear does not match
    naive = microscopy_fod(
        st.vectors, st.anisotropy, microscopy_affine=_placement(np.eye(4)) @ level.voxel_to_world,
        grid_shape=GRID_SHAPE, grid_affine=GRID_AFFINE)
    assert np.median(acc(reference.sh[both], naive.sh[both])) < 0.9


def test_displacement_field_fod_by_local_affines(tmp_path: Path) -> None:
    import nibabel as nib

    from validation.transforms import DisplacementFieldTransform

    reference, _, _ = _fod(tmp_path, "reference", np.eye(4))
    # a smooth field (gradient ~0.2) that also moves the microscopy centre to the origin
    shape = (16, 16, 16)
    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    affine[:3, 3] = -0.5
    x = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) * 0.2 - 0.5
    u = 0.1 * np.sin(2 * np.pi * x[..., [1, 2, 0]] / 3.0) - CENTRE
    field = DisplacementFieldTransform(u, affine)
    folder = tmp_path / "field"
    folder.mkdir()
    nib.save(nib.Nifti1Image((u * [-1.0, -1.0, 1.0])[:, :, :, None, :], affine),
             folder / "warp.nii.gz")  # ITK: LPS vectors
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    volume = _tubes(field.apply_points(ijk[:, ::-1] * VOXEL_MM)).reshape(SHAPE)
    write_ome_zarr(folder / "m.ome.zarr", volume, spacing=(50.0,) * 3, units="micrometer")
    manifest = write_manifest(folder / "manifest.toml", {
        "microscopy": [{"name": "field", "path": "m.ome.zarr", "transform": ["warp.nii.gz"]}]})
    level = load_dataset(manifest).level("field")
    assert level.voxel_to_dmri is None
    st = structure_tensor_orientation(np.asarray(level.volume), sigma=1.0, rho=3.0)
    spacing = np.linalg.norm(level.voxel_to_world[:3, :3], axis=0)

    def chunked_fod(use_jacobian: bool) -> tuple[np.ndarray, np.ndarray]:
        sh = np.zeros(reference.sh.shape)
        weight = np.zeros(GRID_SHAPE)
        count = np.zeros(GRID_SHAPE)
        block = 16  # chunk by chunk, each with the local affine of its centre
        for start in np.ndindex(*(n // block for n in SHAPE)):
            lo = np.asarray(start) * block
            sl = tuple(slice(a, a + block) for a in lo)
            shift = np.eye(4)
            shift[:3, 3] = lo
            local = level.local_voxel_to_dmri(lo + (block - 1) / 2) @ shift
            if not use_jacobian:  # positions moved, orientations not reoriented
                local[:3, :3] = level.voxel_to_world[:3, :3]
            part = microscopy_fod(st.vectors[sl], st.anisotropy[sl], microscopy_affine=local,
                                  grid_shape=GRID_SHAPE, grid_affine=GRID_AFFINE,
                                  spacing=spacing, scheduler="synchronous")
            sh += part.sh * part.weight[..., None]
            weight += part.weight
            count += part.count
        w = weight[..., None]
        return np.divide(sh, w, out=np.zeros_like(sh), where=w > 0), count

    sh, count = chunked_fod(True)
    both = (reference.count > 0.5 * reference.count.max()) & (count > 0.5 * count.max())
    assert both.sum() >= 8
    assert np.all(acc(reference.sh[both], sh[both]) > 0.95)
    naive, _ = chunked_fod(False)
    assert np.median(acc(reference.sh[both], naive[both])) < 0.93
