"""diff_runs and `xscale diff`: no change against itself, regressions flagged per model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reports import ReportError, diff_runs
from reports.diff import classify
from validation.cli import main


@pytest.fixture
def changed_pair(make_run, default_models):
    """Run A and run B where only model csa's hyper-parameter noise_deg changed."""
    a = make_run("a", with_report_data=False, with_voxels=False)
    models = default_models
    models[1]["params"]["noise_deg"] = 20.0
    b = make_run("b", models=models, with_report_data=False, with_voxels=False)
    return a, b


def test_run_against_itself_has_no_change(run_dir) -> None:
    d = diff_runs(run_dir, run_dir)
    # 3 models x (3 cases + all) x 3 main metrics
    assert len(d.table) == 3 * 4 * 3
    assert set(d.table["status"]) == {"same"}
    assert not d.has_regression and d.param_changes == []
    assert (d.table["change"].dropna() == 0).all()
    assert "no change: 36 main scores compared" in d.to_text()


def test_changed_hyper_parameter_flags_that_model_only(changed_pair) -> None:
    a, b = changed_pair
    d = diff_runs(a, b)
    assert d.param_changes == [("csa", "noise_deg", 9.0, 20.0)]
    assert set(d.regressions["model"]) == {"csa"}
    assert set(d.table.loc[d.table["model"] != "csa", "status"]) == {"same"}
    # case=all scores of csa got worse with CIs apart
    top = d.regressions[d.regressions["case"] == "all"].set_index("metric")
    assert set(top.index) == {"peak_angular_error_deg", "peak_f1", "acc"}
    assert top.loc["peak_f1", "value_b"] < top.loc["peak_f1", "value_a"]
    assert top.loc["peak_f1", "ci_high_b"] < top.loc["peak_f1", "ci_low_a"]
    assert top.loc["peak_angular_error_deg", "ci_low_b"] > top.loc[
        "peak_angular_error_deg", "ci_high_a"]
    text = d.to_text()
    assert "csa: noise_deg = 9.0 -> 20.0" in text
    assert "regression (" in text and "  csd8 " not in text
    # the other direction: the same scores are improvements
    back = diff_runs(b, a)
    assert set(back.table.loc[back.table["model"] == "csa", "status"]) <= {
        "improvement", "within CI"}
    assert not back.has_regression


@pytest.mark.parametrize(
    ("a", "b", "higher", "expected"),
    [
        ((0.8, 0.75, 0.85), (0.8, 0.75, 0.85), True, "same"),
        ((0.8, 0.75, 0.85), (0.6, 0.55, 0.65), True, "regression"),
        ((0.8, 0.75, 0.85), (0.6, 0.55, 0.65), False, "improvement"),
        ((0.8, 0.75, 0.85), (0.7, 0.65, 0.75), True, "within CI"),  # touching CIs overlap
        ((0.8, 0.75, 0.85), (0.6, math.nan, math.nan), True, "within CI"),
        ((0.8, 0.75, 0.85), (math.nan, math.nan, math.nan), True, "regression"),
        ((math.nan, math.nan, math.nan), (0.8, 0.7, 0.9), False, "improvement"),
        ((math.nan, math.nan, math.nan), (math.nan, math.nan, math.nan), True, "same"),
        (None, (0.8, 0.7, 0.9), True, "added"),
        ((0.8, 0.7, 0.9), None, True, "removed"),
    ],
)
def test_classify(a, b, higher, expected) -> None:
    assert classify(a, b, higher_is_better=higher) == expected


def test_diff_html_escapes_names(changed_pair, tmp_path) -> None:
    a, b = changed_pair
    out = tmp_path / "diff.html"
    assert main(["diff", str(a), str(b), "--html", str(out)]) == 0
    html = out.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('<tr class="regression">') == len(diff_runs(a, b).regressions)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".diff")] == []


def test_cli_exit_codes(changed_pair, capsys) -> None:
    a, b = changed_pair
    assert main(["diff", str(a), str(a), "--fail-on-regression"]) == 0
    assert "no change" in capsys.readouterr().out
    assert main(["diff", str(a), str(b)]) == 0
    assert main(["diff", str(a), str(b), "--fail-on-regression"]) == 1
    captured = capsys.readouterr()
    assert "regression" in captured.out


def test_other_schema_is_refused(make_run, capsys) -> None:
    a = make_run("a", with_report_data=False, with_voxels=False)
    b = make_run("b", schema_version=7, with_report_data=False, with_voxels=False)
    with pytest.raises(ReportError, match="schema version 7"):
        diff_runs(a, b)
    assert main(["diff", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema version 7" in err


_score = st.tuples(
    st.floats(-10, 10), st.floats(0, 5), st.floats(0, 5)
).map(lambda t: (t[0], t[0] - t[1], t[0] + t[2]))


@given(a=_score, b=_score, higher=st.booleans())
def test_classify_is_antisymmetric(a, b, higher) -> None:
    forward = classify(a, b, higher_is_better=higher)
    backward = classify(b, a, higher_is_better=higher)
    swap = {"regression": "improvement", "improvement": "regression"}
    assert backward == swap.get(forward, forward)
    # flipping the direction swaps regressions and improvements too
    assert classify(a, b, higher_is_better=not higher) == swap.get(forward, forward)
    # a regression never has overlapping CIs
    if forward == "regression":
        assert a[1] > b[2] or b[1] > a[2]


def test_text_lists_within_ci_rows_only_when_verbose(changed_pair) -> None:
    a, b = changed_pair
    d = diff_runs(a, b)
    within = d.table[d.table["status"] == "within CI"]
    assert len(within) > 0 and set(within["model"]) == {"csa"}
    short, long = d.to_text(), d.to_text(verbose=True)
    assert f"within CI ({len(within)}, models csa; --verbose lists them)" in short
    assert f"within CI ({len(within)}):" in long
    assert len(long.splitlines()) == len(short.splitlines()) + len(within)
    # only the conditions that vary across cases are named
    assert "(crossing_angle_deg=30.0)" in long and "snr=" not in long
