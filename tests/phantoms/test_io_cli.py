import json
import tomllib

import numpy as np
import pytest
from phantom_helpers import small_spec

from phantoms import CaseSpec, build_phantom
from validation.cases import derive_seed
from validation.errors import UserError
from validation.io.nifti import (
    load_gradients,
    load_nifti,
    load_trk,
    save_gradients,
    save_nifti,
    save_trk,
)

OBLIQUE = np.array([
    [0.0, -1.2, 0.1, 10.0],
    [1.2, 0.0, 0.0, -5.0],
    [0.0, 0.05, 1.5, 2.0],
    [0.0, 0.0, 0.0, 1.0],
])


@pytest.mark.parametrize("affine", [np.diag([0.15, 0.15, 0.15, 1.0]), OBLIQUE,
                                    np.diag([-2.0, 2.0, 2.0, 1.0])])
def test_nifti_write_then_read_keeps_data_affine_and_sidecar(tmp_path, affine):
    data = np.arange(4 * 5 * 6 * 2, dtype=np.float32).reshape(4, 5, 6, 2)
    p = save_nifti(tmp_path / "x.nii.gz", data, affine, {"frame": "ijk", "n": 2})
    img = load_nifti(p)
    np.testing.assert_array_equal(img.data, data)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_allclose(img.voxel_size, np.sqrt((affine[:3, :3] ** 2).sum(0)), atol=1e-6)
    assert img.sidecar == {"frame": "ijk", "n": 2}
    assert json.loads((tmp_path / "x.json").read_text())["n"] == 2
    assert not any(q.name.startswith(".") for q in tmp_path.iterdir())  # no temp left


def test_save_nifti_rejects_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="must end in .nii"):
        save_nifti(tmp_path / "x.img", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(UserError, match="singular"):
        save_nifti(tmp_path / "x.nii", np.zeros((2, 2, 2)), np.zeros((4, 4)))


@pytest.mark.parametrize("det_sign", [1, -1])
def test_gradients_fsl_flip_and_roundtrip(tmp_path, det_sign):
    affine = np.diag([det_sign * 2.0, 2.0, 2.0, 1.0])
    bvals = np.array([0.0, 1000.0, 1000.0])
    bvecs = np.array([[0.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    bval_path, bvec_path = save_gradients(tmp_path / "dwi.nii.gz", bvals, bvecs, affine)
    assert bval_path.name == "dwi.bval" and bvec_path.name == "dwi.bvec"
    on_disk = np.loadtxt(bvec_path)
    assert on_disk.shape == (3, 3)
    assert on_disk[0, 1] == pytest.approx(-0.6 if det_sign > 0 else 0.6)  # FSL flip
    b, v = load_gradients(bval_path, bvec_path, affine)
    np.testing.assert_array_equal(b, bvals)
    np.testing.assert_allclose(v, bvecs, atol=1e-8)


def test_gradients_match_the_pipeline_reader(tmp_path):
    from validation.io.gradients import read_bvals_bvecs

    affine = OBLIQUE
    bvals = np.array([0.0, 3000.0])
    bvecs = np.array([[0.0, 0.0, 0.0], [0.48, 0.64, 0.6]])
    save_gradients(tmp_path / "dwi", bvals, bvecs, affine)
    g = read_bvals_bvecs(tmp_path / "dwi.bval", tmp_path / "dwi.bvec", affine=affine)
    np.testing.assert_allclose(g.bvecs, bvecs, atol=1e-8)


def test_trk_write_then_read_keeps_voxel_coordinates(tmp_path):
    lines = [np.array([[0.0, 0.0, 0.0], [1.5, 2.0, 3.25]]), np.array([[4.0, 4.0, 1.0]] * 3)]
    p = save_trk(tmp_path / "b.trk", lines, OBLIQUE, (6, 7, 8))
    back, affine, shape = load_trk(p)
    assert shape == (6, 7, 8)
    np.testing.assert_allclose(affine, OBLIQUE, atol=1e-5)
    for a, b in zip(lines, back, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4)


def test_ome_zarr_write_then_read_keeps_spacing(tmp_path, make_spec):
    from validation.io.omezarr import open_ome_zarr, write_ome_zarr

    mic = build_phantom(make_spec()).render_microscopy(voxel_size_um=(10.0, 12.0, 15.0))
    write_ome_zarr(tmp_path / "m.ome.zarr", mic.volume, spacing=mic.spacing_um,
                   units="micrometer")
    vol = open_ome_zarr(tmp_path / "m.ome.zarr")
    np.testing.assert_allclose(vol.spacing, [10.0, 12.0, 15.0])
    assert vol.units == "micrometer"
    np.testing.assert_array_equal(np.asarray(vol.array), mic.volume.compute())


def _write_config(path, specs):
    import tomli_w

    path.write_text(tomli_w.dumps({"suite": {"name": "mini"},
                                   "cases": [s.to_dict() for s in specs]}))


def test_cli_phantom_writes_loadable_datasets(tmp_path):
    from validation.cli import main
    from validation.manifest import load_dataset

    specs = [small_spec("one"), small_spec("two", geometry="crossing", snr=30.0)]
    cfg = tmp_path / "mini.toml"
    _write_config(cfg, specs)
    out = tmp_path / "out"
    assert main(["phantom", str(cfg), "-o", str(out), "-q"]) == 0
    suite = tomllib.loads((out / "suite.toml").read_text())
    assert [CaseSpec.from_dict(c) for c in suite["cases"]] == specs
    ds = load_dataset(out / "two" / "manifest.toml")
    # the CLI derives per-case seeds as `xscale run` does (--seed, default 0)
    ph = build_phantom(specs[1], rng=derive_seed(0, "two", "phantom"))
    t = ph.truth()
    np.testing.assert_allclose(ds.affine, ph.grid.affine, atol=1e-6)
    peaks = load_nifti(out / "two" / "truth_peaks.nii.gz").data
    np.testing.assert_allclose(peaks.reshape(t.peaks.shape), t.peaks, atol=1e-6)
    np.testing.assert_allclose(ds.gradients.bvecs, ph.simulate_dmri().bvecs, atol=1e-6)
    bundles = json.loads((out / "two" / "truth" / "bundles.json").read_text())
    assert set(bundles) == {"bundle-1", "bundle-2"}
    for cfg_b in bundles.values():
        for key in ("head", "tail", "gt_mask"):
            assert (out / "two" / "truth" / cfg_b[key]).exists()
    # the microscopy-to-dMRI chain maps microscopy voxels where the phantom says
    level = ds.microscopy[0]
    idx = np.array([[0.0, 0.0, 0.0], [59.0, 10.0, 3.0]])
    mic = ph.render_microscopy()
    expected = idx @ mic.affine[:3, :3].T + mic.affine[:3, 3]
    # the written noisy dMRI is the in-memory one with the derived noise seed
    dwi = load_nifti(out / "two" / "dwi.nii.gz").data
    np.testing.assert_allclose(
        dwi, ph.simulate_dmri(rng=derive_seed(0, "two", "dmri")).data.astype(np.float32))
    np.testing.assert_allclose(level.voxels_to_dmri(idx), expected, atol=1e-6)
    # existing output is refused without --overwrite (exit 2)
    assert main(["phantom", str(cfg), "-o", str(out), "-q"]) == 2


def test_cli_phantom_unknown_suite_is_user_error(tmp_path):
    from validation.cli import main

    assert main(["phantom", "no-such-suite", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert not (tmp_path / "x").exists()


def test_cli_phantom_uint16_microscopy_is_the_documented_linear_map(tmp_path):
    from validation.cli import main
    from validation.cli.phantom import UINT16_OFFSET, UINT16_RANGE
    from validation.io.omezarr import open_ome_zarr

    spec = small_spec("u", snr=None)
    cfg = tmp_path / "u.toml"
    _write_config(cfg, [spec])
    out = tmp_path / "out"
    assert main(["phantom", str(cfg), "-o", str(out), "-q", "--microscopy-dtype", "uint16",
                 "--microscopy-voxel-um", "20"]) == 0
    vol = open_ome_zarr(out / "u" / "microscopy.ome.zarr")
    stored = np.asarray(vol.array)
    assert stored.dtype == np.uint16 and stored.shape == (30, 30, 30)
    ref = build_phantom(spec, rng=derive_seed(0, "u", "phantom")).render_microscopy(
        voxel_size_um=20.0, rng=derive_seed(0, "u", "microscopy")).volume.compute()
    expected = np.round(np.clip((ref - UINT16_OFFSET) / UINT16_RANGE, 0, 1) * 65535)
    np.testing.assert_array_equal(stored, expected.astype(np.uint16))
    mapping = vol.attrs["xscale"]["uint16_to_intensity"]
    back = stored * mapping["scale"] + mapping["offset"]
    assert np.max(np.abs(back - ref)) <= UINT16_RANGE / 65535
