"""Figure and table helpers: sweeps, glyphs, LaTeX escaping, number formatting."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reports import build_report
from reports.figures import (
    dec_figure,
    glyph_figure,
    mpl_text,
    report_style,
    save_figure,
    sweep_cases,
    sweep_conditions,
)
from reports.rundir import load_run_dir
from reports.tables import format_ci, format_number, latex_escape


def _cases() -> pd.DataFrame:
    return pd.DataFrame({
        "case": ["a30", "a60", "a90", "snr5", "snr10", "clean", "k4"],
        "crossing_angle_deg": [30.0, 60.0, 90.0, 60.0, 60.0, 60.0, 60.0],
        "snr": [30.0, 30.0, 30.0, 5.0, 10.0, math.inf, 30.0],
        "kappa": [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 4.0],
        "geometry": ["crossing"] * 7,
        "seed": [0, 1, 2, 3, 4, 5, 6],
    })


def test_sweep_conditions_order_and_exclusions() -> None:
    # seed varies but is not a condition; geometry is constant and not numeric
    assert sweep_conditions(_cases()) == ["crossing_angle_deg", "snr", "kappa"]
    assert sweep_conditions(_cases().iloc[:1]) == []
    assert sweep_conditions(None) == []


def test_sweep_cases_hold_other_conditions_at_their_mode() -> None:
    subset, fixed, left_out = sweep_cases(_cases(), "crossing_angle_deg")
    assert fixed == {"snr": 30.0, "kappa": 100.0}
    assert list(subset["case"]) == ["a30", "a60", "a90"]
    assert left_out == []
    subset, fixed, left_out = sweep_cases(_cases(), "snr")
    assert fixed == {"crossing_angle_deg": 60.0, "kappa": 100.0}
    assert list(subset["case"]) == ["snr5", "snr10", "a60"]  # sorted by SNR
    assert left_out == ["clean"]  # SNR inf (noise-free) cannot sit on the axis
    subset, fixed, _ = sweep_cases(_cases(), "kappa")
    assert list(subset["case"]) == ["k4", "a60"]


def test_report_of_an_snr_and_dispersion_suite(make_run) -> None:
    cases = _cases().drop(columns=["seed"]).to_dict("records")
    run = make_run("sweeps", cases=cases, with_report_data=False, with_voxels=False)
    index = build_report(run)
    stems = {p.stem for p in (index.parent / "figures").glob("*.png")}
    assert {"sweep_crossing_angle_deg", "sweep_snr", "sweep_kappa"} <= stems
    html = index.read_text()
    assert "Left out (non-finite snr): clean." in html
    assert "Other conditions held at crossing_angle_deg = 60.0; kappa = 100.0" in html


def test_glyph_and_dec_figures_tolerate_missing_sources(run_dir, tmp_path) -> None:
    run = load_run_dir(run_dir)
    with np.load(run_dir / "report_data" / "glyphs_angle-30.npz") as data:
        arrays = dict(data)
    arrays["odf_csa"] = np.full_like(arrays["odf_csa"], np.nan)  # a failed fit
    arrays["odf_xss"] = arrays["odf_xss"][:, :10]  # wrong sphere size
    with report_style():
        fig = glyph_figure(run, arrays)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts.count("no ODF") == 2 * 2  # two sources x two voxels
        assert [ax.get_title() for ax in fig.axes[:5]] == [
            "ground truth", "microscopy", "CSD, order 8", "Q-ball (CSA)",
            mpl_text("<script>alert(1)</script>", 22)]
        assert "(2, 1, 0)" in texts
        png = save_figure(fig, tmp_path, "glyphs")
        assert png == (tmp_path / "glyphs.png").read_bytes()
        assert glyph_figure(run, {"odf_truth": arrays["odf_truth"]}) is None
        with np.load(run_dir / "report_data" / "dec_angle-30.npz") as data:
            fig = dec_figure(run, data)
        assert [ax.get_title() for ax in fig.axes] == [
            "ground truth", "microscopy", "CSD, order 8", "Q-ball (CSA)"]


def test_mpl_text_disables_mathtext() -> None:
    assert mpl_text("cost $x^2$") == r"cost \$x^2\$"
    assert mpl_text("a" * 50, 10) == "a" * 9 + "\u2026"
    assert mpl_text("two\nlines") == "two lines"


def test_latex_escape_exact() -> None:
    assert latex_escape("a_b & 50% #1 {x} ~y^z $") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}y\textasciicircum{}z \$")
    assert latex_escape("C:\\path") == r"C:\textbackslash{}path"
    assert latex_escape("<b>") == r"\textless{}b\textgreater{}"


@given(st.text(max_size=40))
def test_latex_escape_leaves_no_active_character(text: str) -> None:
    out = latex_escape(text)
    stripped = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater)\{\}",
                      "", out)
    stripped = re.sub(r"\\[&%$#_{}]", "", stripped)
    assert not set(stripped) & set("\\&%$#_{}~^<>")
    assert "\n" not in out


@pytest.mark.parametrize(
    ("value", "text"),
    [(3.0, "3"), (0.12345, "0.123"), (12.345, "12.35"), (123.45, "123.5"), (-0.5, "-0.500"),
     (math.nan, "n/a"), (math.inf, "n/a"), (2.5e6, "2500000.0")],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_format_ci() -> None:
    assert format_ci(0.1, 0.25) == "[0.100, 0.250]"
    assert format_ci(math.nan, 0.25) == ""


def test_sweep_figure_plots_the_scores_as_written(run_dir) -> None:
    from reports.figures import sweep_figure

    run = load_run_dir(run_dir)
    scores = pd.read_csv(run_dir / "scores.csv")
    with report_style():
        fig, fixed, left_out = sweep_figure(run, "crossing_angle_deg",
                                            ["peak_angular_error_deg", "peak_f1"])
    assert fixed == {} and left_out == []
    for ax, metric in zip(fig.axes[:2], ["peak_angular_error_deg", "peak_f1"], strict=True):
        assert len(ax.lines) == 3 and len(ax.collections) == 3  # a line and a band per model
        for line, label in zip(ax.lines, ["csd8", "csa", "xss"], strict=True):
            rows = scores[(scores.region == "all") & (scores.statistic == "median")
                          & (scores.metric == metric) & (scores.model == label)
                          & (scores.case != "all")].set_index("case")
            expected = rows.loc[["angle-30", "angle-60", "angle-90"], "value"].to_numpy()
            np.testing.assert_array_equal(line.get_xdata(), [30.0, 60.0, 90.0])
            np.testing.assert_array_equal(line.get_ydata(), expected)


def test_sources_are_listed_once_in_a_fixed_order() -> None:
    from reports.figures import _sources

    keys = ["odf_csd8", "odf_microscopy", "odf_truth", "odf_extra", "sphere_vertices"]
    # the runner lists the microscopy FOD among the models too
    assert _sources(keys, "odf_", ["dti", "csd8", "microscopy"]) == [
        "truth", "microscopy", "csd8", "extra"]
