"""CI gates: parsing (reports.gates, validation.gates) and evaluation on scores.csv."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reports import ReportError, check_gates
from reports.gates import OPERATORS, Gate, gate_from_item, parse_gate
from validation import gates as vgates
from validation.errors import UserError


def _value(run, model: str, metric: str, statistic: str) -> float:
    s = pd.read_csv(run / "scores.csv")
    row = s[(s.case == "all") & (s.region == "all") & (s.model == model)
            & (s.metric == metric) & (s.statistic == statistic)]
    assert len(row) == 1
    return float(row["value"].iloc[0])


def test_parse_gate_fields() -> None:
    g = parse_gate("csd8:peak_f1.median>=0.8")
    assert g == Gate("csd8", "peak_f1", "median", ">=", 0.8)
    assert g.text == "csd8:peak_f1.median>=0.8"
    g = parse_gate("  msmt-csd : peak_angular_error_deg.iqr_high <  12.5 ")
    assert (g.model, g.metric, g.statistic, g.op, g.threshold) == (
        "msmt-csd", "peak_angular_error_deg", "iqr_high", "<", 12.5)
    assert gate_from_item("csd8:peak_f1.median", ">= 0.8") == parse_gate("csd8:peak_f1.median>=0.8")
    assert parse_gate("a:n_undefined.n==0").op == "=="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("csd8:peak_f1>=0.8", "model-label:metric.statistic"),
        ("csd8 peak_f1.median>=0.8", "model-label:metric.statistic"),
        ("csd8:peak_f1.p95>=0.8", "statistic 'p95' is unknown"),
        ("csd8:peak_f1.median=>0.8", "invalid"),
        ("csd8:peak_f1.median>=high", "not a number"),
        ("csd8:peak_f1.median>=nan", "must not be NaN"),
        ("csd8:peak_f1.median", "invalid"),
    ],
)
def test_malformed_gates_name_the_gate(text: str, message: str) -> None:
    with pytest.raises(ReportError, match=message) as info:
        parse_gate(text)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):
        vgates.parse_gate(text)


@given(
    model=st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
    metric=st.sampled_from(["peak_f1", "acc", "jsd", "peak_angular_error_deg"]),
    stat=st.sampled_from(["median", "mean", "iqr_low", "iqr_high", "n", "rank"]),
    op=st.sampled_from(sorted(OPERATORS)),
    threshold=st.floats(allow_nan=False, allow_infinity=False, width=64),
)
def test_gate_text_round_trips(model, metric, stat, op, threshold) -> None:
    gate = Gate(model, metric, stat, op, threshold)
    assert parse_gate(gate.text) == gate


@given(value=st.floats(-1e6, 1e6), threshold=st.floats(-1e6, 1e6))
def test_gate_holds_is_the_operator(value: float, threshold: float) -> None:
    assert Gate("m", "acc", "median", ">=", threshold).holds(value) == (value >= threshold)
    assert Gate("m", "acc", "median", "<", threshold).holds(value) == (value < threshold)
    assert not Gate("m", "acc", "median", "!=", threshold).holds(math.nan)


def test_check_gates_reads_case_all_region_all(run_dir) -> None:
    value = _value(run_dir, "csd8", "peak_f1", "median")
    results = check_gates(run_dir, {
        "csd8:peak_f1.median": f">= {value!r}",
        "csd8:peak_f1.mean": "> 2",
        "xss:peak_angular_error_deg.rank": "== 3",
    })
    assert [r.passed for r in results] == [True, False, True]
    assert results[0].value == value
    assert results[1].message.startswith("gate csd8:peak_f1.mean>2 does not hold: value ")
    assert results[1].value == _value(run_dir, "csd8", "peak_f1", "mean")
    # just above the value: does not hold
    above = math.nextafter(value, math.inf)
    [r] = check_gates(run_dir, [f"csd8:peak_f1.median>={above!r}"])
    assert not r.passed


def test_check_gates_on_a_scores_table(run_dir) -> None:
    scores = pd.read_csv(run_dir / "scores.csv")
    value = _value(run_dir, "csa", "acc", "median")
    gates = [f"csa:acc.median<={value!r}", f"csa:acc.median<{value!r}"]
    [held, failed] = check_gates(scores, gates)
    assert held.passed and not failed.passed


def test_undefined_scores_fail_the_gate(make_run) -> None:
    run = make_run("nan", all_nan_models=["csa"], with_report_data=False, with_voxels=False)
    [r] = check_gates(run, ["csa:peak_f1.median>=0"])
    assert not r.passed and math.isnan(r.value)
    assert "NaN (undefined)" in r.message
    [r] = check_gates(run, ["csa:peak_f1.n_undefined>0"])
    assert r.passed and r.value == 3 * 40  # every voxel of the three cases


def test_unknown_model_or_metric_is_a_user_error(run_dir) -> None:
    with pytest.raises(ReportError, match="model 'nope' is not in the run"):
        check_gates(run_dir, ["nope:peak_f1.median>=0.8"])
    with pytest.raises(ReportError, match="metric 'f2' is not in the run"):
        check_gates(run_dir, ["csd8:f2.median>=0.8"])
    with pytest.raises(UserError, match="model 'nope'"):
        vgates.evaluate(run_dir, ["nope:peak_f1.median>=0.8"])


def test_validation_evaluate(run_dir) -> None:
    value = _value(run_dir, "xss", "peak_f1", "median")
    ok, messages = vgates.evaluate(run_dir, [f"xss:peak_f1.median>={value + 0.1!r}",
                                             "csd8:peak_f1.median>=0"])
    assert not ok
    assert messages[0].startswith(f"gate xss:peak_f1.median>={value + 0.1!r} does not hold")
    assert messages[1].startswith("gate csd8:peak_f1.median>=0 holds")
    ok, messages = vgates.evaluate(run_dir, {"csd8:peak_f1.median": ">= 0"})
    assert ok and len(messages) == 1
    assert vgates.evaluate(run_dir, []) == (True, [])


def test_parse_gate_table() -> None:
    gates = vgates.parse_gate_table({"csd8:peak_angular_error_deg.median": "<= 15",
                                     "csa:peak_f1.median": ">=0.7"})
    assert [g.text for g in gates] == ["csd8:peak_angular_error_deg.median<=15",
                                       "csa:peak_f1.median>=0.7"]
    with pytest.raises(UserError, match="must be a string"):
        vgates.parse_gate_table({"csd8:peak_f1.median": 0.8})
    with pytest.raises(UserError, match=r"\[gates\]"):
        vgates.parse_gate_table({"csd8:peak_f1": ">= 0.8"})


def test_gate_argument() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    vgates.add_gate_argument(parser)
    args = parser.parse_args(["--gate", "a:acc.median>=0.5", "--gate", "b:acc.rank<=1"])
    assert [vgates.parse_gate(g).model for g in args.gate] == ["a", "b"]
