"""CI gates: conditions on scores that must hold, e.g. ``csd8:peak_f1.median>=0.8``.

A gate names a model label, a metric and a statistic of scores.csv, an operator and a
threshold. It is read from the ``case = all, region = all`` row. Written as one string
(``--gate "csd8:peak_f1.median>=0.8"``) or as a ``[gates]`` config entry
(``"csd8:peak_f1.median" = ">= 0.8"``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports import ReportError
from reports.rundir import ALL, STATISTICS, load_run_dir

#: comparison operators a gate may use
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}

_KEY = re.compile(
    r"^\s*(?P<model>[^:\s]+)\s*:\s*(?P<metric>[A-Za-z0-9_]+)\.(?P<stat>[A-Za-z0-9_]+)\s*$"
)
_CONDITION = re.compile(r"^\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$")
_GATE = re.compile(r"^(?P<key>[^<>=!]+?)\s*(?P<cond>(?:>=|<=|==|!=|>|<).*)$")


@dataclass(frozen=True)
class Gate:
    """A condition that must hold: ``model:metric.statistic <op> threshold``.

    Attributes
    ----------
    model : str
        Model file label (the ``model`` column of scores.csv).
    metric : str
        Metric name (tasks.json).
    statistic : str
        One of median, mean, iqr_low, iqr_high, n, n_undefined, rank.
    op : str
        One of ``>=``, ``<=``, ``>``, ``<``, ``==``, ``!=``.
    threshold : float
        The value compared against, in the metric's unit.
    """

    model: str
    metric: str
    statistic: str
    op: str
    threshold: float

    @property
    def key(self) -> str:
        """``model:metric.statistic``."""
        return f"{self.model}:{self.metric}.{self.statistic}"

    @property
    def text(self) -> str:
        """The gate as one string, e.g. ``csd8:peak_f1.median>=0.8``."""
        short = f"{self.threshold:g}"
        number = short if float(short) == self.threshold else repr(self.threshold)
        return f"{self.key}{self.op}{number}"

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the condition (never for NaN)."""
        return math.isfinite(value) and bool(OPERATORS[self.op](value, self.threshold))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate.

    Attributes
    ----------
    gate : Gate
    value : float
        The score read from scores.csv (NaN when undefined or absent).
    passed : bool
    message : str
        One line naming the gate and the value.
    """

    gate: Gate
    value: float
    passed: bool
    message: str


def gate_from_item(key: str, condition: str) -> Gate:
    """A gate from a ``[gates]`` config entry, e.g. ``("csd8:peak_f1.median", ">= 0.8")``.

    Raises
    ------
    ReportError
        When the key or condition is malformed or the statistic unknown.
    """
    k = _KEY.match(str(key))
    if k is None:
        raise ReportError(
            f"gate {key!r} is invalid; write it as 'model-label:metric.statistic'"
        )
    stat = k["stat"]
    if stat not in STATISTICS:
        raise ReportError(
            f"gate {key!r}: statistic {stat!r} is unknown; use one of {', '.join(STATISTICS)}"
        )
    c = _CONDITION.match(str(condition))
    if c is None:
        raise ReportError(
            f"gate {key!r}: condition {condition!r} is invalid; write e.g. '>= 0.8' "
            f"(operators {' '.join(OPERATORS)})"
        )
    try:
        threshold = float(c["value"])
    except ValueError:
        raise ReportError(
            f"gate {key!r}: threshold {c['value']!r} is not a number"
        ) from None
    if math.isnan(threshold):
        raise ReportError(f"gate {key!r}: threshold must not be NaN")
    return Gate(k["model"], k["metric"], stat, c["op"], threshold)


def parse_gate(text: str) -> Gate:
    """Parse one gate string, ``"label:metric.statistic<op>value"``.

    Examples
    --------
    >>> parse_gate("csd8:peak_f1.median>=0.8")
    Gate(model='csd8', metric='peak_f1', statistic='median', op='>=', threshold=0.8)
    """
    m = _GATE.match(str(text).strip())
    if m is None:
        raise ReportError(
            f"gate {text!r} is invalid; write it as 'model-label:metric.statistic>=value'"
        )
    return gate_from_item(m["key"], m["cond"])


def parse_gates(gates: Mapping[str, str] | Iterable[str | Gate]) -> list[Gate]:
    """Gates from a ``[gates]`` table (``{key: condition}``) or from gate strings."""
    if isinstance(gates, Mapping):
        return [gate_from_item(k, v) for k, v in gates.items()]
    return [g if isinstance(g, Gate) else parse_gate(g) for g in gates]


def _format(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else "NaN (undefined)"


def check_gates(
    run_dir_or_scores: str | Path | pd.DataFrame,
    gates: Mapping[str, str] | Iterable[str | Gate],
) -> list[GateResult]:
    """Evaluate gates against the case = all, region = all rows of scores.csv.

    Parameters
    ----------
    run_dir_or_scores : str, Path or pandas.DataFrame
        A run directory (its schema version is checked) or a scores table.
    gates : mapping or iterable
        ``{"csd8:peak_f1.median": ">= 0.8"}`` (a ``[gates]`` table) or gate strings
        / :class:`Gate` objects.

    Returns
    -------
    list of GateResult
        In the order of ``gates``. A gate whose value is NaN or whose model has no row
        (it failed on every case) does not hold.

    Raises
    ------
    ReportError
        A malformed gate, or one naming a model or metric the run does not have.
    """
    parsed = parse_gates(gates)
    known_models: set[str]
    known_metrics: set[str]
    if isinstance(run_dir_or_scores, pd.DataFrame):
        scores = run_dir_or_scores
        known_models = set(scores["model"].astype(str))
        known_metrics = set(scores["metric"].astype(str))
    else:
        run = load_run_dir(run_dir_or_scores)
        scores = run.scores
        known_models = set(run.labels)
        known_metrics = set(run.tasks) | set(scores["metric"])
    rows = scores[(scores["case"].astype(str) == ALL) & (scores["region"].astype(str) == ALL)]
    lookup = {
        (str(r.model), str(r.metric), str(r.statistic)): float(r.value)
        for r in rows.itertuples(index=False)
    }
    results = []
    for gate in parsed:
        if gate.model not in known_models:
            raise ReportError(
                f"gate {gate.text!r}: model {gate.model!r} is not in the run "
                f"(labels: {', '.join(sorted(known_models)) or 'none'})"
            )
        if gate.metric not in known_metrics:
            raise ReportError(
                f"gate {gate.text!r}: metric {gate.metric!r} is not in the run "
                f"(metrics: {', '.join(sorted(known_metrics)) or 'none'})"
            )
        value = lookup.get((gate.model, gate.metric, gate.statistic), math.nan)
        passed = gate.holds(value)
        if (gate.model, gate.metric, gate.statistic) not in lookup:
            why = "no score (the model has no case=all, region=all row)"
        else:
            why = f"value {_format(value)}"
        verdict = "holds" if passed else "does not hold"
        results.append(GateResult(gate, value, passed, f"gate {gate.text} {verdict}: {why}"))
    return results
