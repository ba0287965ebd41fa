"""The report's cross-scale and registration-uncertainty sections (optional files)."""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from reports import ReportError, build_report

CONFTEST = Path(__file__).resolve().parents[1] / "reports" / "conftest.py"


def _write_run(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("reports_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_run(path, with_voxels=False, with_report_data=False)


def _add_files(run: Path, label: str) -> None:
    rows = []
    for case in ("c1", "all"):
        for metric, value in (("acc", 0.9123), ("peak_angular_error_deg", 4.567),
                              ("jsd", 0.0432)):
            rows.append((case, "hipct-20um", "<b>voi</b>", metric, "median", value,
                         value - 0.01, value + 0.01))
            rows.append((case, "hipct-20um", "<b>voi</b>", metric, "n", 27.0, None, None))
    pd.DataFrame(rows, columns=["case", "source_a", "source_b", "metric", "statistic",
                                "value", "ci_low", "ci_high"]).to_csv(
        run / "crossscale.csv", index=False)
    reg = []
    for stat, value in (("score", 0.8), ("perturbed_median", 0.79), ("std", 0.0375),
                        ("min", 0.75), ("max", 0.83), ("range", 0.08), ("n", 5.0)):
        reg.append(("all", "all", label, "acc", stat, value))
    reg.append(("c1", "hipct-20um", "landmarks", "landmark_loo_tre_mean_mm", "value", 0.0421))
    pd.DataFrame(reg, columns=["case", "level", "model", "metric", "statistic", "value"]
                 ).to_csv(run / "registration.csv", index=False)


def test_sections_show_the_tables(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    models = pd.read_json(run / "models.json")
    label = str(models.label.iloc[0])
    _add_files(run, label)
    text = build_report(run).read_text()
    assert "Cross-scale comparison" in text and 'href="#crossscale"' in text
    assert "0.912" in text and "4.567" in text and "[0.902, 0.922]" in text
    assert html.escape("<b>voi</b>") in text and "<b>voi</b>" not in text
    assert "Registration uncertainty" in text
    assert "\u00b1 0.0375" in text  # in the leaderboard, next to the score
    assert "loo_tre_mean_mm" in text and "0.0421" in text
    tables = run / "report" / "tables"
    assert "0.9123" in (tables / "crossscale.csv").read_text()
    assert r"\textless{}b\textgreater{}voi" in (tables / "crossscale.tex").read_text()


def test_old_runs_without_the_files_still_report(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "old")
    text = build_report(run).read_text()
    assert "Cross-scale comparison" not in text
    assert "Registration uncertainty" not in text
    assert "\u00b1" not in text
    assert not (run / "report" / "tables" / "crossscale.csv").exists()


def test_a_broken_crossscale_file_is_a_report_error(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "bad")
    (run / "crossscale.csv").write_text("case,metric\nall,acc\n")
    with pytest.raises(ReportError, match="crossscale.csv: lacks the column"):
        build_report(run)
