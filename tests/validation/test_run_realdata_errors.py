"""Bad real-data inputs reach `xscale run` as exit 2, one line, and nothing written.

Each case breaks one file of the real-data example (dipy small_64D + a synthetic
microscopy level) and runs ``xscale run`` on it: the dataset is loaded and checked before
the run directory is created, so neither the run nor a ``.failed`` folder appears.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from validation.cli import main


def _lines(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _fewer_bvals(d: Path) -> None:
    vals = (d / "small_64D.bval").read_text().split()
    (d / "small_64D.bval").write_text(" ".join(vals[:-1]) + "\n")


def _nan_bvec(d: Path) -> None:
    def edit(rows: list[str]) -> list[str]:
        # small_64D's .bvec is N rows of 3: volume 5 (b ~ 1000) gets a NaN x component
        row = rows[5].split()
        row[0] = "nan"
        return [*rows[:5], " ".join(row), *rows[6:]]

    _lines(d / "small_64D.bvec", edit)


def _bvec_row(d: Path, row_index: int, values: list[float]) -> None:
    def edit(rows: list[str]) -> list[str]:
        return [*rows[:row_index], " ".join(map(str, values)), *rows[row_index + 1:]]

    _lines(d / "small_64D.bvec", edit)


def _zero_bvec(d: Path) -> None:
    _bvec_row(d, 7, [0.0, 0.0, 0.0])


def _non_unit_bvec(d: Path) -> None:
    _bvec_row(d, 9, [0.0, 0.0, 1.1])


def _nan_dwi(d: Path) -> None:
    import nibabel as nib

    img = nib.load(str(d / "small_64D.nii"))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[1, 2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(d / "small_64D.nii"))


def _mask_of_another_shape(d: Path) -> None:
    import nibabel as nib

    img = nib.load(str(d / "small_64D.nii"))
    nib.save(nib.Nifti1Image(np.ones((9, 10, 10), np.uint8), img.affine), str(d / "mask.nii"))
    _lines(d / "manifest.toml", lambda rows: [
        r if r != 'dwi = "small_64D.nii"' else 'dwi = "small_64D.nii"\nmask = "mask.nii"'
        for r in rows])


def _mask_of_another_affine(d: Path) -> None:
    import nibabel as nib

    img = nib.load(str(d / "small_64D.nii"))
    shifted = img.affine.copy()
    shifted[0, 3] += 1.0
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), shifted), str(d / "mask.nii"))
    _lines(d / "manifest.toml", lambda rows: [
        r if r != 'dwi = "small_64D.nii"' else 'dwi = "small_64D.nii"\nmask = "mask.nii"'
        for r in rows])


def _non_finite_transform(d: Path) -> None:
    (d / "microscopy_to_dmri.txt").write_text("1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")


def _singular_transform(d: Path) -> None:
    (d / "microscopy_to_dmri.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 0 0\n0 0 0 1\n")


def _far_away(d: Path) -> None:
    (d / "microscopy_to_dmri.txt").write_text("1 0 0 500\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")


def _no_units(d: Path) -> None:
    attrs_path = d / "microscopy.ome.zarr" / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    for axis in attrs["multiscales"][0]["axes"]:
        axis.pop("unit", None)
    attrs_path.write_text(json.dumps(attrs))


def _no_multiscales(d: Path) -> None:
    (d / "microscopy.ome.zarr" / ".zattrs").write_text("{}")


def _bad_landmark_kind(d: Path) -> None:
    (d / "pairs.csv").write_text("name,source_x,source_y,source_z,target_x,target_y,target_z\n")
    _lines(d / "manifest.toml", lambda rows: [
        r if r != 'level = 0' else 'level = 0\nlandmarks = "pairs.csv"\n'
        'landmark_transform = "projective"' for r in rows])


def _too_few_landmarks(d: Path) -> None:
    (d / "pairs.csv").write_text(
        "name,source_x,source_y,source_z,target_x,target_y,target_z\n"
        "a,0,0,0,1,1,1\nb,1,0,0,2,1,1\n")
    _lines(d / "manifest.toml", lambda rows: [
        r if r != 'level = 0' else 'level = 0\nlandmarks = "pairs.csv"' for r in rows])


CASES = [
    (_fewer_bvals, ["small_64D.bval", "64", "65"]),
    (_nan_bvec, ["small_64D.bvec", "volume 5", "not finite"]),
    (_zero_bvec, ["small_64D.bvec", "volume 7"]),
    (_non_unit_bvec, ["small_64D.bvec", "volume 9"]),
    (_nan_dwi, ["small_64D.nii", "NaN or Inf", "[1, 2, 3, 4]"]),
    (_mask_of_another_shape, ["mask", "(9, 10, 10)", "(10, 10, 10)"]),
    (_mask_of_another_affine, ["mask", "affine differs"]),
    (_non_finite_transform, ["microscopy_to_dmri.txt", "finite"]),
    (_singular_transform, ["microscopy_to_dmri.txt", "singular"]),
    (_far_away, ["does not overlap", "overlap 0%"]),
    (_no_units, ["no units", "voxel_size_um"]),
    (_no_multiscales, ["multiscales"]),
    (_bad_landmark_kind, ["landmark_transform = 'projective'", "rigid, similarity or affine"]),
    (_too_few_landmarks, ["landmarks", "at least 3"]),
]


@pytest.mark.parametrize(("breaker", "needles"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    breaker: Callable[[Path], None], needles: list[str],
) -> None:
    data = tmp_path / "data"
    shutil.copytree(example, data)
    breaker(data)
    cfg = tmp_path / "run.toml"
    cfg.write_text('[run]\nname = "bad"\n[data]\nmanifest = "data/manifest.toml"\n'
                   '[[models]]\nname = "dti"\n')
    runs = tmp_path / "runs"
    runs.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["run", str(cfg), "-o", str(runs / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert list(runs.iterdir()) == []  # no run, no .failed-<time> folder
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_unbroken_example_is_accepted_by_the_same_check(example: Path) -> None:
    from validation.cases import dataset_case

    case = dataset_case(example / "manifest.toml")
    assert case.dwi.shape == (10, 10, 10, 65)
    assert [lvl.name for lvl in case.microscopy] == ["synthetic-50um"]
    assert case.microscopy[0].alignment is None
