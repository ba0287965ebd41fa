"""``diff_runs``: what changed between two runs, per model, case and main score.

A change is a *regression* when the score got worse (by the metric's direction in
tasks.json) and the two 95% CIs do not overlap; an *improvement* likewise in the other
direction; *within CI* when the value changed but the CIs overlap (or are undefined). A
score that was defined and became NaN counts as a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports.rundir import ALL, RunData, load_run_dir
from reports.tables import format_ci, format_number

#: change categories, in the order they are listed
STATUSES = ("regression", "improvement", "within CI", "added", "removed", "same")

_COLUMNS = [
    "model", "display_name", "case", "conditions", "metric", "statistic",
    "value_a", "ci_low_a", "ci_high_a", "value_b", "ci_low_b", "ci_high_b", "change", "status",
]


@dataclass
class RunDiff:
    """The differences between run A and run B.

    Attributes
    ----------
    run_a, run_b : Path
    table : pandas.DataFrame
        One row per (model, case, metric) of the main metrics, region = all, statistic
        median: value and CI in each run, change (B - A) and status (one of
        :data:`STATUSES`). case = "all" rows come first.
    param_changes : list of (label, parameter, value in A, value in B)
        Hyper-parameters that differ between the runs' models.json.
    provenance_changes : list of (key, value in A, value in B)
        xscale_version and git_commit when they differ.
    """

    run_a: Path
    run_b: Path
    table: pd.DataFrame
    param_changes: list[tuple[str, str, Any, Any]] = field(default_factory=list)
    provenance_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    directions: dict[str, bool] = field(default_factory=dict)

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows with status "regression"."""
        return self.table[self.table["status"] == "regression"]

    @property
    def changes(self) -> pd.DataFrame:
        """Rows whose status is not "same"."""
        return self.table[self.table["status"] != "same"]

    @property
    def has_regression(self) -> bool:
        return bool(len(self.regressions))

    def counts(self) -> dict[str, int]:
        """Number of rows per status."""
        return {s: int((self.table["status"] == s).sum()) for s in STATUSES}

    def summary(self) -> str:
        """One line: how many scores were compared and what changed."""
        c = self.counts()
        n = len(self.table)
        if n and c["same"] == n and not self.param_changes:
            return f"no change: {n} main scores compared, all identical"
        parts = [f"{c[s]} {s}" for s in STATUSES if c[s]]
        return f"{n} main scores compared: " + ", ".join(parts)

    def _line(self, row: Any) -> str:
        better = "higher" if self.directions.get(row.metric, True) else "lower"
        a = f"{format_number(row.value_a)} {format_ci(row.ci_low_a, row.ci_high_a)}".strip()
        b = f"{format_number(row.value_b)} {format_ci(row.ci_low_b, row.ci_high_b)}".strip()
        change = format_number(row.change) if math.isfinite(row.change) else "n/a"
        if math.isfinite(row.change) and row.change > 0:
            change = "+" + change
        cond = f" ({row.conditions})" if row.conditions else ""
        return (
            f"  {row.model}  case={row.case}{cond}  {row.metric}.{row.statistic} "
            f"({better} is better): {a} -> {b}  change {change}"
        )

    def to_text(self, *, verbose: bool = False) -> str:
        """A plain-text report: one section per change category; rows that changed within
        their CIs are counted only, unless ``verbose``."""
        lines = [f"xscale diff  A: {self.run_a}", f"             B: {self.run_b}"]
        for key, va, vb in self.provenance_changes:
            lines.append(f"{key}: {va} -> {vb}")
        if self.param_changes:
            lines.append("parameters changed:")
            lines += [f"  {lab}: {p} = {va!r} -> {vb!r}" for lab, p, va, vb in self.param_changes]
        lines.append(self.summary())
        for status in STATUSES[:-1]:
            rows = self.table[self.table["status"] == status]
            if rows.empty:
                continue
            if status == "within CI" and not verbose:
                models = ", ".join(pd.unique(rows["model"]))
                lines.append(f"within CI ({len(rows)}, models {models}; --verbose lists them)")
                continue
            lines.append(f"{status} ({len(rows)}):")
            lines += [self._line(r) for r in rows.itertuples(index=False)]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page (user strings escaped)."""
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        css = (Path(__file__).parent / "templates" / "style.css").read_text(encoding="utf-8")
        rows = []
        for status in STATUSES:
            for r in self.table[self.table["status"] == status].itertuples(index=False):
                rows.append({
                    "model": r.display_name, "label": r.model, "case": r.case,
                    "conditions": r.conditions, "metric": r.metric, "status": r.status,
                    "better": "higher" if self.directions.get(r.metric, True) else "lower",
                    "a": format_number(r.value_a), "ci_a": format_ci(r.ci_low_a, r.ci_high_a),
                    "b": format_number(r.value_b), "ci_b": format_ci(r.ci_low_b, r.ci_high_b),
                    "change": format_number(r.change),
                })
        return env.get_template("diff.html").render(
            css=css, run_a=str(self.run_a), run_b=str(self.run_b), summary=self.summary(),
            rows=rows, param_changes=[(lab, p, repr(a), repr(b))
                                      for lab, p, a, b in self.param_changes],
            provenance_changes=[(k, str(a), str(b)) for k, a, b in self.provenance_changes],
        )


def _overlap(lo_a: float, hi_a: float, lo_b: float, hi_b: float) -> bool | None:
    """Whether two CIs overlap; None when either is undefined."""
    if not all(math.isfinite(x) for x in (lo_a, hi_a, lo_b, hi_b)):
        return None
    return lo_a <= hi_b and lo_b <= hi_a


def classify(
    a: tuple[float, float, float] | None,
    b: tuple[float, float, float] | None,
    *,
    higher_is_better: bool,
) -> str:
    """Status of one score between two runs; ``a``/``b`` are (value, ci_low, ci_high)
    or None when the run has no such row."""
    if a is None and b is None:
        return "same"
    if a is None:
        return "added"
    if b is None:
        return "removed"
    va, vb = a[0], b[0]
    fa, fb = math.isfinite(va), math.isfinite(vb)
    if not fa and not fb:
        return "same"
    if fa and not fb:
        return "regression"
    if fb and not fa:
        return "improvement"
    same_ci = all(
        (x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a[1:], b[1:], strict=True)
    )
    if va == vb and same_ci:
        return "same"
    worse = vb < va if higher_is_better else vb > va
    better = vb > va if higher_is_better else vb < va
    if _overlap(a[1], a[2], b[1], b[2]) is False:
        if worse:
            return "regression"
        if better:
            return "improvement"
    return "within CI"


def _conditions(run: RunData) -> dict[str, str]:
    """``{case: "cond=value, ..."}`` with the conditions that vary across the run's cases."""
    if run.cases is None:
        return {}
    out = {}
    cols = [c for c in run.cases.columns
            if c != "case" and run.cases[c].nunique(dropna=False) > 1]
    for rec in run.cases.to_dict("records"):
        out[str(rec["case"])] = ", ".join(f"{c}={rec[c]}" for c in cols)
    return out


def _param_changes(a: RunData, b: RunData) -> list[tuple[str, str, Any, Any]]:
    pa = {m.label: dict(m.params) for m in a.models}
    pb = {m.label: dict(m.params) for m in b.models}
    missing = object()
    changes = []
    for label in [*pa, *[x for x in pb if x not in pa]]:
        if label not in pa or label not in pb:
            continue
        for key in sorted(set(pa[label]) | set(pb[label])):
            va, vb = pa[label].get(key, missing), pb[label].get(key, missing)
            if va != vb:
                changes.append((label, key, None if va is missing else va,
                                None if vb is missing else vb))
    return changes


def diff_runs(
    run_a: str | Path, run_b: str | Path, *, statistic: str = "median"
) -> RunDiff:
    """Compare the main scores of two run directories.

    Parameters
    ----------
    run_a, run_b : str or Path
        Run directories (both of this schema version).
    statistic : str
        The statistic compared (default median, which has CIs).

    Returns
    -------
    RunDiff
        Per model, case (with its conditions; "all" first) and main metric
        (region = all): both values and CIs, the change and its status.

    Raises
    ------
    ReportError
        When either directory is not a readable run of this schema version.
    """
    a, b = load_run_dir(run_a), load_run_dir(run_b)
    metrics = a.main_metrics() + [m for m in b.main_metrics() if m not in a.main_metrics()]
    directions = {m: (a.higher_is_better(m) if m in a.tasks else b.higher_is_better(m))
                  for m in metrics}

    def index(run: RunData) -> dict[tuple[str, str, str], tuple[float, float, float]]:
        s = run.scores
        rows = s[(s["region"] == ALL) & (s["statistic"] == statistic) & s["metric"].isin(metrics)]
        return {(r.model, r.case, r.metric): (float(r.value), float(r.ci_low), float(r.ci_high))
                for r in rows.itertuples(index=False)}

    ia, ib = index(a), index(b)
    labels = a.labels + [x for x in b.labels if x not in a.labels]
    cases_a = [c for c in pd.unique(a.scores["case"]) if c != ALL]
    cases = [ALL] + cases_a + [c for c in pd.unique(b.scores["case"])
                               if c != ALL and c not in cases_a]
    conditions = {**_conditions(a), **_conditions(b)}
    nan3 = (math.nan, math.nan, math.nan)
    records = []
    for label in labels:
        name = b.display_name(label) if label in b.labels else a.display_name(label)
        for case in cases:
            for metric in metrics:
                key = (label, case, metric)
                if key not in ia and key not in ib:
                    continue
                sa, sb = ia.get(key), ib.get(key)
                status = classify(sa, sb, higher_is_better=directions[metric])
                va, vb = sa or nan3, sb or nan3
                records.append([
                    label, name, case, conditions.get(case, ""), metric, statistic,
                    *va, *vb, vb[0] - va[0], status,
                ])
    table = pd.DataFrame(records, columns=_COLUMNS)
    prov = [
        (k, a.provenance.get(k), b.provenance.get(k))
        for k in ("xscale_version", "git_commit")
        if a.provenance.get(k) != b.provenance.get(k)
    ]
    return RunDiff(
        run_a=a.path, run_b=b.path, table=table, param_changes=_param_changes(a, b),
        provenance_changes=prov, directions=directions,
    )
