"""Report tables: the leaderboard and per-region / per-case tables, as CSV (raw numbers)
and LaTeX (booktabs, formatted, with a caption naming metric and statistic).

Values are read from scores.csv, never recomputed; the only derived number is the
leaderboard order (mean of the per-metric ranks written by the run)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.rundir import ALL, RunData, score_lookup

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (one line).

    Examples
    --------
    >>> print(latex_escape("CSD_8 & 50%"))
    CSD\\_8 \\& 50\\%
    """
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in " ".join(str(text).split()))


def format_number(value: float) -> str:
    """A score for people: 3 significant digits (at least 1 decimal for |x| >= 100),
    integers as integers, "n/a" for NaN.

    Examples
    --------
    >>> [format_number(x) for x in (3.0, 0.12345, 12.345, 123.45, float("nan"))]
    ['3', '0.123', '12.35', '123.5', 'n/a']
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_ci(low: float, high: float) -> str:
    """"[low, high]" or "" when the CI is undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f"[{format_number(low)}, {format_number(high)}]"


@dataclass(frozen=True)
class Score:
    """One score with its CI and rank (NaN where undefined)."""

    value: float
    ci_low: float
    ci_high: float
    rank: float

    @property
    def text(self) -> str:
        return format_number(self.value)

    @property
    def ci_text(self) -> str:
        return format_ci(self.ci_low, self.ci_high)

    @property
    def rank_text(self) -> str:
        return format_number(self.rank) if math.isfinite(self.rank) else "-"


@dataclass
class LeaderboardRow:
    """One model's main scores (case=all, region=all, median)."""

    label: str
    display_name: str
    scores: dict[str, Score] = field(default_factory=dict)
    mean_rank: float = math.nan
    reference: bool = False

    @property
    def mean_rank_text(self) -> str:
        return f"{self.mean_rank:.2f}" if math.isfinite(self.mean_rank) else "-"


def leaderboard(run: RunData, metrics: Sequence[str]) -> list[LeaderboardRow]:
    """Main scores per model from the case=all, region=all rows: median with its CI and
    the rank written by the run; sorted by the mean rank over ``metrics`` (models with
    no rank last), ties by label."""
    lookup = score_lookup(run.scores, case=ALL, region=ALL)
    nan3 = (math.nan, math.nan, math.nan)
    rows = []
    for model in run.models:
        row = LeaderboardRow(label=model.label, display_name=model.display_name,
                             reference=model.reference)
        ranks = []
        for metric in metrics:
            value, lo, hi = lookup.get((model.label, metric, "median"), nan3)
            rank = lookup.get((model.label, metric, "rank"), nan3)[0]
            row.scores[metric] = Score(value, lo, hi, rank)
            if math.isfinite(rank):
                ranks.append(rank)
        row.mean_rank = float(np.mean(ranks)) if ranks else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (not math.isfinite(r.mean_rank),
                                       r.mean_rank if math.isfinite(r.mean_rank) else 0.0,
                                       r.label))


def _direction(run: RunData, metric: str) -> str:
    return "higher is better" if run.higher_is_better(metric) else "lower is better"


def _metric_phrase(run: RunData, metric: str) -> str:
    unit = run.unit(metric)
    return f"{metric} ({unit + ', ' if unit else ''}{_direction(run, metric)})"


def _latex_table(
    header: Sequence[str], body: Sequence[Sequence[str]], caption: str, label: str, align: str
) -> str:
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


@dataclass(frozen=True)
class TableFile:
    """A table written to report/tables/ as ``stem.csv`` and ``stem.tex``."""

    stem: str
    caption: str


def write_leaderboard(
    run: RunData, rows: Sequence[LeaderboardRow], metrics: Sequence[str], folder: Path
) -> TableFile:
    """leaderboard.csv and leaderboard.tex."""
    caption = (
        "Main scores over all cases (case = all, region = all): median with bootstrap 95\\% "
        "CI and rank (1 = best) of "
        + "; ".join(latex_escape(_metric_phrase(run, m)) for m in metrics)
        + ". Models ordered by their mean rank."
        + (" A reference is not a dMRI model (the microscopy FOD)."
           if any(r.reference for r in rows) else "")
    )
    records = []
    for row in rows:
        rec: dict[str, object] = {"model": row.label, "display_name": row.display_name,
                                  "reference": row.reference}
        for m in metrics:
            s = row.scores[m]
            rec.update({f"{m}_median": s.value, f"{m}_ci_low": s.ci_low,
                        f"{m}_ci_high": s.ci_high, f"{m}_rank": s.rank})
        rec["mean_rank"] = row.mean_rank
        records.append(rec)
    columns = ["model", "display_name", "reference"]
    for m in metrics:
        columns += [f"{m}_median", f"{m}_ci_low", f"{m}_ci_high", f"{m}_rank"]
    _write_csv(pd.DataFrame(records, columns=[*columns, "mean_rank"]), folder / "leaderboard.csv")

    header = ["Model"] + [latex_escape(m) for m in metrics] + ["Mean rank"]
    body = []
    for row in rows:
        cells = [latex_escape(row.display_name) + (" (reference)" if row.reference else "")]
        for m in metrics:
            s = row.scores[m]
            ci = f" {s.ci_text}" if s.ci_text else ""
            cells.append(f"{s.text}{ci} ({s.rank_text})")
        cells.append(row.mean_rank_text)
        body.append(cells)
    tex = _latex_table(header, body, caption, "tab:xscale-leaderboard",
                       "l" + "c" * (len(metrics) + 1))
    (folder / "leaderboard.tex").write_text(tex, encoding="utf-8")
    return TableFile("leaderboard", caption)


def write_metric_table(
    run: RunData, metric: str, by: str, folder: Path
) -> TableFile | None:
    """Median with 95% CI of one metric per model, with one column per region
    (``by="region"``, case = all) or per case (``by="case"``, region = all).
    Writes ``<by>_<metric>.csv/.tex``; None when there are no such rows."""
    scores = run.scores
    if by == "region":
        rows = scores[(scores["case"] == ALL) & (scores["metric"] == metric)]
        keys = [r for r in pd.unique(rows["region"])]
        keys = ([ALL] if ALL in keys else []) + [k for k in keys if k != ALL]
        where = "case = all"
    elif by == "case":
        rows = scores[(scores["region"] == ALL) & (scores["metric"] == metric)]
        keys = [c for c in pd.unique(rows["case"]) if c != ALL]
        where = "region = all"
    else:
        raise ValueError(f"by {by!r} is invalid; use 'region' or 'case'")
    rows = rows[rows["statistic"] == "median"]
    if rows.empty or not keys:
        return None
    caption = (
        f"{latex_escape(_metric_phrase(run, metric))}: median with bootstrap 95\\% CI per "
        f"model and {by} ({where})."
    )
    lookup = {(r.model, getattr(r, by)): (r.value, r.ci_low, r.ci_high)
              for r in rows.itertuples(index=False)}
    nan3 = (math.nan, math.nan, math.nan)
    records = []
    body = []
    for model in run.models:
        rec: dict[str, object] = {"model": model.label, "display_name": model.display_name}
        cells = [latex_escape(model.display_name)]
        for key in keys:
            value, lo, hi = lookup.get((model.label, key), nan3)
            rec.update({f"{key}_median": value, f"{key}_ci_low": lo, f"{key}_ci_high": hi})
            ci = format_ci(lo, hi)
            cells.append(format_number(value) + (f" {ci}" if ci else ""))
        records.append(rec)
        body.append(cells)
    stem = f"{by}_{metric}"
    _write_csv(pd.DataFrame(records), folder / f"{stem}.csv")
    header = ["Model"] + [latex_escape(k) for k in keys]
    tex = _latex_table(header, body, caption, f"tab:xscale-{by}-{metric}".replace("_", "-"),
                       "l" + "c" * len(keys))
    (folder / f"{stem}.tex").write_text(tex, encoding="utf-8")
    return TableFile(stem, caption)


def write_crossscale_table(run: RunData, folder: Path) -> TableFile | None:
    """crossscale.csv/.tex: median with 95% CI per microscopy level pair and metric
    (case = all); None when the run has no crossscale.csv."""
    table = run.crossscale()
    if table is None:
        return None
    rows = table[(table["case"] == ALL) & (table["statistic"] == "median")]
    if rows.empty:
        return None
    metrics = list(pd.unique(rows["metric"]))
    pairs = list(dict.fromkeys(zip(rows["source_a"], rows["source_b"], strict=True)))
    lookup = {(r.source_a, r.source_b, r.metric): (r.value, r.ci_low, r.ci_high)
              for r in rows.itertuples(index=False)}
    nan3 = (math.nan, math.nan, math.nan)
    records, body = [], []
    for a, b in pairs:
        rec: dict[str, object] = {"source_a": a, "source_b": b}
        cells = [latex_escape(a), latex_escape(b)]
        for m in metrics:
            value, lo, hi = lookup.get((a, b, m), nan3)
            rec.update({f"{m}_median": value, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
            ci = format_ci(lo, hi)
            cells.append(format_number(value) + (f" {ci}" if ci else ""))
        records.append(rec)
        body.append(cells)
    caption = ("Cross-scale agreement of microscopy levels on the dMRI grid (case = all): "
               "median with bootstrap 95\\% CI over fibre voxels covered by both levels of "
               + ", ".join(latex_escape(m) for m in metrics) + ".")
    _write_csv(pd.DataFrame(records), folder / "crossscale.csv")
    header = ["Level A", "Level B"] + [latex_escape(m) for m in metrics]
    (folder / "crossscale.tex").write_text(
        _latex_table(header, body, caption, "tab:xscale-crossscale",
                     "ll" + "c" * len(metrics)), encoding="utf-8")
    return TableFile("crossscale", caption)
