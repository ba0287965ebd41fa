"""``build_report``: a run directory in, ``report/`` out (index.html, figures/, tables/).

The report is rebuilt from the run directory's files alone: the same files give a
byte-identical index.html and byte-identical figure and table files.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import SCHEMA_VERSION, ReportError
from reports import figures as F
from reports.rundir import ALL, RunData, load_run_dir
from reports.tables import (
    TableFile,
    format_ci,
    format_number,
    leaderboard,
    write_crossscale_table,
    write_leaderboard,
    write_metric_table,
)

log = logging.getLogger(__name__)

#: metrics plotted against case conditions, when the run has them
SWEEP_METRICS = ("peak_angular_error_deg", "peak_f1")
#: per-voxel metrics whose distributions are shown, when voxels.csv.gz has them
DISTRIBUTION_METRICS = ("acc", "jsd")


@dataclass(frozen=True)
class _Figure:
    stem: str
    title: str
    caption: str
    data_uri: str


def _template_env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    return env


def _css() -> str:
    return (Path(__file__).parent / "templates" / "style.css").read_text(encoding="utf-8")


def _figure(fig: Any, folder: Path, stem: str, title: str, caption: str) -> _Figure:
    png = F.save_figure(fig, folder, stem)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return _Figure(stem, title, caption, uri)


def _safe_stem(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(text))
    return keep.strip("-") or "case"


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_number(value)  # numpy floats too; NaN -> "n/a"
    return str(value)


#: at most this many rows of cases.csv / tractography.csv are shown in index.html
TABLE_ROWS = 500


def _frame_rows(frame: pd.DataFrame, limit: int = TABLE_ROWS) -> tuple[list[str], list[list[str]]]:
    cols = [str(c) for c in frame.columns]
    rows = [[_cell(v) for v in rec] for rec in frame.head(limit).itertuples(index=False)]
    return cols, rows


def _load_npz(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable .npz file ({exc})") from exc


def _build_figures(run: RunData, folder: Path, main: list[str]) -> dict[str, list[_Figure]]:
    groups: dict[str, list[_Figure]] = {
        "summary": [], "conditions": [], "distributions": [], "glyphs": [], "dec": [],
        "tracts": [],
    }
    fig = F.main_scores_figure(run, main)
    if fig is not None:
        groups["summary"].append(_figure(
            fig, folder, "main_scores", "Main scores",
            "Median over all cases and voxels (case = all, region = all) of each main metric "
            "per model, with its bootstrap 95% CI as a bar.",
        ))

    sweep_metrics = [m for m in SWEEP_METRICS if m in set(run.scores["metric"])] or main[:2]
    for condition in F.sweep_conditions(run.cases):
        made = F.sweep_figure(run, condition, sweep_metrics)
        if made is None:
            continue
        fig, fixed, left_out = made
        held = "; ".join(f"{k} = {v}" for k, v in fixed.items())
        caption = (
            f"{', '.join(sweep_metrics)} against {condition}: median over each case's voxels "
            "(region = all) per model, band = bootstrap 95% CI."
            + (f" Other conditions held at {held}." if held else "")
            + (f" Left out (non-finite {condition}): {', '.join(left_out)}." if left_out else "")
        )
        groups["conditions"].append(_figure(
            fig, folder, f"sweep_{_safe_stem(condition)}",
            F.CONDITION_LABELS.get(condition, condition).replace("$^2$", "\u00b2"), caption,
        ))

    voxels = run.voxels()
    if voxels is not None:
        fig = F.distribution_figure(run, voxels, DISTRIBUTION_METRICS)
        if fig is not None:
            present = [m for m in DISTRIBUTION_METRICS if m in voxels.columns]
            groups["distributions"].append(_figure(
                fig, folder, "distributions",
                "Per-voxel distributions",
                f"Distribution of per-voxel {' and '.join(present)} per model over all cases "
                "and regions (box: interquartile range, line: median, whiskers: 1.5 IQR; "
                "undefined voxels left out).",
            ))

    for case, path in run.report_data("glyphs").items():
        with _load_npz(path) as data:
            fig = F.glyph_figure(run, data)
        if fig is not None:
            groups["glyphs"].append(_figure(
                fig, folder, f"glyphs_{_safe_stem(case)}", f"ODF glyphs, case {case}",
                f"Case {case}: ODF glyphs in chosen voxels (rows, voxel indices i, j, k) for "
                "the ground truth, the microscopy FOD and each model; radius scaled to each "
                "glyph's maximum, colour = direction (|x|, |y|, |z|), seen along axis k.",
            ))
    for case, path in run.report_data("dec").items():
        with _load_npz(path) as data:
            fig = F.dec_figure(run, data)
            axis = int(data["slice_axis"]) if "slice_axis" in data else None
            index = int(data["slice_index"]) if "slice_index" in data else None
        if fig is not None:
            where = f"slice {index} along array axis {axis}" if axis is not None else "one slice"
            groups["dec"].append(_figure(
                fig, folder, f"dec_{_safe_stem(case)}", f"Direction-encoded colour, case {case}",
                f"Case {case}, {where}: direction-encoded colour maps (red, green, blue = "
                "|x|, |y|, |z| of the main orientation) of each source side by side.",
            ))
    for case, path in run.report_data("tracts").items():
        with _load_npz(path) as data:
            fig = F.tract_figure(run, data)
            axis = int(data["projection_axis"]) if "projection_axis" in data else None
        if fig is not None:
            along = f" along array axis {axis}" if axis is not None else ""
            groups["tracts"].append(_figure(
                fig, folder, f"tracts_{_safe_stem(case)}", f"Tractography, case {case}",
                f"Case {case}: streamline density of each model projected{along} (colour, "
                "scaled to its maximum) over the projected ground-truth bundles (grey, "
                "outlined).",
            ))
    return groups


def _tables(run: RunData, folder: Path, main: list[str]) -> tuple[list[TableFile], Any]:
    rows = leaderboard(run, main)
    files = [write_leaderboard(run, rows, main, folder)]
    crossscale = write_crossscale_table(run, folder)
    if crossscale is not None:
        files.append(crossscale)
    for metric in main:
        for by in ("region", "case"):
            table = write_metric_table(run, metric, by, folder)
            if table is not None:
                files.append(table)
    return files, rows


def _region_table(run: RunData, main: list[str]) -> dict[str, Any]:
    """Median with CI of each main metric per model and region (case = all)."""
    rows = run.scores[(run.scores["case"] == ALL) & (run.scores["statistic"] == "median")
                      & (run.scores["metric"].isin(main))]
    found = list(pd.unique(rows["region"]))
    regions = ([ALL] if ALL in found else []) + [r for r in found if r != ALL]
    lookup = {(r.model, r.metric, r.region): (r.value, r.ci_low, r.ci_high)
              for r in rows.itertuples(index=False)}
    body = []
    for model in run.models:
        cells = []
        for metric in main:
            for region in regions:
                value, lo, hi = lookup.get((model.label, metric, region),
                                           (math.nan, math.nan, math.nan))
                cells.append((format_number(value), format_ci(lo, hi)))
        body.append({"display_name": model.display_name, "label": model.label,
                     "cells": cells})
    return {"regions": regions, "rows": body}


#: metrics of crossscale.csv, in display order
CROSSSCALE_METRICS = ("acc", "peak_angular_error_deg", "jsd")


def _crossscale_section(run: RunData) -> dict[str, Any] | None:
    """Median [CI] and n per (case, level pair) and metric from crossscale.csv."""
    table = run.crossscale()
    if table is None:
        return None
    metrics = [m for m in CROSSSCALE_METRICS if m in set(table["metric"])]
    metrics += [m for m in pd.unique(table["metric"]) if m not in metrics]
    lookup = {(r.case, r.source_a, r.source_b, r.metric, r.statistic): (r.value, r.ci_low,
                                                                         r.ci_high)
              for r in table.itertuples(index=False)}
    keys = list(dict.fromkeys(zip(table["case"], table["source_a"], table["source_b"],
                                  strict=True)))
    keys.sort(key=lambda k: (k[0] != ALL, k[0]))  # case = all first
    nan3 = (math.nan, math.nan, math.nan)
    rows = []
    for case, a, b in keys:
        cells = []
        n = math.nan
        for metric in metrics:
            value, lo, hi = lookup.get((case, a, b, metric, "median"), nan3)
            cells.append((format_number(value), format_ci(lo, hi)))
            n = lookup.get((case, a, b, metric, "n"), nan3)[0] if not math.isfinite(n) else n
        rows.append({"case": case, "source_a": a, "source_b": b, "cells": cells,
                     "n": format_number(n)})
    return {"metrics": metrics, "rows": rows}


def _significant(value: float) -> str:
    """3 significant digits, also for small spreads and errors ("n/a" for NaN)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if float(value).is_integer():
        return format_number(value)
    return f"{value:.3g}"


def _registration_section(run: RunData) -> dict[str, Any] | None:
    """Spread of each score under registration perturbations, and landmark errors."""
    table = run.registration()
    if table is None:
        return None
    spread_rows = table[(table["model"] != "landmarks") & (table["case"] == ALL)]
    lookup = {(r.model, r.metric, r.statistic): r.value
              for r in spread_rows.itertuples(index=False)}
    spread = []
    for model in list(dict.fromkeys(spread_rows["model"])):
        for metric in list(dict.fromkeys(spread_rows[spread_rows["model"] == model]["metric"])):
            get = {st: lookup.get((model, metric, st), math.nan)
                   for st in ("score", "perturbed_median", "std", "min", "max", "range", "n")}
            spread.append({"model": run.display_name(model), "metric": metric,
                           **{k: _significant(v) for k, v in get.items()}})
    lm = table[table["model"] == "landmarks"]
    landmarks = [{"case": r.case, "level": r.level,
                  "metric": str(r.metric).removeprefix("landmark_"),
                  "value": _significant(r.value)} for r in lm.itertuples(index=False)]
    settings = run.provenance.get("registration") or run.config.get("registration") or {}
    return {"spread": spread, "landmarks": landmarks,
            "settings": {str(k): str(v) for k, v in dict(settings).items()}}


def registration_spread_text(run: RunData) -> dict[tuple[str, str], str]:
    """``{(model label, metric): "± std"}`` of the case = all spread rows (leaderboard)."""
    table = run.registration()
    if table is None:
        return {}
    rows = table[(table["case"] == ALL) & (table["statistic"] == "std")
                 & (table["model"] != "landmarks")]
    return {(r.model, r.metric): "\u00b1 " + _significant(r.value)
            for r in rows.itertuples(index=False) if math.isfinite(r.value)}


def _provenance_rows(provenance: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), _json_text(v)) for k, v in provenance.items()]


def _render(run: RunData, groups: dict, tables: list[TableFile], rows: Any,
            main: list[str]) -> str:
    env = _template_env()
    cases_cols: list[str] = []
    cases_rows: list[list[str]] = []
    if run.cases is not None:
        cases_cols, cases_rows = _frame_rows(run.cases)
    tract = run.tractography()
    tract_cols, tract_rows = _frame_rows(tract) if tract is not None else ([], [])
    best = {}
    for metric in main:
        winners = [r.display_name for r in rows if r.scores[metric].rank == 1.0]
        best[metric] = winners
    run_name = str(run.config.get("run", {}).get("name") or run.path.name)
    n_cases = (
        len(run.cases) if run.cases is not None
        else len([c for c in pd.unique(run.scores["case"]) if c != ALL])
    )
    tasks = [
        {
            "metric": metric,
            "main": bool(task.get("main")),
            "direction": "higher" if task.get("higher_is_better", True) else "lower",
            "unit": str(task.get("unit") or ""),
            "description": str(task.get("description") or ""),
        }
        for metric, task in run.tasks.items()
    ]
    models = [
        {"label": m.label, "display_name": m.display_name, "name": m.name,
         "params": _json_text(dict(m.params)) if m.params else ""}
        for m in run.models
    ]
    failures = [
        {k: _cell(f.get(k, "")) for k in ("case", "model", "stage", "reason")}
        for f in run.failures
    ]
    for f in failures:
        f["model"] = run.display_name(f["model"]) if f["model"] else ""
    template = env.get_template("report.html")
    return template.render(
        run_name=run_name,
        css=_css(),
        schema_version=SCHEMA_VERSION,
        provenance=run.provenance,
        provenance_rows=_provenance_rows(run.provenance),
        n_cases=n_cases,
        n_models=len(run.models),
        main=main,
        units={m: run.unit(m) for m in main},
        directions={m: ("higher" if run.higher_is_better(m) else "lower") for m in main},
        leaderboard=rows,
        by_region=_region_table(run, main),
        best=best,
        groups=groups,
        tables=tables,
        tasks=tasks,
        models=models,
        failures=failures,
        config_text=run.config_text,
        cases_cols=cases_cols,
        cases_rows=cases_rows,
        tract_cols=tract_cols,
        tract_rows=tract_rows,
        tract_total=0 if tract is None else len(tract),
        crossscale=_crossscale_section(run),
        registration=_registration_section(run),
        spread=registration_spread_text(run),
    )


def build_report(run_dir: str | Path, *, output: str | Path | None = None) -> Path:
    """Write the report of a run directory and return the path of its index.html.

    Reads the run directory only (scores.csv, tasks.json, provenance.json and, when
    present, cases.csv, models.json, failures.json, config.toml, voxels.csv.gz,
    tractography.csv, report_data/); never recomputes a score. Writes
    ``output/index.html`` (self-contained: figures embedded as PNG, no network),
    ``output/figures/`` (PDF, SVG, PNG) and ``output/tables/`` (CSV, LaTeX) into a
    temporary sibling first and renames it into place, so a failure never leaves a
    half-written report. The same run directory gives byte-identical files.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    output : str or Path, optional
        The report folder; default ``run_dir/report`` (replaced when it exists).

    Returns
    -------
    Path
        ``output/index.html``.

    Raises
    ------
    ReportError
        A missing or unreadable required file, or a run of another schema version.
    """
    run = load_run_dir(run_dir)
    out = Path(output) if output is not None else run.path / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        (tmp / "figures").mkdir(parents=True)
        (tmp / "tables").mkdir()
        main = run.main_metrics()
        with F.report_style():
            groups = _build_figures(run, tmp / "figures", main)
        tables, rows = _tables(run, tmp / "tables", main)
        html = _render(run, groups, tables, rows, main)
        (tmp / "index.html").write_text(html, encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    log.debug("report written to %s", out / "index.html")
    return out / "index.html"
