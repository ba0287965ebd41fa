"""build_report: contents, escaping, determinism, robustness, schema checks."""

from __future__ import annotations

import base64
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reports
from reports import ReportError, build_report
from reports.figures import COLUMN_WIDTH_IN, PAGE_WIDTH_IN, PNG_DPI

XSS = "<script>alert(1)</script>"
TWO_CASES = [
    {"case": "angle-45", "crossing_angle_deg": 45.0, "snr": 20.0},
    {"case": "angle-90", "crossing_angle_deg": 90.0, "snr": 20.0},
]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_report_has_every_section_and_paper_output(built_report: Path) -> None:
    html = built_report.read_text(encoding="utf-8")
    report = built_report.parent
    for section in ("leaderboard", "conditions", "voxels", "tractography", "failures",
                    "definitions", "provenance", "files"):
        assert f'<section id="{section}">' in html
    stems = {p.stem for p in (report / "figures").iterdir()}
    assert {"main_scores", "sweep_crossing_angle_deg", "distributions"} <= stems
    assert {f"glyphs_angle-{a}" for a in (30, 60, 90)} <= stems
    assert {f"dec_angle-{a}" for a in (30, 60, 90)} <= stems
    assert {f"tracts_angle-{a}" for a in (30, 60, 90)} <= stems
    for stem in stems:
        for ext in ("pdf", "svg", "png"):
            assert (report / "figures" / f"{stem}.{ext}").stat().st_size > 0
    # one embedded image per figure, each in the report
    assert html.count("<img ") == len(stems)
    tables = {p.name for p in (report / "tables").iterdir()}
    assert {"leaderboard.csv", "leaderboard.tex"} <= tables
    for metric in ("peak_angular_error_deg", "peak_f1", "acc"):
        assert {f"region_{metric}.tex", f"case_{metric}.csv"} <= tables
    # metric definitions come from tasks.json, in words
    assert "Harmonic mean of peak precision and recall." in html


def test_report_is_self_contained(built_report: Path) -> None:
    html = built_report.read_text(encoding="utf-8")
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert srcs
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width > 0 and height > 0
    # no resource is fetched from anywhere: no http(s) URLs, no scripts, no stylesheets
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "<link rel=\"stylesheet\"" not in html
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert all(h.startswith(("#", "figures/", "tables/", "data:")) for h in hrefs)


def test_user_strings_are_escaped(built_report: Path) -> None:
    html = built_report.read_text(encoding="utf-8")
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the failure reason and config values are user text too
    assert "<b>was stopped</b>" not in html
    assert "&lt;b&gt;was stopped&lt;/b&gt;" in html
    tex = (built_report.parent / "tables" / "leaderboard.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}" in tex


def test_leaderboard_reads_scores_not_recomputes(built_report: Path) -> None:
    run = built_report.parent.parent
    scores = pd.read_csv(run / "scores.csv")
    board = pd.read_csv(built_report.parent / "tables" / "leaderboard.csv")
    top = scores[(scores["case"] == "all") & (scores["region"] == "all")]
    assert list(board["model"]) == ["csd8", "csa", "xss"]  # by mean rank
    for row in board.itertuples(index=False):
        for metric in ("peak_angular_error_deg", "peak_f1", "acc"):
            sel = top[(top["model"] == row.model) & (top["metric"] == metric)]
            med = sel[sel["statistic"] == "median"].iloc[0]
            rank = sel[sel["statistic"] == "rank"].iloc[0]
            assert getattr(row, f"{metric}_median") == med["value"]
            assert getattr(row, f"{metric}_ci_low") == med["ci_low"]
            assert getattr(row, f"{metric}_ci_high") == med["ci_high"]
            assert getattr(row, f"{metric}_rank") == rank["value"]
    mean_rank = board.set_index("model")["mean_rank"]
    assert mean_rank["csd8"] == 1.0 and mean_rank["xss"] == 3.0


def test_latex_tables_are_booktabs_with_captions(built_report: Path) -> None:
    tex = (built_report.parent / "tables" / "region_peak_f1.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{"):
        assert tex.count(command) == 1
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert "peak\\_f1" in caption and "median" in caption and "95\\% CI" in caption
    # header and one line per model, the same number of cells in each
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3
    header = tex.split(r"\toprule")[1].split(r"\midrule")[0].strip()
    assert header.startswith("Model & all & crossing & single")
    assert {line.count(" & ") for line in body} == {3}


def test_figures_have_journal_widths(built_report: Path) -> None:
    figures = built_report.parent / "figures"
    width, _ = _png_size((figures / "main_scores.png").read_bytes())
    assert width == round(PAGE_WIDTH_IN * PNG_DPI)
    width, _ = _png_size((figures / "sweep_crossing_angle_deg.png").read_bytes())
    assert width == round(PAGE_WIDTH_IN * PNG_DPI)
    svg = (figures / "main_scores.svg").read_text()
    assert f'width="{PAGE_WIDTH_IN * 72:g}pt"' in svg
    assert "<dc:date>" not in svg
    pdf = (figures / "main_scores.pdf").read_bytes()
    assert b"/CreationDate" not in pdf and b"/ModDate" not in pdf
    assert COLUMN_WIDTH_IN == 3.5


def test_rebuild_is_byte_identical_without_derivatives(make_run) -> None:
    run = make_run("run", cases=TWO_CASES)
    index = build_report(run)
    first = _files(index.parent)
    shutil.rmtree(run / "derivatives")
    build_report(run)
    second = _files(index.parent)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    # nothing left behind next to the report
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_other_schema_versions_are_refused(make_run) -> None:
    run = make_run("v2", schema_version=2, with_report_data=False)
    with pytest.raises(ReportError, match="schema version 2"):
        build_report(run)
    assert not (run / "report").exists()
    run = make_run("v1-string", schema_version="1.1", with_report_data=False)
    with pytest.raises(ReportError, match="schema version"):
        build_report(run)


def test_missing_required_files_are_reported(make_run) -> None:
    run = make_run("no-scores", with_report_data=False)
    (run / "scores.csv").unlink()
    with pytest.raises(ReportError, match="scores.csv not found"):
        build_report(run)
    run = make_run("no-prov", with_report_data=False)
    (run / "provenance.json").unlink()
    with pytest.raises(ReportError, match="no provenance.json"):
        build_report(run)


def test_minimal_run_builds(make_run) -> None:
    """One case, no optional files, a model with only NaN scores."""
    run = make_run(
        "minimal",
        cases=[{"case": "only", "crossing_angle_deg": 60.0}],
        all_nan_models=["csa"],
        failures=[],
        with_voxels=False,
        with_report_data=False,
    )
    for name in ("models.json", "failures.json", "config.toml", "cases.csv"):
        (run / name).unlink()
    index = build_report(run)
    html = index.read_text()
    assert "Nothing failed." in html
    assert "no report_data/" in html
    stems = {p.stem for p in (index.parent / "figures").iterdir()}
    assert stems == {"main_scores"}  # no sweep with one case, no voxels, no report_data
    board = pd.read_csv(index.parent / "tables" / "leaderboard.csv").set_index("model")
    assert np.isnan(board.loc["csa", "peak_f1_median"])
    assert np.isnan(board.loc["csa", "mean_rank"])
    assert list(board.index)[-1] == "csa"  # unranked last
    # models without models.json are shown by label
    assert "<td>csa</td>" in html


def test_failed_build_keeps_previous_report(make_run) -> None:
    run = make_run("atomic", cases=TWO_CASES[:1], with_voxels=False)
    index = build_report(run)
    before = _files(index.parent)
    (run / "report_data" / "dec_angle-45.npz").write_bytes(b"not an npz")
    with pytest.raises(ReportError, match="dec_angle-45.npz"):
        build_report(run)
    assert _files(index.parent) == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_lazy_public_names() -> None:
    assert reports.SCHEMA_VERSION == 1
    assert callable(reports.build_report) and callable(reports.diff_runs)
    assert callable(reports.check_gates)
    with pytest.raises(AttributeError):
        reports.no_such_name  # noqa: B018


def test_runner_style_files(make_run, default_models) -> None:
    """What validation/runner.py writes: a reference source in models.json and scores,
    an empty tractography.csv, snr = inf for a noise-free case."""
    models = default_models[:2] + [{
        "label": "microscopy", "name": "structure-tensor",
        "display_name": "Microscopy (structure tensor)", "params": {"sigma_um": 3.0},
        "reference": True,
    }]
    cases = [{"case": "clean", "crossing_angle_deg": 60.0, "snr": float("inf")},
             {"case": "noisy", "crossing_angle_deg": 60.0, "snr": 10.0}]
    run = make_run("runner", models=models, cases=cases, with_report_data=False)
    (run / "tractography.csv").write_text("\n")
    html = build_report(run).read_text()
    assert "Microscopy (structure tensor) <span class=\"ci\">(reference" in html
    assert 'id="tractography"' not in html
    # one finite SNR only: no SNR sweep
    assert not (run / "report" / "figures" / "sweep_snr.png").exists()


def test_region_table_in_html(built_report: Path) -> None:
    from reports.tables import format_ci, format_number

    html = built_report.read_text(encoding="utf-8")
    table = html.split('<table class="regions">')[1].split("</table>")[0]
    scores = pd.read_csv(built_report.parent.parent / "scores.csv")
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 3
    csd8 = rows[0]
    assert csd8.strip().startswith("<tr><td>CSD, order 8</td>")
    cells = re.findall(r'<td class="num">(.*?) <span class="ci">(.*?)</span></td>', csd8)
    expected = []
    for metric in ("peak_angular_error_deg", "peak_f1", "acc"):
        for region in ("all", "single", "crossing"):
            r = scores[(scores.case == "all") & (scores.region == region)
                       & (scores.model == "csd8") & (scores.metric == metric)
                       & (scores.statistic == "median")].iloc[0]
            expected.append((format_number(r.value), format_ci(r.ci_low, r.ci_high)))
    # the fixture's regions come in the order all, crossing, single
    header = re.findall(r"<th>(all|single|crossing)</th>", table)[:3]
    order = [("all", "single", "crossing").index(h) for h in header]
    reordered = [expected[3 * m + i] for m in range(3) for i in order]
    assert cells == reordered
