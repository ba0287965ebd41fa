"""A phantom run with two microscopy levels and registration perturbations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import validation
from validation.cli import main


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import phantoms

    # one small straight bundle: 4^3 dMRI voxels of 100 um; microscopy 10 um (40^3) and,
    # from [crossscale] voxel_sizes_um, 5 um (80^3)
    spec = phantoms.CaseSpec("bundle", geometry="single", grid_size=4, voxel_size_mm=0.1,
                             snr=None, kappa=float("inf"), undulation_amplitude_um=0.0,
                             rotation_deg=(0.0, 30.0, 20.0), bundle_diameter_um=300.0)
    base = tmp_path_factory.mktemp("crossscale-run")
    cfg = base / "run.toml"
    cfg.write_text(
        '[run]\nname = "cs"\n[[models]]\nname = "dti"\n[tracking]\nenabled = false\n'
        '[metrics]\nn_boot = 50\n[crossscale]\nvoxel_sizes_um = [5.0]\n'
        '[registration]\nperturbations = 3\nrotation_deg = 5.0\ntranslation_um = 10.0\n'
    )
    real = phantoms.get_suite
    phantoms.get_suite = lambda name: [spec]  # type: ignore[assignment]
    try:
        assert main(["run", str(cfg), "-o", str(base / "run"), "--quiet"]) == 0
    finally:
        phantoms.get_suite = real  # type: ignore[assignment]
    return base / "run"


def test_levels_are_compared_pairwise(phantom_run: Path) -> None:
    result = validation.load_run(phantom_run)
    cs = result.crossscale
    assert set(zip(cs.source_a, cs.source_b, strict=True)) == {("microscopy",
                                                                "microscopy-5um")}
    acc = cs[(cs.case == "all") & (cs.metric == "acc") & (cs.statistic == "median")]
    assert acc.value.iloc[0] > 0.9
    n = cs[(cs.case == "all") & (cs.metric == "acc") & (cs.statistic == "n")].value.iloc[0]
    truth_voxels = result.score("dti", "acc", "n") + result.score("dti", "acc", "n_undefined")
    assert 0 < n <= truth_voxels
    # both levels are also scored against the geometric truth
    assert {"dti", "microscopy", "microscopy5um"} == set(result.scores.model)


def test_registration_spread_moves_microscopy_not_models(phantom_run: Path) -> None:
    result = validation.load_run(phantom_run)
    reg = result.registration
    # phantoms: the truth is geometric, so only the microscopy sources move
    assert set(reg.model) == {"microscopy", "microscopy5um"}
    rows = reg[(reg.case == "all") & (reg.model == "microscopy") & (reg.metric == "acc")]
    stats = dict(zip(rows.statistic, rows.value, strict=True))
    assert stats["n"] == 3
    assert stats["score"] == pytest.approx(result.score("microscopy", "acc"), abs=1e-9)
    assert stats["std"] > 0
    # a 5-degree misplacement can only lower agreement with the truth here
    assert stats["perturbed_median"] < stats["score"]
    html = (phantom_run / "report" / "index.html").read_text()
    assert "Registration uncertainty" in html and "\u00b1" in html
    assert pd.read_csv(phantom_run / "crossscale.csv").shape[0] > 0
