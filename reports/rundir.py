"""Reading a run directory (design.md, "The run directory") into tables, without
recomputing anything. Required: ``provenance.json`` (schema version), ``scores.csv`` and
``tasks.json``; everything else is optional and read when present."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import SCHEMA_VERSION, ReportError

#: columns scores.csv must have (design.md)
SCORE_COLUMNS = ("case", "region", "model", "metric", "statistic", "value", "ci_low", "ci_high")
#: the statistics a score row may carry
STATISTICS = ("median", "mean", "iqr_low", "iqr_high", "n", "n_undefined", "rank")
#: the aggregate case and region labels
ALL = "all"


@dataclass(frozen=True)
class ModelInfo:
    """One model of a run, as recorded in ``models.json``.

    Attributes
    ----------
    label : str
        File label (slug), the value of the ``model`` column of scores.csv.
    display_name : str
        Free text shown to people; escaped wherever it is rendered.
    name : str
        Registry name or dotted path.
    params : dict
        Hyper-parameters.
    reference : bool
        True for a reference source that is not a dMRI model (the microscopy FOD).
    """

    label: str
    display_name: str
    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    reference: bool = False


@dataclass
class RunData:
    """The files of one run directory, read and checked.

    Attributes
    ----------
    path : Path
        The run directory.
    scores : pandas.DataFrame
        scores.csv: case, region, model, metric, statistic, value, ci_low, ci_high
        (strings for the first five columns, float for the others).
    tasks : dict
        tasks.json: ``{metric: {"main", "higher_is_better", "unit", "description"}}``.
    provenance : dict
        provenance.json.
    models : list of ModelInfo
        From models.json; models seen only in scores.csv are appended with their label
        as display name.
    cases : pandas.DataFrame or None
        cases.csv (case, then one column per condition).
    failures : list of dict
        failures.json (``case``, ``model``, ``stage``, ``reason``); empty when absent.
    config_text : str or None
        config.toml as written by the run.
    config : dict
        config.toml parsed (empty when absent).
    """

    path: Path
    scores: pd.DataFrame
    tasks: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    models: list[ModelInfo]
    cases: pd.DataFrame | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Model labels in run order."""
        return [m.label for m in self.models]

    def display_name(self, label: str) -> str:
        """The display name of the model with file label ``label``."""
        for m in self.models:
            if m.label == label:
                return m.display_name
        return label

    def main_metrics(self) -> list[str]:
        """Metrics marked ``main`` in tasks.json that have scores, in tasks.json order."""
        present = set(self.scores["metric"])
        return [m for m, t in self.tasks.items() if t.get("main") and m in present]

    def higher_is_better(self, metric: str) -> bool:
        """Direction of ``metric`` from tasks.json (True when absent from tasks.json)."""
        return bool(self.tasks.get(metric, {}).get("higher_is_better", True))

    def unit(self, metric: str) -> str:
        """Unit of ``metric`` from tasks.json ("" when none or dimensionless, "1")."""
        unit = str(self.tasks.get(metric, {}).get("unit", "") or "")
        return "" if unit.strip() == "1" else unit

    def voxels(self) -> pd.DataFrame | None:
        """voxels.csv.gz (or voxels.parquet), or None when the run has none."""
        csv = self.path / "voxels.csv.gz"
        if csv.is_file():
            try:
                return _read_csv(csv, dtype={"case": str, "model": str, "region": str})
            except ReportError:
                raise
            except (OSError, EOFError) as exc:  # a truncated gzip stream
                raise ReportError(f"{csv}: not a readable gzip CSV ({exc})") from exc
        parquet = self.path / "voxels.parquet"
        if parquet.is_file():
            try:
                return pd.read_parquet(parquet)
            except ImportError:  # no parquet engine here: figures that need it are left out
                return None
        return None

    def tractography(self) -> pd.DataFrame | None:
        """tractography.csv, or None when the run has none."""
        path = self.path / "tractography.csv"
        if not path.is_file() or not path.read_bytes().strip():
            return None  # runs without tractography may write an empty file
        table = _read_csv(path, dtype={"case": str, "model": str, "bundle": str})
        return table if len(table) else None

    def crossscale(self) -> pd.DataFrame | None:
        """crossscale.csv (microscopy level pairs compared on the dMRI grid), or None.

        Columns case, source_a, source_b, metric, statistic, value, ci_low, ci_high.
        """
        return self._optional_table("crossscale.csv", {"case": str, "source_a": str,
                                                       "source_b": str, "metric": str,
                                                       "statistic": str})

    def registration(self) -> pd.DataFrame | None:
        """registration.csv (registration-uncertainty spread, landmark errors), or None.

        Columns case, level, model, metric, statistic, value.
        """
        return self._optional_table("registration.csv", {"case": str, "level": str,
                                                         "model": str, "metric": str,
                                                         "statistic": str})

    def _optional_table(self, name: str, dtype: dict[str, Any]) -> pd.DataFrame | None:
        path = self.path / name
        if not path.is_file() or not path.read_bytes().strip():
            return None  # runs of older versions, or without the feature, have none
        table = _read_csv(path, dtype=dtype)
        missing = [c for c in dtype if c not in table.columns]
        if missing:
            raise ReportError(f"{path}: lacks the column(s) {', '.join(missing)}")
        return table if len(table) else None

    def report_data(self, kind: str) -> dict[str, Path]:
        """``report_data/<kind>_<case>.npz`` files as ``{case: path}``, sorted by case."""
        folder = self.path / "report_data"
        if not folder.is_dir():
            return {}
        prefix = f"{kind}_"
        found = {
            p.name[len(prefix) : -len(".npz")]: p
            for p in folder.glob(f"{prefix}*.npz")
            if p.is_file()
        }
        return dict(sorted(found.items()))


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True, **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise ReportError(f"{path}: empty file, expected a CSV table with a header") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not a readable CSV table ({exc})") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def check_schema(provenance: Mapping[str, Any], path: Path) -> None:
    """Raise ReportError unless ``provenance["schema_version"]`` equals SCHEMA_VERSION."""
    version = provenance.get("schema_version")
    if version is None:
        raise ReportError(f"{path}: no schema_version in provenance.json")
    try:
        same = int(version) == SCHEMA_VERSION and float(version) == float(SCHEMA_VERSION)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ReportError(
            f"{path}: run has schema version {version!r}; this xscale reads schema version "
            f"{SCHEMA_VERSION} only (re-run the benchmark with this version)"
        )


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read and check a scores.csv file.

    Parameters
    ----------
    path : str or Path
        The scores.csv file.

    Returns
    -------
    pandas.DataFrame
        Columns ``SCORE_COLUMNS``; case, region, model, metric and statistic as str,
        value, ci_low and ci_high as float64 (NaN = undefined).
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: scores.csv not found")
    text_cols = {c: str for c in SCORE_COLUMNS[:5]}
    scores = _read_csv(path, dtype=text_cols, na_filter=True)
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ReportError(f"{path}: scores.csv lacks columns {', '.join(missing)}")
    for col in SCORE_COLUMNS[5:]:
        try:
            scores[col] = pd.to_numeric(scores[col], errors="raise").astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise ReportError(f"{path}: column {col!r} of scores.csv is not numeric") from exc
    for col in SCORE_COLUMNS[:5]:
        scores[col] = scores[col].fillna("").astype(str)
    return scores


def load_run_dir(run_dir: str | Path) -> RunData:
    """Read a run directory for reporting.

    Parameters
    ----------
    run_dir : str or Path
        A run directory written by ``xscale run``.

    Returns
    -------
    RunData

    Raises
    ------
    ReportError
        When the directory or a required file is missing or unreadable, or the run has
        another schema version.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run directory (no such directory)")
    prov_path = path / "provenance.json"
    if not prov_path.is_file():
        raise ReportError(f"{path}: not a run directory (no provenance.json)")
    provenance = _read_json(prov_path)
    if not isinstance(provenance, dict):
        raise ReportError(f"{prov_path}: expected a JSON object")
    check_schema(provenance, path)

    scores = read_scores(path / "scores.csv")

    tasks_path = path / "tasks.json"
    if not tasks_path.is_file():
        raise ReportError(f"{path}: tasks.json not found")
    tasks = _read_json(tasks_path)
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise ReportError(f"{tasks_path}: expected {{metric: {{main, higher_is_better, ...}}}}")

    models = _read_models(path, scores)

    cases = None
    if (path / "cases.csv").is_file():
        cases = _read_csv(path / "cases.csv", dtype={"case": str})
        if "case" not in cases.columns:
            raise ReportError(f"{path / 'cases.csv'}: no 'case' column")

    failures: list[dict[str, Any]] = []
    if (path / "failures.json").is_file():
        raw = _read_json(path / "failures.json")
        if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
            raise ReportError(f"{path / 'failures.json'}: expected a list of objects")
        failures = raw

    config_text = None
    config: dict[str, Any] = {}
    if (path / "config.toml").is_file():
        config_text = (path / "config.toml").read_text(encoding="utf-8")
        try:
            config = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as exc:
            raise ReportError(f"{path / 'config.toml'}: not valid TOML ({exc})") from exc

    return RunData(
        path=path,
        scores=scores,
        tasks=tasks,
        provenance=provenance,
        models=models,
        cases=cases,
        failures=failures,
        config_text=config_text,
        config=config,
    )


def _read_models(path: Path, scores: pd.DataFrame) -> list[ModelInfo]:
    models: list[ModelInfo] = []
    models_path = path / "models.json"
    if models_path.is_file():
        raw = _read_json(models_path)
        if not isinstance(raw, list):
            raise ReportError(f"{models_path}: expected a list of model objects")
        for entry in raw:
            if not isinstance(entry, dict) or "label" not in entry:
                raise ReportError(f"{models_path}: every model needs a 'label'")
            label = str(entry["label"])
            models.append(
                ModelInfo(
                    label=label,
                    display_name=str(entry.get("display_name") or label),
                    name=str(entry.get("name") or ""),
                    params=dict(entry.get("params") or {}),
                    reference=bool(entry.get("reference", False)),
                )
            )
    known = {m.label for m in models}
    for label in pd.unique(scores["model"]):
        if label not in known:
            models.append(ModelInfo(label=str(label), display_name=str(label)))
            known.add(label)
    return models


def score_lookup(
    scores: pd.DataFrame, *, case: str = ALL, region: str = ALL
) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """Index the rows of one case and region as ``{(model, metric, statistic): (value,
    ci_low, ci_high)}``."""
    rows = scores[(scores["case"] == case) & (scores["region"] == region)]
    return {
        (str(r.model), str(r.metric), str(r.statistic)): (
            float(r.value),
            float(r.ci_low),
            float(r.ci_high),
        )
        for r in rows.itertuples(index=False)
    }


def is_finite(x: float | None) -> bool:
    """True for a finite float."""
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))
