"""Dataset manifests: schema, loading, and every bad input as a one-line UserError."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from validation.errors import ConfigError, UserError
from validation.io.omezarr import write_ome_zarr
from validation.manifest import (
    dumps_manifest,
    load_dataset,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from validation.transforms import rotation_matrix, write_itk_affine, write_matrix_txt

GRID = (6, 7, 8)
AFFINE = np.array([[2.0, 0, 0, -6], [0, 2.0, 0, -7], [0, 0, 2.0, -8], [0, 0, 0, 1]])


def _make_dataset(tmp_path: Path, *, n: int = 4, dwi=None, affine=AFFINE, bvals="0 1000 1000 1000",
                  bvecs="0 1 0 0\n0 0 1 0\n0 0 0 1\n", mask_shape=GRID, mask_affine=AFFINE,
                  transform=None, micro_shape=(20, 24, 28), spacing_um=(100.0, 100.0, 100.0),
                  extra_level: dict | None = None) -> Path:
    data = np.ones(GRID + (n,), dtype=np.float32) if dwi is None else dwi
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text(bvals + "\n")
    (tmp_path / "dwi.bvec").write_text(bvecs)
    nib.save(nib.Nifti1Image(np.ones(mask_shape, dtype=np.uint8), mask_affine),
             tmp_path / "mask.nii.gz")
    vol = np.zeros(micro_shape, dtype=np.float32)
    write_ome_zarr(tmp_path / "micro.ome.zarr", vol, spacing=spacing_um, units="micrometer")
    if transform is None:
        transform = np.eye(4)
        transform[:3, 3] = [-1.0, -1.0, -1.0]
    write_matrix_txt(tmp_path / "micro_to_dmri.txt", transform)
    manifest = {
        "dataset": {"name": "toy"},
        "dmri": {"dwi": "dwi.nii.gz", "mask": "mask.nii.gz"},
        "microscopy": [{"name": "micro", "path": "micro.ome.zarr",
                        "transform": ["micro_to_dmri.txt"]}],
    }
    if extra_level is not None:
        manifest["microscopy"].append(extra_level)
    write_manifest(tmp_path / "manifest.toml", manifest)
    return tmp_path / "manifest.toml"


def _error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_dataset_loads(tmp_path: Path) -> None:
    ds = load_dataset(_make_dataset(tmp_path))
    assert ds.name == "toy"
    assert ds.dwi.shape == GRID + (4,) and ds.dwi.dtype == np.float32
    np.testing.assert_array_equal(ds.affine, AFFINE)
    # det > 0: FSL's x is negated into the ijk frame
    np.testing.assert_array_equal(ds.bvecs, [[0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(ds.bvals, [0, 1000, 1000, 1000])
    assert ds.mask.dtype == bool and ds.mask.all()
    level = ds.level("micro")
    assert level.shape == (20, 24, 28)
    assert level.spacing_um == (100.0, 100.0, 100.0)
    assert level.axis_names == ("z", "y", "x")
    # array (z, y, x) -> world (x, y, z), 0.1 mm voxels
    np.testing.assert_allclose(level.voxel_to_world[:3, :3],
                               [[0, 0, 0.1], [0, 0.1, 0], [0.1, 0, 0]])
    # voxel (z=0, y=0, x=10) -> world (1.0, 0, 0) -> dMRI world (0, -1, -1)
    np.testing.assert_allclose(level.voxels_to_dmri([0, 0, 10]), [0.0, -1.0, -1.0])
    np.testing.assert_allclose(level.voxel_to_dmri @ [0, 0, 10, 1], [0.0, -1.0, -1.0, 1.0])
    assert level.overlap_fraction == 1.0
    with pytest.raises(UserError, match="no microscopy level 'nope'"):
        ds.level("nope")


def test_manifest_round_trip(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    m = read_manifest(path)
    assert m["dmri"]["b0_threshold"] == 50.0
    assert m["microscopy"][0]["transform"] == [{"path": "micro_to_dmri.txt", "invert": False}]
    again = validate_manifest(__import__("tomllib").loads(dumps_manifest(m)))
    assert again == m
    with pytest.raises(UserError, match="exists already"):
        write_manifest(path, m)


def test_itk_inverted_entry_in_chain(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    rot = rotation_matrix([0, 0, 1], 30.0)
    # registered with fixed = dMRI, moving = microscopy: file maps dMRI -> microscopy
    write_itk_affine(tmp_path / "reg.txt", np.linalg.inv(rot))
    m = read_manifest(path)
    m["microscopy"][0]["transform"] = [{"path": "reg.txt", "invert": True}]
    write_manifest(path, m, overwrite=True)
    level = load_dataset(path).level("micro")
    np.testing.assert_allclose(level.transform.as_affine(), rot, atol=1e-12)


def test_inline_matrix_and_neuroglancer_entries(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    m = read_manifest(path)
    m["microscopy"][0]["transform"] = [
        {"matrix": np.diag([1.0, 1.0, 1.0, 1.0]).tolist()},
        {"neuroglancer": {"matrix": [[1, 0, 0, -100], [0, 1, 0, 0], [0, 0, 1, 0]],
                          "output_dimensions": {"x": [10, "um"], "y": [10, "um"],
                                                "z": [10, "um"]}}},
    ]
    write_manifest(path, m, overwrite=True)
    level = load_dataset(path).level("micro")
    # Neuroglancer's columns follow the source's axes, here (z, y, x): an identity matrix
    # sends source z to output x. Voxel (0, 0, 10) is world (x, y, z) = (1, 0, 0) mm, so
    # output x = source z - 100 * 10 um = -1 mm and output z = source x = 1 mm.
    np.testing.assert_allclose(level.voxels_to_dmri([0, 0, 10]), [-1.0, 0.0, 1.0], atol=1e-12)


# ------------------------------------------------------------------ bad inputs


def test_bval_count_not_matching_volumes(tmp_path: Path) -> None:
    msg = _error(_make_dataset(tmp_path, bvals="0 1000 1000", bvecs="0 1 0\n0 0 1\n0 0 0\n"))
    assert "dwi.bval" in msg and "3 b-values but the DWI has 4 volumes" in msg


@pytest.mark.parametrize(
    ("bvecs", "needle"),
    [
        ("0 nan 0 0\n0 0 1 0\n0 0 0 1\n", "b-vector of volume 1 is [nan, 0.0, 0.0] (not finite)"),
        ("0 0 0 0\n0 0 1 0\n0 0 0 1\n", "b-vector of volume 1 is zero at b = 1000"),
        ("0 1.1 0 0\n0 0 1 0\n0 0 0 1\n", "has length 1.1, not unit within 0.01"),
    ],
)
def test_bad_bvecs(tmp_path: Path, bvecs: str, needle: str) -> None:
    msg = _error(_make_dataset(tmp_path, bvecs=bvecs))
    assert needle in msg and "dwi.bvec" in msg


def test_b0_nan_vector_is_fine(tmp_path: Path) -> None:
    ds = load_dataset(_make_dataset(tmp_path, bvecs="nan 1 0 0\nnan 0 1 0\nnan 0 0 1\n"))
    assert ds.bvecs[0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_dwi(tmp_path: Path, value: float) -> None:
    data = np.ones(GRID + (4,), dtype=np.float32)
    data[1, 2, 3, 2] = value
    msg = _error(_make_dataset(tmp_path, dwi=data))
    assert "dwi.nii.gz" in msg and "NaN or Inf" in msg and "[1, 2, 3, 2]" in msg


def test_mask_shape_mismatch(tmp_path: Path) -> None:
    msg = _error(_make_dataset(tmp_path, mask_shape=(6, 7, 9)))
    assert "mask.nii.gz" in msg and "shape (6, 7, 9) does not match the DWI grid (6, 7, 8)" in msg


def test_mask_affine_mismatch(tmp_path: Path) -> None:
    other = AFFINE.copy()
    other[0, 3] += 1.0
    msg = _error(_make_dataset(tmp_path, mask_affine=other))
    assert "mask.nii.gz" in msg and "affine differs from the DWI's" in msg


def test_singular_dwi_affine(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    img = nib.load(tmp_path / "dwi.nii.gz")
    img = nib.Nifti1Image(np.asarray(img.dataobj), None)
    img.header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, tmp_path / "dwi.nii.gz")
    msg = _error(path)
    assert "dwi.nii.gz" in msg and "singular" in msg


def test_non_finite_dwi_affine(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    img = nib.load(tmp_path / "dwi.nii.gz")
    bad = AFFINE.copy()
    bad[0, 0] = np.nan
    img = nib.Nifti1Image(np.asarray(img.dataobj), None)
    img.header.set_sform(bad, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, tmp_path / "dwi.nii.gz")
    msg = _error(path)
    assert "dwi.nii.gz" in msg and ("not a finite 4x4" in msg or "singular" in msg)


def test_singular_transform_in_chain(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    (tmp_path / "micro_to_dmri.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 0 0\n0 0 0 1\n")
    msg = _error(path)
    assert "micro_to_dmri.txt" in msg and "singular" in msg


def test_microscopy_outside_fov_says_the_overlap(tmp_path: Path) -> None:
    far = np.eye(4)
    far[:3, 3] = [100.0, 0.0, 0.0]
    msg = _error(_make_dataset(tmp_path, transform=far))
    assert "microscopy 'micro' does not overlap the dMRI field of view" in msg
    assert "overlap 0%" in msg and "the grid is 6 x 7 x 8" in msg
    assert "[53.0, 54.4]" in msg  # x extent in dMRI voxels: (100 + [-0.05, 2.75] + 6) / 2


def test_partial_overlap_is_recorded(tmp_path: Path) -> None:
    shift = np.eye(4)
    shift[:3, 3] = [4.0, -1.0, -1.0]  # the microscopy box spans x in [3.95, 6.75] mm
    ds = load_dataset(_make_dataset(tmp_path, transform=shift))
    frac = ds.level("micro").overlap_fraction
    assert 0.0 < frac < 1.0


def test_ome_zarr_without_units_needs_voxel_size(tmp_path: Path) -> None:
    import zarr

    path = _make_dataset(tmp_path)
    group = zarr.open_group(str(tmp_path / "micro.ome.zarr"), mode="r+")
    attrs = dict(group.attrs)
    for axis in attrs["multiscales"][0]["axes"]:
        axis.pop("unit", None)
    group.attrs.put(attrs) if hasattr(group.attrs, "put") else group.attrs.update(attrs)
    msg = _error(path)
    assert "micro.ome.zarr" in msg and "no units on its spatial axes; give voxel_size_um" in msg
    m = read_manifest(path)
    m["microscopy"][0]["voxel_size_um"] = 50.0
    write_manifest(path, m, overwrite=True)
    assert load_dataset(path).level("micro").spacing_um == (50.0, 50.0, 50.0)


def test_ome_zarr_without_multiscales(tmp_path: Path) -> None:
    import zarr

    path = _make_dataset(tmp_path)
    group = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(4, 4, 4), dtype="f4")
    m = read_manifest(path)
    m["microscopy"][0]["path"] = "bare.zarr"
    write_manifest(path, m, overwrite=True)
    msg = _error(path)
    assert "bare.zarr" in msg and "no NGFF multiscales metadata" in msg


def test_tiff_without_voxel_size(tmp_path: Path) -> None:
    import tifffile

    path = _make_dataset(tmp_path)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 5, 6), dtype=np.uint8),
                     photometric="minisblack")
    m = read_manifest(path)
    m["microscopy"][0]["path"] = "stack.tif"
    write_manifest(path, m, overwrite=True)
    msg = _error(path)
    assert "stack.tif" in msg and "no voxel size" in msg


def test_remote_path_is_refused(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    m = read_manifest(path)
    m["microscopy"][0]["path"] = "gs://bucket/x.ome.zarr"
    write_manifest(path, m, overwrite=True)
    assert "is not a local path" in _error(path)


def test_missing_files(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    (tmp_path / "dwi.bvec").unlink()
    assert "dwi.bvec: b-vector file not found" in _error(path)
    assert "manifest not found" in _error(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[dmri]\ndwii = 'x'\n", "unknown key 'dwii' in [dmri] (did you mean 'dwi'?)"),
        ("[dmri]\nmask = 'x'\n", "[dmri] needs dwi"),
        ("[[microscopy]]\nname = 'a'\npath = 'a'\n", "microscopy 'a' needs transform"),
        ("[[microscopy]]\nname = 'a'\npath = 'a'\ntransform = []\n"
         "[[microscopy]]\nname = 'a'\npath = 'b'\ntransform = []\n", "'a' is repeated"),
        ("[[microscopy]]\nname = 'a'\npath = 'a'\ntransform = []\nvoxel_size_um = [1, 0, 1]\n",
         "must be 3 finite positive numbers"),
        ("[[microscopy]]\nname = 'a'\npath = 'a'\ntransform = [{path = 'x', matrix = []}]\n",
         "needs exactly one of path, matrix, neuroglancer"),
        ("[[microscopy]]\nname = 'a'\npath = 'a'\ntransform = [{matrix = [[1, 2]]}]\n",
         "is not 4x4 or 3x4"),
        ("[dmri]\ndwi = 1\n", "dwi = 1 should be a str"),
        ("[truth]\npeakz = 'p'\n", "unknown key 'peakz' in [truth] (did you mean 'peaks'?)"),
        ("", "neither [dmri] nor [[microscopy]]"),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_dataset(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_manifest_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_manifest(tmp_path / "m.toml", {"dmri": {"mask": "x"}})
    assert list(tmp_path.iterdir()) == []


def test_truth_paths_resolved(tmp_path: Path) -> None:
    path = _make_dataset(tmp_path)
    (tmp_path / "peaks.nii.gz").write_bytes(b"")
    m = read_manifest(path)
    m["truth"] = {"peaks": "peaks.nii.gz"}
    write_manifest(path, m, overwrite=True)
    assert load_dataset(path).truth == {"peaks": tmp_path / "peaks.nii.gz"}
    m["truth"] = {"peaks": "missing.nii.gz"}
    write_manifest(path, m, overwrite=True)
    assert "[truth] peaks" in _error(path)


def test_write_microscopy_level_round_trips_its_placement(tmp_path: Path) -> None:
    from validation.manifest import write_microscopy_level

    path = _make_dataset(tmp_path)
    placement = rotation_matrix([1.0, 2.0, 3.0], 25.0)
    placement[:3, :3] *= 0.02  # 20 um voxels
    placement[:3, 3] = [-1.0, -2.0, -0.5]
    vol = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    entry = write_microscopy_level(tmp_path, "phantom-20um", vol, spacing_um=(20.0,) * 3,
                                   voxel_to_dmri=placement)
    assert entry == {"name": "phantom-20um", "path": "phantom-20um.ome.zarr", "level": 0,
                     "transform": ["phantom-20um_to_dmri.txt"]}
    m = read_manifest(path)
    m["microscopy"].append(entry)
    write_manifest(path, m, overwrite=True)
    level = load_dataset(path).level("phantom-20um")
    np.testing.assert_allclose(level.voxel_to_dmri, placement, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(level.volume), vol)
    with pytest.raises(UserError, match="exists already"):
        write_microscopy_level(tmp_path, "phantom-20um", vol, spacing_um=(20.0,) * 3,
                               voxel_to_dmri=placement)
    with pytest.raises(UserError, match="must be letters"):
        write_microscopy_level(tmp_path, "a/b", vol, spacing_um=(20.0,) * 3,
                               voxel_to_dmri=placement)
