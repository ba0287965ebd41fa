"""Model failures and the fit cache inside `validation.run` (whole runs: marked slow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

T = "validation.models.testing"


def _config(models, name):
    return {
        "run": {"name": name, "seed": 0},
        "data": {"suite": "default"},
        "models": models,
        "tracking": {"enabled": False},
    }


def _scores(result, label):
    s = result.scores
    return s[s["model"] == label].sort_values(["case", "region", "metric", "statistic"])


@pytest.mark.slow  # two whole runs of the default suite (about two minutes)
def test_broken_models_are_isolated_and_cached_fits_reused(tmp_path, monkeypatch):
    validation = pytest.importorskip("validation")
    orientation = pytest.importorskip("validation.orientation")

    tensor_calls = []
    real_tensor = orientation.structure_tensor_orientation
    monkeypatch.setattr(orientation, "structure_tensor_orientation",
                        lambda *a, **k: tensor_calls.append(1) or real_tensor(*a, **k))
    cache = tmp_path / "cache"
    counter = tmp_path / "count.txt"
    csd = {"name": "csd", "label": "csd"}
    counting = {"name": f"{T}:CountingModel", "label": "count",
                "params": {"counter": str(counter), "level": 1.0}}
    alone = validation.run(_config([csd, counting], "alone"), output=tmp_path / "alone",
                           cache_dir=cache, build_report=False)
    n_cases = alone.cases.shape[0]
    assert len(counter.read_text().splitlines()) == n_cases
    assert len(tensor_calls) == n_cases  # one microscopy level per case
    broken = [
        {"name": f"{T}:NaNModel", "label": "nan"},
        {"name": f"{T}:WrongShapeModel", "label": "wrongshape"},
        {"name": f"{T}:RaisingModel", "label": "raising"},
        {"name": f"{T}:SleepingModel", "label": "sleepy", "timeout_s": 1},
    ]
    counting2 = dict(counting, params={"counter": str(counter), "level": 2.0})
    mixed = validation.run(_config([csd, counting2, *broken], "mixed"),
                           output=tmp_path / "mixed", cache_dir=cache, build_report=False)
    # the changed model alone was refitted, once per case; microscopy FODs came from the
    # cache (no structure tensor) and score the same
    assert len(counter.read_text().splitlines()) == 2 * n_cases
    assert len(tensor_calls) == n_cases
    from validation.runner import MICROSCOPY_LABEL

    a, b = _scores(alone, MICROSCOPY_LABEL), _scores(mixed, MICROSCOPY_LABEL)
    assert len(a) > 0
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())
    # every broken model failed on every case, with its stage, and the run went on
    failures = pd.DataFrame(mixed.failures)
    stages = failures.groupby("model")["stage"].agg(set).to_dict()
    assert stages == {"nan": {"output"}, "wrongshape": {"output"}, "raising": {"fit"},
                      "sleepy": {"timeout"}}
    assert (failures.groupby("model").size() == n_cases).all()
    assert "ValueError: this model always fails" in set(failures["reason"])
    # csd's scores are unchanged by its broken neighbours
    a, b = _scores(alone, "csd"), _scores(mixed, "csd")
    assert len(a) > 0
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())
