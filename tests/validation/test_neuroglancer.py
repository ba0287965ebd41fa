"""Neuroglancer state import: the shared Hb1 state, a local OME-Zarr state, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from validation.cli import main
from validation.errors import UserError
from validation.io.omezarr import write_ome_zarr
from validation.manifest import load_dataset, read_manifest
from validation.neuroglancer import (
    import_neuroglancer_state,
    parse_source_url,
    voxel_size_from_name,
)

HB1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "neuroglancer_state_Hb1.json"
if not HB1.exists():
    HB1 = Path("/work/shared/data/neuroglancer_state_Hb1.json")
needs_hb1 = pytest.mark.skipif(not HB1.exists(), reason="shared/data Hb1 state absent")
VOI1 = "Hb1_brain_left_hemisphere_VOI-1_4.257um_bm18"
UCT = [
    "sub-Hb1_sample-blockIC1overview_desc-preproc_uCT",
    "sub-Hb1_sample-blockIC1trim2_desc-preproc_uCT",
    "sub-Hb1_sample-blockIC1trim9_acq-80kV_desc-preproc_uCT",
    "sub-Hb1_sample-blockIC5overview_desc-preproc_uCT.ome.zarr",
]


def test_source_urls() -> None:
    assert parse_source_url("gs://b/x.ome.zarr/|zarr3:") == ("gs://b/x.ome.zarr", "zarr3")
    assert parse_source_url("zarr://https://h/x.zarr") == ("https://h/x.zarr", "zarr")
    assert parse_source_url("precomputed://gs://b/x") == ("precomputed://gs://b/x", None)
    assert parse_source_url("/data/x.ome.zarr") == ("/data/x.ome.zarr", "zarr")


def test_voxel_size_from_name() -> None:
    assert voxel_size_from_name("a_0.857um_b") == 0.857
    assert voxel_size_from_name("a_500nm") == 0.5
    assert voxel_size_from_name("acq-80kV_uCT") is None
    assert voxel_size_from_name("a_2um_3um") is None  # ambiguous


@needs_hb1
def test_hb1_state_imports_nine_levels() -> None:
    result = import_neuroglancer_state(HB1)
    assert len(result.levels) == 9
    assert result.skipped == []
    assert result.missing_voxel_size == UCT
    sizes = {lvl.name: lvl.voxel_size_um for lvl in result.levels if lvl.voxel_size_um}
    assert sorted(s[0] for s in sizes.values()) == [0.857, 2.201, 4.257, 10.072, 20.07]
    assert all(lvl.voxel_size_from in (None, "layer name") for lvl in result.levels)
    assert [lvl.driver for lvl in result.levels].count("zarr2") == 2
    # the overview has no transform: it sits in the global space as it is
    overview = result.levels[0]
    assert overview.matrix is None
    np.testing.assert_array_equal(overview.transform.as_affine(), np.eye(4))
    np.testing.assert_allclose(result.global_unit_mm(), [0.010072] * 3)


@needs_hb1
def test_hb1_voi1_point_maps_to_hand_computed_global_position() -> None:
    result = import_neuroglancer_state(HB1)
    voi = next(lvl for lvl in result.levels if lvl.name == VOI1)
    # voxel (100, 200, 300) of VOI-1 (axes x, y, z), 4.257 um voxels: physical (mm)
    p = [100 * 0.004257, 200 * 0.004257, 300 * 0.004257]
    g = 0.010072  # global unit, mm
    # Neuroglancer: global = M[:, :3] @ physical / g + M[:, 3] (translation in global units)
    by_hand = [
        (0.999445745 * p[0] + 0.031534287 * p[1] - 0.011279779 * p[2]) / g + 3817.405521157,
        (-0.031774949 * p[0] + 0.999263261 * p[1] - 0.021834133 * p[2]) / g + 4528.589463744,
        (0.010582873 * p[0] + 0.022180297 * p[1] + 0.999704696 * p[2]) / g + 5999.076104469,
    ]
    mapped = voi.voxel_to_global() @ [100, 200, 300, 1]
    np.testing.assert_allclose(mapped[:3] / g, by_hand, rtol=0, atol=1e-6)
    # reading the 3x3 as acting on voxel indices (the wrong reading) would put it far away
    wrong = voi.matrix[:, :3] @ [100, 200, 300] + voi.matrix[:, 3]
    assert np.linalg.norm(mapped[:3] / g - wrong) > 100


@needs_hb1
def test_hb1_voi1_voxels_come_out_4257_um() -> None:
    result = import_neuroglancer_state(HB1)
    voi = next(lvl for lvl in result.levels if lvl.name == VOI1)
    columns_um = np.linalg.norm(voi.voxel_to_global()[:3, :3], axis=0) * 1e3
    np.testing.assert_allclose(columns_um, 4.257, rtol=1e-4)
    # not the 10.072 um of the global unit
    assert np.all(np.abs(columns_um - 10.072) > 5)
    # every transformed level keeps its own voxel size within the 3x3's column norms
    for lvl in result.levels:
        if lvl.matrix is not None and lvl.voxel_size_um is not None:
            norms = np.linalg.norm(lvl.voxel_to_global()[:3, :3], axis=0) * 1e3
            assert np.all(np.abs(norms / lvl.voxel_size_um[0] - 1) < 0.03)


@needs_hb1
def test_hb1_user_voxel_sizes_fill_the_gaps() -> None:
    result = import_neuroglancer_state(HB1, voxel_sizes={UCT[0]: 5.0, UCT[1]: [1, 2, 3]})
    assert result.missing_voxel_size == UCT[2:]
    lvl = next(lvl for lvl in result.levels if lvl.name == UCT[1])
    assert lvl.voxel_size_um == (1.0, 2.0, 3.0) and lvl.voxel_size_from == "user"
    with pytest.raises(UserError, match="unknown layers: nope"):
        import_neuroglancer_state(HB1, voxel_sizes={"nope": 1.0})
    with pytest.raises(UserError, match="4 level\\(s\\) have no voxel size"):
        import_neuroglancer_state(HB1).to_manifest()
    manifest = import_neuroglancer_state(HB1).to_manifest(skip_missing=True)
    assert len(manifest["microscopy"]) == 5
    assert manifest["microscopy"][1]["path"].startswith("gs://")


def _local_state(tmp_path: Path) -> Path:
    vol = np.zeros((10, 12, 14), dtype=np.uint16)  # (z, y, x)
    write_ome_zarr(tmp_path / "micro.ome.zarr", vol, spacing=(2.0, 3.0, 4.0), units="micrometer")
    state = {
        "title": "local",
        "dimensions": {"x": [1e-5, "m"], "y": [1e-5, "m"], "z": [1e-5, "m"]},
        "layers": [
            {"type": "image", "name": "micro", "source": {
                "url": "micro.ome.zarr/|zarr2:",
                "transform": {
                    "matrix": [[0, 0, 1, 100], [0, 1, 0, 0], [1, 0, 0, 0]],
                    "outputDimensions": {"x": [1e-5, "m"], "y": [1e-5, "m"],
                                         "z": [1e-5, "m"]},
                }}},
            {"type": "annotation", "name": "notes"},
        ],
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    return tmp_path / "state.json"


def test_local_ome_zarr_gives_voxel_size_and_axis_order(tmp_path: Path) -> None:
    result = import_neuroglancer_state(_local_state(tmp_path))
    (lvl,) = result.levels
    assert lvl.voxel_size_um == (2.0, 3.0, 4.0) and lvl.voxel_size_from == "ome-zarr"
    assert lvl.input_dimensions == ["z", "y", "x"]
    assert result.skipped == ["notes: layer type 'annotation' is not image"]
    # columns follow the source axes (z, y, x): matrix column 0 (z) -> output z, so the
    # permutation matrix is an identity on named axes; x shifts by 100 * 10 um = 1 mm
    np.testing.assert_allclose(lvl.transform.apply_points([1.0, 2.0, 3.0]), [2.0, 2.0, 3.0])


def test_cli_imports_local_state_and_dataset_loads(tmp_path: Path) -> None:
    state = _local_state(tmp_path)
    data = np.ones((4, 4, 4, 2), dtype=np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    (tmp_path / "dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    (tmp_path / "global_to_dmri.txt").write_text(
        "1 0 0 -1\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    out = tmp_path / "out" / "manifest.toml"
    code = main(["import-neuroglancer", str(state), "-o", str(out), "--dwi",
                 str(tmp_path / "dwi.nii.gz"), "--to-dmri", str(tmp_path / "global_to_dmri.txt")])
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["microscopy"][0]["path"] == "../micro.ome.zarr"
    assert "voxel_size_um" not in manifest["microscopy"][0]
    ds = load_dataset(out)
    level = ds.level("micro")
    # voxel (z, y, x) = (1, 2, 3) -> physical (x, y, z) = (12, 6, 2) um -> global + 1 mm in x
    # -> dMRI: -1 mm in x
    np.testing.assert_allclose(level.voxels_to_dmri([1, 2, 3]), [0.012, 0.006, 0.002], atol=1e-12)


@needs_hb1
def test_cli_missing_voxel_sizes_exit_2_and_write_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifest.toml"
    code = main(["import-neuroglancer", str(HB1), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "4 level(s) have no voxel size" in err and UCT[3] in err
    assert list(tmp_path.iterdir()) == []
    sizes = [f"--voxel-size={name}=5" for name in UCT[:3]]
    code = main(["import-neuroglancer", str(HB1), "-o", str(out), "-q", *sizes, "--skip-missing"])
    assert code == 0
    assert len(read_manifest(out)["microscopy"]) == 8


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{not json", "not a JSON file"), ("[]", "must be a JSON object"),
     ('{"layers": []}', "no global 'dimensions'")],
)
def test_cli_bad_state_exit_2(tmp_path: Path, capsys, content: str, needle: str) -> None:
    (tmp_path / "s.json").write_text(content)
    out = tmp_path / "m.toml"
    assert main(["import-neuroglancer", str(tmp_path / "s.json"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "s.json" in err
    assert not out.exists()


def test_cli_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    state = _local_state(tmp_path)
    out = tmp_path / "m.toml"
    out.write_text("keep")
    assert main(["import-neuroglancer", str(state), "-o", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert out.read_text() == "keep"
    assert main(["import-neuroglancer", str(state), "-o", str(out), "--overwrite", "-q"]) == 0
    assert "micro" in out.read_text()
