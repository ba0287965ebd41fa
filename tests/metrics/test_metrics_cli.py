"""`xscale compare` and `xscale score-tractogram` end to end on small files."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dipy.data import get_sphere
from dipy.reconst.shm import sh_to_sf_matrix

from validation.cli import main
from validation.io.maps import read_orientation_map
from validation.io.nifti import save_nifti, save_trk
from validation.io.tractograms import read_truth_bundles, split_endpoints

SPHERE = get_sphere(name="repulsion724")


def _sh_of_axis(axis, order=8):
    """SH of (u . axis)^order: a sharp lobe, exactly band-limited to ``order``."""
    basis = sh_to_sf_matrix(SPHERE, sh_order_max=order, basis_type="descoteaux07",
                            legacy=False, return_inv=False)
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    f = (SPHERE.vertices @ axis) ** order
    return f @ np.linalg.pinv(basis)


def _sidecar(order, basis="descoteaux07", legacy=False, frame="ijk"):
    return {"OrientationEncoding": {"Type": "sh", "SphericalHarmonicsBasis": basis,
                                    "Legacy": legacy, "SphericalHarmonicsDegree": order,
                                    "Reference": frame}}


def _sh_volume(shape=(3, 2, 2), order=8):
    rng = np.random.default_rng(0)
    data = np.zeros(shape + ((order + 1) * (order + 2) // 2,))
    for idx in np.ndindex(shape):
        data[idx] = _sh_of_axis(rng.normal(size=3), order)
    return data


def test_compare_sh_maps(tmp_path, capsys):
    sh = _sh_volume()
    save_nifti(tmp_path / "a.nii.gz", sh, np.eye(4), _sidecar(8))
    save_nifti(tmp_path / "b.nii.gz", sh, np.eye(4), _sidecar(8))
    out = tmp_path / "table.csv"
    assert main(["compare", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"),
                 "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 12
    np.testing.assert_allclose(table["acc"], 1.0, atol=1e-6)
    np.testing.assert_allclose(table["jsd"], 0.0, atol=1e-6)
    np.testing.assert_allclose(table["dispersion_error"], 0.0, atol=1e-6)
    np.testing.assert_allclose(table["peak_f1"], 1.0)
    assert "acc" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp*"))


def test_compare_world_frame_tournier_equals_voxel_descoteaux(tmp_path):
    # the same FOD stored as MRtrix would (tournier07 legacy, world frame) on a rotated grid
    from dipy.reconst.shm import convert_sh_descoteaux_tournier, convert_sh_to_legacy

    angle = np.radians(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot * 2.0  # 2 mm voxels, rotated
    axis_ijk = np.array([1.0, 0.2, 0.1])
    sh_ijk = _sh_of_axis(axis_ijk)[None, None, None]
    sh_world = _sh_of_axis(rot @ axis_ijk)
    tournier = convert_sh_descoteaux_tournier(convert_sh_to_legacy(sh_world, "descoteaux07"))
    save_nifti(tmp_path / "mrtrix.nii.gz", tournier[None, None, None], affine,
               _sidecar(8, basis="tournier07", legacy=False, frame="xyz"))
    m = read_orientation_map(tmp_path / "mrtrix.nii.gz")
    np.testing.assert_allclose(m.data, sh_ijk, atol=1e-6 * np.abs(sh_ijk).max())


def test_compare_peaks_and_bad_inputs(tmp_path, capsys):
    ref = np.zeros((2, 2, 1, 2, 3))
    ref[..., 0, :] = [1, 0, 0]
    est = ref.copy()
    est[0, 0, 0, 1] = [0, 1, 0]  # one false positive
    save_nifti(tmp_path / "ref.nii.gz", ref, np.eye(4))
    save_nifti(tmp_path / "est.nii.gz", est.reshape(2, 2, 1, 6), np.eye(4),
               {"OrientationEncoding": {"Type": "peaks", "Reference": "ijk"}})
    out = tmp_path / "t.tsv"
    assert main(["compare", str(tmp_path / "ref.nii.gz"), str(tmp_path / "est.nii.gz"),
                 "-o", str(out)]) == 0
    table = pd.read_csv(out, sep="\t")
    assert table["peak_precision"].tolist() == [0.5, 1.0, 1.0, 1.0]
    assert table["nufo_correct"].tolist() == [0.0, 1.0, 1.0, 1.0]
    # different SH orders, grids and NaN peaks: exit 2 with one line
    save_nifti(tmp_path / "sh8.nii.gz", _sh_volume((2, 2, 1)), np.eye(4), _sidecar(8))
    save_nifti(tmp_path / "sh4.nii.gz", _sh_volume((2, 2, 1), order=4), np.eye(4), _sidecar(4))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sh8.nii.gz"), str(tmp_path / "sh4.nii.gz")]) == 2
    assert "SH order 8" in capsys.readouterr().err
    save_nifti(tmp_path / "big.nii.gz", np.zeros((3, 2, 1, 2, 3)), np.eye(4))
    assert main(["compare", str(tmp_path / "ref.nii.gz"), str(tmp_path / "big.nii.gz")]) == 2
    nan = ref.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    save_nifti(tmp_path / "nan.nii.gz", nan, np.eye(4))
    assert main(["compare", str(tmp_path / "ref.nii.gz"), str(tmp_path / "nan.nii.gz")]) == 2
    assert "NaN" in capsys.readouterr().err


SHAPE = (8, 4, 1)


def _truth_folder(tmp_path, config_extra=None):
    truth = tmp_path / "truth"
    (truth / "bundles").mkdir(parents=True)
    head = np.zeros(SHAPE, np.uint8)
    head[0, 0, 0] = 1
    tail = np.zeros(SHAPE, np.uint8)
    tail[7, 0, 0] = 1
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 0, 0] = 1
    for name, vol in (("A_head", head), ("A_tail", tail), ("A_mask", mask)):
        save_nifti(truth / "bundles" / f"{name}.nii.gz", vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    config = {"A": {"head": "bundles/A_head.nii.gz", "tail": "bundles/A_tail.nii.gz",
                    "gt_mask": "bundles/A_mask.nii.gz", "length": [0, 100], "angle": 300,
                    **(config_extra or {})}}
    (truth / "bundles.json").write_text(json.dumps(config))
    return truth


def test_score_tractogram_trk_and_tck(tmp_path, capsys):
    truth = _truth_folder(tmp_path)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    lines = [np.array([[0, 0, 0], [3, 1.2, 0], [7, 0, 0.0]]), np.array([[0, 0, 0], [7, 0, 0.0]]),
             np.array([[3, 3, 0], [4, 3, 0.0]])]
    save_trk(tmp_path / "t.trk", lines, affine, SHAPE)
    out = tmp_path / "scores.json"
    assert main(["score-tractogram", str(tmp_path / "t.trk"), "--truth", str(tmp_path),
                 "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["scores"]["vs_count"] == 2 and res["scores"]["nc_count"] == 1
    # |A| = 8, B = row 0 + 5 voxels of row 1 (see the metrics test of this tractogram)
    assert res["bundles"][0]["or_vs"] == pytest.approx(5 / 13)
    assert res["scilpy"]["VS"] == 2 and res["scilpy"]["bundle_wise"]["A"]["OL"] == 1.0
    # the same streamlines as TCK (world coordinates, no grid in the header)
    world = [ln @ affine[:3, :3].T + affine[:3, 3] for ln in lines]
    tck = nib.streamlines.TckFile(nib.streamlines.Tractogram(world, affine_to_rasmm=np.eye(4)))
    tck.save(str(tmp_path / "t.tck"))
    csv = tmp_path / "scores.csv"
    assert main(["score-tractogram", str(tmp_path / "t.tck"), "--truth",
                 str(truth / "bundles.json"), "-o", str(csv)]) == 0
    rows = pd.read_csv(csv)
    value = rows[(rows.bundle == "all") & (rows.metric == "vs")].value.iloc[0]
    assert float(value) == pytest.approx(2 / 3)


def test_truth_config_errors_and_endpoints(tmp_path, capsys):
    truth = _truth_folder(tmp_path, {"colour": "red"})
    save_trk(tmp_path / "t.trk", [np.zeros((2, 3))], np.eye(4), SHAPE)
    assert main(["score-tractogram", str(tmp_path / "t.trk"), "--truth", str(truth)]) == 2
    assert "unknown key(s) colour" in capsys.readouterr().err
    ends = np.zeros((10, 3, 1), bool)
    ends[0:2, 1, 0] = True
    ends[8:10, 1, 0] = True
    head, tail = split_endpoints(ends)
    assert head.sum() == 2 and tail.sum() == 2 and head[0, 1, 0] and tail[9, 1, 0]
    with pytest.raises(FileNotFoundError):
        read_truth_bundles(tmp_path / "nowhere")


def test_fod_peak_sidecar_is_read_as_peaks(tmp_path):
    # 5 peaks in MRtrix layout = 15 volumes, also an SH size: the sidecar decides
    peaks = np.zeros((2, 1, 1, 5, 3))
    peaks[..., 0, :] = [0, 0, 1]
    save_nifti(tmp_path / "p.nii.gz", peaks.reshape(2, 1, 1, 15), np.eye(4),
               {"frame": "ijk", "Reference": "ijk", "unit_vectors": True, "n_peaks": 5})
    m = read_orientation_map(tmp_path / "p.nii.gz")
    assert m.kind == "peaks" and m.data.shape == (2, 1, 1, 5, 3)
    save_nifti(tmp_path / "q.nii.gz", peaks.reshape(2, 1, 1, 15), np.eye(4))
    assert read_orientation_map(tmp_path / "q.nii.gz").kind == "sh"  # no sidecar: SH
    assert read_orientation_map(tmp_path / "q.nii.gz", kind="peaks").kind == "peaks"
