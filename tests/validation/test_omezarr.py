"""OME-Zarr (NGFF 0.4 / zarr v2, 0.5 / zarr v3), TIFF and NIfTI readers and the writer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from validation.errors import UserError
from validation.io.omezarr import open_ome_zarr, spacing_to_um, write_ome_zarr
from validation.io.volumes import open_volume


@pytest.fixture
def volume():
    return np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("lazy", [False, True])
def test_round_trip_keeps_values_spacing_units_and_attrs(tmp_path, volume, version, lazy):
    data = da.from_array(volume, chunks=(3, 5, 7)) if lazy else volume
    out = write_ome_zarr(tmp_path / "v.ome.zarr", data, spacing=(2.0, 0.5, 0.25),
                         units="nanometer", chunks=(4, 4, 8), attrs={"note": "x"},
                         version=version, translation=(1.0, 2.0, 3.0))
    vol = open_ome_zarr(out)
    np.testing.assert_array_equal(vol.array.compute(), volume)
    assert vol.spacing == (2.0, 0.5, 0.25)
    assert vol.units == "nanometer"
    assert vol.translation == (1.0, 2.0, 3.0)
    assert vol.attrs["note"] == "x"
    assert vol.spacing_um == pytest.approx((2e-3, 5e-4, 2.5e-4))
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == (2 if version == "0.4" else 3)
    assert group["0"].chunks == (4, 4, 8)
    ms = group.attrs["multiscales"] if version == "0.4" else group.attrs["ome"]["multiscales"]
    if version == "0.4":
        assert ms[0]["version"] == "0.4"
    else:
        assert group.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms[0]["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in ms[0]["axes"]} == {"nanometer"}
    assert ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.25]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_vector_fields_are_stored_channel_first_and_read_components_last(tmp_path, version):
    vec = np.random.default_rng(1).random((5, 6, 7, 3)).astype(np.float32)
    out = write_ome_zarr(tmp_path / "vec.ome.zarr", vec, spacing=(1, 1, 1), version=version)
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(group["0"][1], vec[..., 1])
    back = open_ome_zarr(out)
    assert back.array.shape == (5, 6, 7, 3)
    np.testing.assert_array_equal(back.array.compute(), vec)


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path, volume):
    path = tmp_path / "v.ome.zarr"
    write_ome_zarr(path, volume, spacing=(1, 1, 1))
    with pytest.raises(UserError, match="exists already"):
        write_ome_zarr(path, volume * 2, spacing=(1, 1, 1))
    np.testing.assert_array_equal(open_ome_zarr(path).array.compute(), volume)
    write_ome_zarr(path, volume * 2, spacing=(1, 1, 1), overwrite=True)
    np.testing.assert_array_equal(open_ome_zarr(path).array.compute(), volume * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.ome.zarr"]


def test_a_failing_write_leaves_nothing_behind(tmp_path, volume):
    def boom(block):
        raise RuntimeError("renderer failed")

    bad = da.from_array(volume, chunks=5).map_blocks(boom, dtype=np.float32)
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_ome_zarr(tmp_path / "bad.ome.zarr", bad, spacing=(1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_pyramid_levels_and_global_transforms(tmp_path):
    root = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="w", zarr_format=2)
    full = np.arange(8 * 8 * 8, dtype=np.uint16).reshape(8, 8, 8)
    root.create_array("s0", data=full)
    root.create_array("s1", data=full[::2, ::2, ::2])
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}]
        + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale",
                                                          "scale": [1, 1, 2, 2]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale",
                                                          "scale": [1, 2, 4, 4]}]},
        ],
        "coordinateTransformations": [{"type": "scale", "scale": [1, 3, 1, 1]}],
    }]
    # a 4-D array (c = 1) to exercise dropping singleton channel axes
    root.create_array("c0", data=full[None])
    root.attrs["multiscales"] = [dict(root.attrs["multiscales"][0],
                                      datasets=[{"path": "c0", "coordinateTransformations": [
                                          {"type": "scale", "scale": [1, 1, 2, 2]}]},
                                                {"path": "s1", "coordinateTransformations": [
                                                    {"type": "scale", "scale": [2, 4, 4]}]}])]
    level0 = open_ome_zarr(tmp_path / "p.ome.zarr")
    assert level0.array.shape == (8, 8, 8)
    assert level0.spacing == (3.0, 2.0, 2.0)
    assert level0.array.dtype == np.uint16
    with pytest.raises(UserError, match="level 5 does not exist"):
        open_ome_zarr(tmp_path / "p.ome.zarr", level=5)


def test_level_one_of_a_three_axis_pyramid(tmp_path):
    root = zarr.open_group(str(tmp_path / "q.ome.zarr"), mode="w", zarr_format=3)
    full = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    root.create_array("0", data=full)
    root.create_array("1", data=full[::2, ::2, ::2])
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]},
            {"path": "1", "coordinateTransformations": [
                {"type": "scale", "scale": [2, 2, 2]},
                {"type": "translation", "translation": [0.5, 0.5, 0.5]}]},
        ]}]}
    level1 = open_ome_zarr(tmp_path / "q.ome.zarr", level=1)
    np.testing.assert_array_equal(level1.array.compute(), full[::2, ::2, ::2])
    assert level1.spacing == (2.0, 2.0, 2.0)
    assert level1.translation == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "no NGFF multiscales"),
        ({"multiscales": [{"axes": [{"name": n, "type": "space", "unit": "furlong"}
                                    for n in "zyx"],
                           "datasets": [{"path": "0", "coordinateTransformations": [
                               {"type": "scale", "scale": [1, 1, 1]}]}]}]}, "furlong"),
        ({"multiscales": [{"axes": [{"name": n, "type": "space", "unit": "micrometer"}
                                    for n in "zyx"],
                           "datasets": [{"path": "0", "coordinateTransformations": [
                               {"type": "scale", "scale": [1, 0, 1]}]}]}]}, "positive"),
        ({"multiscales": [{"axes": [{"name": n, "type": "space", "unit": "micrometer"}
                                    for n in "yx"] + [{"name": "t", "type": "time"}],
                           "datasets": [{"path": "0", "coordinateTransformations": [
                               {"type": "scale", "scale": [1, 1, 1]}]}]}]}, "2 spatial axes"),
    ],
)
def test_bad_metadata_is_a_one_line_user_error(tmp_path, attrs, message):
    root = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=np.zeros((3, 4, 5), np.float32))
    root.attrs.update(attrs)
    with pytest.raises(UserError, match=message) as info:
        open_ome_zarr(tmp_path / "b.zarr")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (1, 0, 1)}, "positive"),
        ({"spacing": (1, 1)}, "3 values"),
        ({"units": "parsecs"}, "not a known spatial unit"),
        ({"version": "0.3"}, "not supported"),
    ],
)
def test_writer_rejects_bad_arguments(tmp_path, volume, kwargs, message):
    args = {"spacing": (1, 1, 1)}
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        write_ome_zarr(tmp_path / "x.ome.zarr", volume, **args)
    with pytest.raises(UserError, match="not 3-D"):
        write_ome_zarr(tmp_path / "y.ome.zarr", volume[0], spacing=(1, 1, 1))


def test_unit_conversion():
    assert spacing_to_um((1, 2, 3), "millimeter") == (1000.0, 2000.0, 3000.0)
    assert spacing_to_um((500, 500, 500), "nm") == pytest.approx((0.5, 0.5, 0.5))


def test_tiff_stack_with_imagej_metadata(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    data = (np.random.default_rng(2).random((6, 7, 8)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "um"})
    vol = open_volume(tmp_path / "s.tif")
    assert vol.spacing == pytest.approx((2.0, 0.25, 0.5))
    assert vol.units == "micrometer"
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array.compute(), data)


def test_tiff_without_voxel_size_needs_one(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgbish.tif", data, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(
        open_volume(tmp_path / "rgbish.tif", voxel_size_um=(1, 1, 1)).array.compute(), data
    )
    with pytest.raises(UserError, match="no voxel size"):
        open_volume(tmp_path / "plain.tif")
    vol = open_volume(tmp_path / "plain.tif", voxel_size_um=(3, 2, 1))
    assert vol.spacing == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(vol.array[1:3].compute(), data[1:3])
    with pytest.raises(UserError, match="positive"):
        open_volume(tmp_path / "plain.tif", voxel_size_um=(3, -2, 1))


def test_folder_of_tiff_slices(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    data = np.random.default_rng(3).random((5, 4, 3)).astype(np.float32)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(data):
        tifffile.imwrite(folder / f"z{i:04d}.tif", plane)
    vol = open_volume(folder, voxel_size_um=(1, 1, 1))
    np.testing.assert_array_equal(vol.array.compute(), data)


def test_two_dimensional_tiff_is_rejected(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((5, 6), np.float32))
    with pytest.raises(UserError, match="not 3-D"):
        open_volume(tmp_path / "flat.tif", voxel_size_um=(1, 1, 1))


def test_nifti_is_read_lazily_with_spacing_in_mm(tmp_path):
    import nibabel as nib

    data = np.random.default_rng(4).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.25, 2.0, 1.0])), tmp_path / "v.nii.gz")
    vol = open_volume(tmp_path / "v.nii.gz")
    assert vol.units == "millimeter"
    assert vol.spacing == pytest.approx((0.5, 0.25, 2.0))
    assert vol.spacing_um == pytest.approx((500.0, 250.0, 2000.0))
    np.testing.assert_array_equal(vol.array.compute(), data)
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), np.eye(4)),
             tmp_path / "four.nii.gz")
    with pytest.raises(UserError, match="not 3-D"):
        open_volume(tmp_path / "four.nii.gz")


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "v.raw").write_bytes(b"\0" * 8)
    with pytest.raises(UserError, match="unknown volume format"):
        open_volume(tmp_path / "v.raw")
    with pytest.raises(FileNotFoundError):
        open_volume(tmp_path / "absent.ome.zarr")


def _run_cli(argv, capsys):
    from validation.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    root = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=np.zeros((4, 4, 4), np.float32))
    write_ome_zarr(tmp_path / "ok.ome.zarr", np.zeros((8, 8, 8), np.float32),
                   spacing=(1, 1, 1))
    flat = zarr.open_group(str(tmp_path / "flat.ome.zarr"), mode="w", zarr_format=2)
    flat.create_array("0", data=np.zeros((4, 4), np.float32))
    flat.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "yx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1]}]}]}]
    bad_unit = zarr.open_group(str(tmp_path / "unit.ome.zarr"), mode="w", zarr_format=2)
    bad_unit.create_array("0", data=np.zeros((4, 4, 4), np.float32))
    bad_unit.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": n, "type": "space", "unit": "cubit"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1]}]}]}]
    cases = [
        ([str(tmp_path / "nometa.zarr")], "multiscales"),
        ([str(tmp_path / "flat.ome.zarr")], "spatial axes"),
        ([str(tmp_path / "unit.ome.zarr")], "cubit"),
        ([str(tmp_path / "ok.ome.zarr"), "--voxel-size-um", "1,0,1"], "positive"),
    ]
    for extra, message in cases:
        code, err = _run_cli(["orient", *extra, "-o", str(tmp_path / "o.ome.zarr"),
                              "--sigma-um", "1", "--rho-um", "2"], capsys)
        assert code == 2, (extra, err)
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.ome.zarr").exists()
