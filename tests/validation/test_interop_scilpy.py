"""``xscale score-tractogram`` on a scilpy-style config with known counts, scilpy's JSON
keys, and the clear errors for tractograms that cannot be scored (exit 2)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from validation.cli import main
from validation.errors import UserError
from validation.io.nifti import save_nifti, save_trk

SHAPE = (8, 4, 1)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels


def _vol(*voxels):
    v = np.zeros(SHAPE, np.uint8)
    for x, y in voxels:
        v[x, y, 0] = 1
    return v


def _sl(*xy):
    return np.array([[x, y, 0.0] for x, y in xy])


# straight bundles A (row y = 0) and B (row y = 3); ROIs at x = 0 and x = 7
TRACTOGRAM = [
    _sl((0, 0), (7, 0)),  # VS A
    _sl((7, 0), (0, 0)),  # VS A, reversed
    _sl((0, 0), (3, 1.2), (7, 0)),  # VS A, passes through 5 voxels of row 1
    _sl((0, 3), (7, 3)),  # joins B's ROIs but 14 mm long (B's limit: 10 mm): WPC
    _sl((0, 0), (7, 3)),  # A head -> B tail: IC
    _sl((0, 3), (0, 0)),  # B head -> A head: IC
    _sl((3, 2), (4, 2)),  # no ROI: NC
    _sl((0, 0), (0, 0.2)),  # both ends in one ROI: NC
]


def _write_truth(folder, *, endpoints=False):
    gt = folder / "gt"
    gt.mkdir()
    files = {
        "A_head": _vol((0, 0)), "A_tail": _vol((7, 0)),
        "A_ends": _vol((0, 0), (7, 0)),
        "A_mask": _vol(*[(x, 0) for x in range(8)]),
        "B_head": _vol((0, 3)), "B_tail": _vol((7, 3)),
        "B_mask": _vol(*[(x, 3) for x in range(8)]),
    }
    for name, vol in files.items():
        save_nifti(gt / f"{name}.nii.gz", vol, AFFINE)
    a = ({"endpoints": "A_ends.nii.gz"} if endpoints
         else {"head": "A_head.nii.gz", "tail": "A_tail.nii.gz"})
    config = {
        "A": {**a, "gt_mask": "A_mask.nii.gz", "angle": 300},
        "B": {"head": "B_head.nii.gz", "tail": "B_tail.nii.gz", "gt_mask": "B_mask.nii.gz",
              "length": [0, 10]},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json", gt


@pytest.mark.parametrize("endpoints", [False, True])
def test_known_counts_with_scilpy_keys(tmp_path, endpoints):
    config, gt = _write_truth(tmp_path, endpoints=endpoints)
    save_trk(tmp_path / "t.trk", TRACTOGRAM, AFFINE, SHAPE)
    out = tmp_path / "scores.json"
    assert main(["score-tractogram", str(tmp_path / "t.trk"), "--truth", str(config),
                 "--gt-dir", str(gt), "-o", str(out)]) == 0
    s = json.loads(out.read_text())["scilpy"]
    assert s["total_streamlines"] == 8
    assert (s["VS"], s["WPC"], s["IC"], s["NC"], s["IS"]) == (3, 1, 2, 2, 4)
    assert (s["VB"], s["IB"]) == (1, 2)
    assert s["VS_ratio"] == pytest.approx(3 / 8) and s["IC_ratio"] == pytest.approx(2 / 8)
    assert s["NC_ratio"] == pytest.approx(2 / 8) and s["IS_ratio"] == pytest.approx(4 / 8)
    # A: |A| = 8; B = row 0 (8) + row 1 at x = 1..5 (5): |B| = 13, |A & B| = 8
    a = s["bundle_wise"]["A"]
    assert (a["VS"], a["TP"], a["FP"], a["FN"]) == (3, 8, 5, 0)
    assert a["OL"] == 1.0
    assert a["OR_pct_gt"] == pytest.approx(5 / 8)
    assert a["OR_pct_vs"] == pytest.approx(5 / 13)
    assert a["f1"] == pytest.approx(16 / 21)
    b = s["bundle_wise"]["B"]  # no valid streamline: OL = OR = F1 = 0 (OR_vs = 0 by rule)
    assert (b["VS"], b["OL"], b["OR_pct_gt"], b["OR_pct_vs"], b["f1"]) == (0, 0, 0, 0, 0)
    assert s["mean_OL"] == pytest.approx(0.5)
    assert s["mean_OR_gt"] == pytest.approx(5 / 16)
    assert s["mean_OR_vs"] == pytest.approx(5 / 26)
    assert s["mean_f1"] == pytest.approx(8 / 21)


def test_dilated_endpoints(tmp_path):
    config, gt = _write_truth(tmp_path)
    save_trk(tmp_path / "t.trk", [_sl((1, 0), (6, 0))], AFFINE, SHAPE)
    out = tmp_path / "s.json"
    args = ["score-tractogram", str(tmp_path / "t.trk"), "--truth", str(config), "--gt-dir",
            str(gt), "-o", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["scilpy"]["VS"] == 0
    assert main(args + ["--dilate-endpoints", "1"]) == 0
    assert json.loads(out.read_text())["scilpy"]["VS"] == 1


def test_tck_and_trx_give_the_same_scores(tmp_path):
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram

    config, gt = _write_truth(tmp_path)
    world = [ln @ AFFINE[:3, :3].T + AFFINE[:3, 3] for ln in TRACTOGRAM]
    ref = nib.load(str(gt / "A_mask.nii.gz"))
    sft = StatefulTractogram(world, ref, Space.RASMM)
    results = []
    for ext in ("tck", "trx"):
        save_tractogram(sft, str(tmp_path / f"t.{ext}"), bbox_valid_check=False)
        out = tmp_path / f"{ext}.json"
        assert main(["score-tractogram", str(tmp_path / f"t.{ext}"), "--truth", str(config),
                     "--gt-dir", str(gt), "-o", str(out)]) == 0
        results.append(json.loads(out.read_text())["scilpy"])
    assert results[0] == results[1]
    assert (results[0]["VS"], results[0]["IC"], results[0]["NC"]) == (3, 2, 2)


def test_empty_tractogram_is_an_error(tmp_path, capsys):
    config, gt = _write_truth(tmp_path)
    save_trk(tmp_path / "empty.trk", [], AFFINE, SHAPE)
    assert main(["score-tractogram", str(tmp_path / "empty.trk"), "--truth", str(config),
                 "--gt-dir", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "empty.trk" in err and "no streamlines" in err


def test_streamlines_outside_the_field_of_view(tmp_path, capsys):
    config, gt = _write_truth(tmp_path)
    lines = TRACTOGRAM[:3] + [_sl((0, 0), (12, 0)), _sl((-3, 0), (2, 0))]
    save_trk(tmp_path / "t.trk", lines, AFFINE, SHAPE)
    args = ["score-tractogram", str(tmp_path / "t.trk"), "--truth", str(config), "--gt-dir",
            str(gt)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 of 5 streamlines" in err and "--remove-invalid" in err
    out = tmp_path / "s.json"
    assert main(args + ["--remove-invalid", "-o", str(out)]) == 0
    assert "removed 2 of 5 streamlines" in capsys.readouterr().err
    s = json.loads(out.read_text())["scilpy"]
    assert (s["total_streamlines"], s["VS"]) == (3, 3)


def test_tck_without_reference(tmp_path):
    from validation.io.tractograms import load_streamlines

    world = [ln @ AFFINE[:3, :3].T for ln in TRACTOGRAM]
    tck = nib.streamlines.TckFile(nib.streamlines.Tractogram(world, affine_to_rasmm=np.eye(4)))
    tck.save(str(tmp_path / "t.tck"))
    with pytest.raises(UserError, match="t.tck: a TCK file has no image grid"):
        load_streamlines(tmp_path / "t.tck", None)


def test_unreadable_tractogram(tmp_path, capsys):
    config, gt = _write_truth(tmp_path)
    (tmp_path / "bad.trk").write_bytes(b"not a trk")
    assert main(["score-tractogram", str(tmp_path / "bad.trk"), "--truth", str(config),
                 "--gt-dir", str(gt)]) == 2
    assert "not a readable tractogram" in capsys.readouterr().err
