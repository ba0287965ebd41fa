"""Build the real-data example: dipy's small_64D dMRI plus a synthetic microscopy level.

Writes, into this folder (or the folder given as the first argument):

- ``small_64D.nii``, ``small_64D.bval``, ``small_64D.bvec``: copied from dipy's package
  data (a real 10 x 10 x 10 x 65 acquisition with an oblique affine and a NaN b-vector
  row for its b0 volume);
- ``microscopy.ome.zarr``: 64^3 voxels of 50 um (NGFF 0.4), straight tubes running along
  the array's x axis (array axis 2);
- ``microscopy_to_dmri.txt``: a 4x4 RAS-mm matrix (a 30 degree rotation, a shear and a
  translation) that places the microscopy at the centre of the dMRI field of view;
- ``manifest.toml``: the dataset manifest tying them together.

Run ``python examples/real-data/make_example.py``, then load it with
``validation.manifest.load_dataset("examples/real-data")``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

#: Tube axis in the microscopy array frame (z, y, x): along x.
TUBE_AXIS_ARRAY = np.array([0.0, 0.0, 1.0])
SHAPE = (64, 64, 64)
VOXEL_UM = 50.0
ROTATION = ((1.0, 1.0, 0.0), 30.0)  # axis, degrees
SHEAR_XY = 0.2  # x' = x + 0.2 y


def microscopy_volume(rng: np.random.Generator) -> np.ndarray:
    """Bright tubes (radius 3 voxels, 12 voxels apart) along array axis 2, with noise."""
    z, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    dz = (z - 6) % 12 - 6
    dy = (y - 6) % 12 - 6
    section = np.exp(-(dz**2 + dy**2) / (2 * 2.0**2)).astype(np.float32)
    vol = np.repeat(section[:, :, None], SHAPE[2], axis=2)
    vol += rng.normal(0.0, 0.02, size=SHAPE).astype(np.float32)
    return vol


def placement(dwi_affine: np.ndarray, dwi_shape: tuple[int, ...], world_centre: np.ndarray):
    """Microscopy world -> dMRI world: rotate and shear about the microscopy centre, then
    move that centre onto the dMRI grid centre."""
    from validation.transforms import rotation_matrix

    rot = rotation_matrix(*ROTATION)
    shear = np.eye(4)
    shear[0, 1] = SHEAR_XY
    dmri_centre = dwi_affine[:3, :3] @ ((np.asarray(dwi_shape[:3]) - 1) / 2.0) + dwi_affine[:3, 3]
    to_origin = np.eye(4)
    to_origin[:3, 3] = -world_centre
    to_centre = np.eye(4)
    to_centre[:3, 3] = dmri_centre
    return to_centre @ rot @ shear @ to_origin


def main(out_dir: str | Path | None = None) -> Path:
    import dipy
    import nibabel as nib

    from validation.io.omezarr import write_ome_zarr
    from validation.manifest import write_manifest
    from validation.transforms import write_matrix_txt

    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    files = Path(dipy.__file__).parent / "data" / "files"
    for name in ("small_64D.nii", "small_64D.bval", "small_64D.bvec"):
        shutil.copyfile(files / name, out / name)
    img = nib.load(str(out / "small_64D.nii"))
    rng = np.random.default_rng(0)
    write_ome_zarr(out / "microscopy.ome.zarr", microscopy_volume(rng),
                   spacing=(VOXEL_UM,) * 3, units="micrometer", overwrite=True)
    # microscopy world (x, y, z) of the volume centre: array (z, y, x) reversed, in mm
    centre = (np.asarray(SHAPE[::-1]) - 1) / 2.0 * VOXEL_UM * 1e-3
    write_matrix_txt(out / "microscopy_to_dmri.txt", placement(img.affine, img.shape, centre))
    manifest = {
        "dataset": {
            "name": "small64d-synthetic-microscopy",
            "description": "dipy small_64D with a synthetic 50 um microscopy level placed "
                           "through a rotation + shear",
        },
        "dmri": {"dwi": "small_64D.nii"},
        "microscopy": [{
            "name": "synthetic-50um",
            "path": "microscopy.ome.zarr",
            "level": 0,
            "transform": ["microscopy_to_dmri.txt"],
        }],
    }
    return write_manifest(out / "manifest.toml", manifest, overwrite=True)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else None))
