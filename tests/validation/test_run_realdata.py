"""`xscale run` on registered real data: dipy's small_64D with synthetic microscopy levels.

One level is placed through the example's rotation + shear matrix; a second, a 2x
coarser copy of the same volume, is placed by landmarks (an affine fit). The run scores
the model against the first level's FOD, compares the two levels on the dMRI grid
(crossscale.csv), reports the landmark TRE and the registration-uncertainty spread
(registration.csv) and builds the report.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import validation
from validation.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real-data"


def _make_example():
    spec = importlib.util.spec_from_file_location("make_example", EXAMPLE / "make_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_coarse_level_with_landmarks(folder: Path, *, noise_mm: float = 0.0,
                                    kind: str = "affine", rng: int = 0) -> np.ndarray:
    """Add level ``coarse-100um`` (2x2x2 means of the example volume) placed by landmarks.

    The landmarks are 12 points of the level's world frame and their images under its
    true placement (plus Gaussian noise of ``noise_mm`` per axis). Returns the true
    microscopy world -> dMRI world matrix.
    """
    import tomllib

    import tomli_w

    from validation.io.omezarr import write_ome_zarr
    from validation.manifest import load_dataset

    ds = load_dataset(folder / "manifest.toml")
    fine = ds.level("synthetic-50um")
    volume = np.asarray(fine.volume, dtype=np.float32)
    coarse = volume.reshape(32, 2, 32, 2, 32, 2).mean(axis=(1, 3, 5))
    write_ome_zarr(folder / "coarse.ome.zarr", coarse, spacing=(100.0,) * 3,
                   units="micrometer", overwrite=True)
    # coarse voxel c covers fine voxels 2c, 2c + 1: fine index = 2 c + 0.5
    coarse_to_fine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_to_fine[:3, 3] = 0.5
    coarse_to_dmri = fine.voxel_to_dmri @ coarse_to_fine
    # coarse world (x, y, z) mm = array (z, y, x) reversed times 0.1 mm
    coarse_to_world = np.zeros((4, 4))
    coarse_to_world[3, 3] = 1.0
    for axis in range(3):
        coarse_to_world[2 - axis, axis] = 0.1
    world_to_dmri = coarse_to_dmri @ np.linalg.inv(coarse_to_world)
    gen = np.random.default_rng(rng)
    source = gen.uniform(0.0, 3.2, size=(12, 3))
    target = source @ world_to_dmri[:3, :3].T + world_to_dmri[:3, 3]
    target = target + gen.normal(0.0, noise_mm, size=target.shape)
    with (folder / "pairs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "source_x", "source_y", "source_z",
                         "target_x", "target_y", "target_z"])
        for n, (s, t) in enumerate(zip(source, target, strict=True)):
            writer.writerow([f"L{n}", *s, *t])
    manifest = tomllib.loads((folder / "manifest.toml").read_text())
    manifest["microscopy"].append({"name": "coarse-100um", "path": "coarse.ome.zarr",
                                   "landmarks": "pairs.csv", "landmark_transform": kind})
    (folder / "manifest.toml").write_text(tomli_w.dumps(manifest))
    return world_to_dmri


@pytest.fixture(scope="module")
def realdata_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (Path(__import__("dipy").__file__).parent / "data" / "files" / "small_64D.nii"
            ).exists():
        pytest.skip("dipy's small_64D is not shipped")
    base = tmp_path_factory.mktemp("realdata")
    _make_example().main(base / "data")
    add_coarse_level_with_landmarks(base / "data", noise_mm=0.02)
    cfg = base / "run.toml"
    cfg.write_text(
        '[run]\nname = "realdata"\n[data]\nmanifest = "data/manifest.toml"\n'
        '[[models]]\nname = "dti"\n[metrics]\nn_boot = 50\n[tracking]\nmodels = ["dti"]\n'
        '[registration]\nperturbations = 3\nrotation_deg = 3.0\ntranslation_um = 50.0\n'
    )
    out = base / "run"
    assert main(["run", str(cfg), "-o", str(out), "--quiet"]) == 0
    return out


def test_realdata_run_scores_models_against_the_microscopy(realdata_run: Path) -> None:
    result = validation.load_run(realdata_run)
    assert result.failures == []
    assert set(result.cases.case) == {"small64d-synthetic-microscopy"}
    # the first level is the reference; the model and the second level are scored
    assert {"dti", "microscopycoarse100um"} == set(result.scores.model)
    n = result.score("dti", "acc", "n")
    assert n > 10  # voxels covered by the microscopy inside the 10^3 grid
    acc = result.score("dti", "acc")
    assert -1.0 <= acc <= 1.0
    # the coarse level agrees with the fine reference (same tubes, placed by landmarks)
    assert result.score("microscopycoarse100um", "acc") > 0.9
    assert (realdata_run / "report" / "index.html").is_file()


def test_realdata_crossscale_compares_the_two_levels(realdata_run: Path) -> None:
    cs = pd.read_csv(realdata_run / "crossscale.csv")
    assert list(cs.columns) == ["case", "source_a", "source_b", "metric", "statistic", "value",
                                "ci_low", "ci_high"]
    assert set(zip(cs.source_a, cs.source_b, strict=True)) == {("synthetic-50um",
                                                                "coarse-100um")}
    row = cs[(cs.case == "all") & (cs.metric == "acc") & (cs.statistic == "median")]
    assert len(row) == 1
    assert row.value.iloc[0] > 0.9
    assert row.ci_low.iloc[0] <= row.value.iloc[0] <= row.ci_high.iloc[0]
    err = cs[(cs.case == "all") & (cs.metric == "peak_angular_error_deg")
             & (cs.statistic == "median")].value.iloc[0]
    assert 0 <= err < 10


def test_realdata_registration_spread_and_landmark_tre(realdata_run: Path) -> None:
    reg = pd.read_csv(realdata_run / "registration.csv")
    spread = reg[(reg.case == "all") & (reg.model == "dti") & (reg.metric == "acc")]
    stats = dict(zip(spread.statistic, spread.value, strict=True))
    assert stats["n"] == 3
    assert stats["std"] > 0  # the reference moved, so the model's score moved
    assert stats["min"] <= stats["perturbed_median"] <= stats["max"]
    assert stats["range"] == pytest.approx(stats["max"] - stats["min"])
    lm = reg[reg.model == "landmarks"]
    assert set(lm.level) == {"coarse-100um"}
    values = dict(zip(lm.metric, lm.value, strict=True))
    assert values["landmark_n_landmarks"] == 12
    # noise 0.02 mm per axis: leave-one-out TRE of the order of sqrt(3) * 0.02 mm
    assert 0.005 < values["landmark_loo_tre_mean_mm"] < 0.1
    html = (realdata_run / "report" / "index.html").read_text()
    assert "Cross-scale comparison" in html
    assert "Registration uncertainty" in html
    assert "coarse-100um" in html


def test_realdata_tractography_is_scored_against_the_microscopy_tractogram(
        realdata_run: Path) -> None:
    """Without truth bundles, a reference tractogram is tracked through the reference
    microscopy level (at its resolution, mapped to the dMRI grid) and the models'
    tractograms are scored by voxel overlap with it."""
    import nibabel as nib

    case = "small64d-synthetic-microscopy"
    ref = (realdata_run / "derivatives" / f"sub-{case}" / "micr"
           / f"sub-{case}_desc-microscopy_tractography.trk")
    model = realdata_run / "derivatives" / f"sub-{case}" / "dwi" / \
        f"sub-{case}_model-dti_tractography.trk"
    assert ref.is_file() and model.is_file()
    ref_sl = nib.streamlines.load(str(ref)).streamlines
    assert len(ref_sl) > 10
    # in dMRI world space, inside the dMRI grid (its corners +- half a voxel)
    dwi = nib.load(str(realdata_run.parent / "data" / "small_64D.nii"))
    ijk = nib.affines.apply_affine(np.linalg.inv(dwi.affine), ref_sl.get_data())
    assert ijk.min() >= -0.5 - 1e-6 and (ijk <= np.asarray(dwi.shape[:3]) - 0.5 + 1e-6).all()
    tract = pd.read_csv(realdata_run / "tractography.csv")
    row = tract[(tract.model == "dti") & (tract.bundle == "microscopy")]
    assert len(row) == 1
    row = row.iloc[0]
    assert 0 < row.ol <= 1 and 0 <= row.or_vs <= 1 and 0 < row.f1 <= 1
    assert row.n_voxels_gt > 0 and row.n_streamlines > 0
    # F1 is the Dice of the two voxel sets: 2 OL |A| / (|A| + |B|)
    assert row.f1 == pytest.approx(2 * row.ol * row.n_voxels_gt
                                   / (row.n_voxels_gt + row.n_voxels_vs))
