"""`xscale models` and `xscale check-model`: listing, plain-word problems, exit codes."""

from __future__ import annotations

import json

import pytest

from validation.cli import main
from validation.models import BUILTIN_MODELS

T = "validation.models.testing"


def test_models_lists_every_builtin_with_flags(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(BUILTIN_MODELS) <= set(lines)
    assert "[sh,peaks,truth]" in lines["oracle"]
    assert "multi-shell" in lines["msmt-csd"]
    assert "[odf,voxelwise]" in lines["csd"]


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["csd"]["params"]["sh_order_max"] == 8
    assert rows["csd"]["capabilities"]["gives_odf"] is True
    assert rows["isotropic"]["capabilities"]["gives_peaks"] is True
    assert rows["dti"]["source"] == "builtin" and rows["dti"]["error"] is None


def test_check_model_passes_a_good_model(capsys):
    assert main(["check-model", "csd"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("check-model csd: OK")
    assert "problem" not in out


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("NaNModel", "shm_coeff contains NaN or Inf in 31 of 31 voxels"),
        ("WrongShapeModel", "odf(sphere) has shape (31, 1, 1, 361); expected (31, 1, 1, 362)"),
        ("RaisingModel", "raised an exception: ValueError: this model always fails"),
        ("UnmaskedModel", "the mask is not honoured: with NaN signal outside the mask"),
        ("CrashingModel", "the process fitting it crashed"),
    ],
)
def test_check_model_names_the_problem(capsys, model, words):
    assert main(["check-model", f"{T}:{model}"]) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out.splitlines()[0]
    assert words in out


def test_check_model_reports_a_timeout(capsys):
    assert main(["check-model", f"{T}:SleepingModel", "--timeout-s", "1"]) == 1
    assert "did not finish in time: fit exceeded timeout_s=1 s" in capsys.readouterr().out


def test_check_model_passes_parameters(capsys):
    assert main(["check-model", f"{T}:SleepingModel", "-p", "seconds=0"]) == 0
    assert main(["check-model", "csa", "-p", "sh_order_max=6"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check-model", "nonexistent"], "unknown model 'nonexistent'"),
        (["check-model", "csd", "-p", "lamda=1"], "unknown parameter(s) lamda"),
        (["check-model", "csd", "-p", "novalue"], "not of the form KEY=VALUE"),
        (["check-model", "csd", "--timeout-s", "0"], "--timeout-s must be positive"),
    ],
)
def test_check_model_user_errors_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


_SLOW_MODELS = {"forecast", "mapmri", "msmt-csd", "sfm"}  # 7-8 s each on the 2-core machine


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_MODELS else n
     for n in sorted(BUILTIN_MODELS)],
)
def test_every_builtin_model_conforms(name):
    """The shared conformance check, run over every implementation (nibabel's ValidateAPI)."""
    from validation.models.conformance import check_model

    report = check_model(name)
    assert report.ok, report.to_text()
    assert report.problems == []
