"""End-to-end: the built-in default benchmark, its run directory, determinism, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import validation
from validation.cli import main

STATISTICS = {"median", "mean", "iqr_low", "iqr_high", "n", "n_undefined", "rank"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "default"
    code = main(["run", "-o", str(out), "--quiet"])
    assert code == 0
    return out


def test_default_run_writes_the_run_directory(default_run: Path) -> None:
    for name in ("config.toml", "provenance.json", "cases.csv", "tasks.json", "scores.csv",
                 "voxels.csv.gz", "failures.json", "run.log", "models.json",
                 "report/index.html"):
        assert (default_run / name).is_file(), name
    prov = json.loads((default_run / "provenance.json").read_text())
    assert prov["schema_version"] == 1
    assert {"numpy", "dipy", "python"} <= set(prov["versions"])
    assert prov["seeds"]["run"] == 0

    cases = pd.read_csv(default_run / "cases.csv")
    assert len(cases) == 3
    assert "crossing_angle_deg" in cases.columns

    scores = pd.read_csv(default_run / "scores.csv")
    assert list(scores.columns) == ["case", "region", "model", "metric", "statistic", "value",
                                    "ci_low", "ci_high"]
    assert set(scores.statistic) == STATISTICS
    assert {"dti", "csd", "microscopy"} <= set(scores.model)
    assert {"peak_angular_error_deg", "peak_f1", "acc", "nufo_correct"} <= set(scores.metric)
    assert {"all", "single", "crossing"} <= set(scores.region)
    assert set(scores.case) == set(cases.case) | {"all"}
    failures = json.loads((default_run / "failures.json").read_text())
    assert failures == []


def test_default_run_scores_are_sane(default_run: Path) -> None:
    result = validation.load_run(default_run)
    # single-bundle voxels: both models find the bundle direction (issue 6 acceptance)
    for model in ("dti", "csd"):
        err = result.score(model, "peak_angular_error_deg", region="single")
        assert 0 <= err < 5, (model, err)
    # CSD resolves crossings better than DTI, which finds one peak per voxel
    assert result.score("csd", "peak_f1", region="crossing") > result.score(
        "dti", "peak_f1", region="crossing")
    assert result.score("dti", "peak_recall", "mean", region="crossing") <= 0.55
    acc = result.score("csd", "acc")
    assert 0 < acc <= 1


def test_same_seed_gives_byte_identical_scores(default_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["run", "-o", str(again), "--quiet"]) == 0
    assert (again / "scores.csv").read_bytes() == (default_run / "scores.csv").read_bytes()
    assert (again / "voxels.csv.gz").read_bytes() == (default_run / "voxels.csv.gz").read_bytes()


def test_existing_run_is_refused(default_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = (default_run / "scores.csv").read_bytes()
    code = main(["run", "-o", str(default_run)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--overwrite" in err and str(default_run) in err
    assert len(err.strip().splitlines()) == 1
    assert (default_run / "scores.csv").read_bytes() == before


def test_exception_mid_run_leaves_no_final_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import validation.runner as runner

    calls = {"n": 0}
    real = runner.score_source

    def exploding(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "score_source", exploding)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[run]\nname = "crash"\n[[models]]\nname = "dti"\n')
    out = tmp_path / "runs" / "crash"
    code = main(["run", str(cfg), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 70
    assert "injected failure" in err
    assert not out.exists()
    (failed,) = [p for p in out.parent.iterdir()]
    assert failed.name.startswith("crash.failed-")
    assert "RuntimeError: injected failure" in (failed / "run.log").read_text()
    assert str(failed / "run.log") in err
    assert not (failed / "provenance.json").exists()


def test_python_api_matches_files(default_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(default_run, copy)
    result = validation.load_run(copy)
    assert len(result.scores) == len(pd.read_csv(default_run / "scores.csv"))
    assert result.failures == []
    assert result.config["run"]["name"] == "default"
    (copy / "provenance.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        validation.load_run(copy)


def test_derivatives_are_bids_like_and_read_back(default_run: Path) -> None:
    import nibabel as nib
    import numpy as np

    from validation.io.sh import read_sh

    desc = json.loads((default_run / "derivatives" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    fod = default_run / "derivatives/sub-cross90/dwi/sub-cross90_model-csd_param-fod_dwimap.nii.gz"
    sidecar = json.loads(Path(str(fod).replace(".nii.gz", ".json")).read_text())
    assert sidecar["OrientationEncoding"]["SphericalHarmonicsBasis"] == "descoteaux07"
    assert sidecar["OrientationEncoding"]["Legacy"] is False
    assert sidecar["OrientationEncoding"]["SphericalHarmonicsDegree"] == 8
    image = read_sh(fod)  # the sidecar states the convention: no declaration needed
    raw = np.asanyarray(nib.load(fod).dataobj)
    np.testing.assert_allclose(image.sh, raw, atol=1e-6)
    peaks = fod.with_name(fod.name.replace("param-fod", "param-peaks"))
    assert nib.load(peaks).shape[-1] % 3 == 0
