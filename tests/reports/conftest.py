"""A small but realistic run directory, written by the tests themselves.

``write_run(path, ...)`` writes every file of design.md's run directory (except
derivatives/, which only gets a placeholder file) from synthetic per-voxel metrics, with
the statistics (median/mean with bootstrap CIs, IQR, n, n_undefined, rank) computed here
the way docs/internals.md describes ``metrics.score_table``. The lead can compare this
with the real writer (validation/runner.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

XSS = "<script>alert(1)</script>"

TASKS: dict[str, dict[str, Any]] = {
    "peak_angular_error_deg": {
        "main": True,
        "higher_is_better": False,
        "unit": "deg",
        "description": "Mean axial angle between matched true and estimated peaks.",
    },
    "peak_precision": {
        "main": False,
        "higher_is_better": True,
        "unit": "",
        "description": "Matched estimated peaks over all estimated peaks.",
    },
    "peak_recall": {
        "main": False,
        "higher_is_better": True,
        "unit": "",
        "description": "Matched true peaks over all true peaks.",
    },
    "peak_f1": {
        "main": True,
        "higher_is_better": True,
        "unit": "",
        "description": "Harmonic mean of peak precision and recall.",
    },
    "nufo_correct": {
        "main": False,
        "higher_is_better": True,
        "unit": "",
        "description": "1 when the number of fibre populations is right, else 0.",
    },
    "acc": {
        "main": True,
        "higher_is_better": True,
        "unit": "",
        "description": "Angular correlation coefficient of the SH series over orders l >= 2.",
    },
    "jsd": {
        "main": False,
        "higher_is_better": False,
        "unit": "bit",
        "description": "Jensen-Shannon divergence of the normalised ODFs on the sphere.",
    },
}

DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "label": "csd8",
        "name": "csd",
        "display_name": "CSD, order 8",
        "params": {"sh_order_max": 8, "noise_deg": 4.0},
        "capabilities": {"odf": True, "sh": True},
    },
    {
        "label": "csa",
        "name": "csa",
        "display_name": "Q-ball (CSA)",
        "params": {"sh_order_max": 6, "noise_deg": 9.0},
        "capabilities": {"odf": True, "sh": True},
    },
    {
        "label": "xss",
        "name": "mypkg.models:factory",
        "display_name": XSS,
        "params": {"noise_deg": 14.0},
        "capabilities": {"odf": True, "sh": False},
    },
]

DEFAULT_CASES: list[dict[str, Any]] = [
    {"case": "angle-30", "crossing_angle_deg": 30.0, "snr": 30.0, "dispersion_deg": 10.0},
    {"case": "angle-60", "crossing_angle_deg": 60.0, "snr": 30.0, "dispersion_deg": 10.0},
    {"case": "angle-90", "crossing_angle_deg": 90.0, "snr": 30.0, "dispersion_deg": 10.0},
]

N_VOXELS = 40
N_BOOT = 200


def _seed(*parts: object) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


def _voxel_metrics(
    case: Mapping[str, Any], model: Mapping[str, Any], *, seed: int, all_nan: bool
) -> pd.DataFrame:
    """Synthetic per-voxel metrics; one rng per (case, model), so models are independent."""
    rng = np.random.default_rng(_seed(seed, case["case"], model["label"]))
    n = N_VOXELS
    region = np.where(np.arange(n) < n // 2, "single", "crossing")
    crossing = region == "crossing"
    noise = float(model["params"].get("noise_deg", 8.0))
    angle = float(case.get("crossing_angle_deg", 90.0))
    # narrow crossings are harder: errors grow, F1 drops
    difficulty = 1.0 + crossing * (90.0 - angle) / 45.0
    err = np.abs(rng.normal(0.0, noise, n)) * difficulty + rng.uniform(0.5, 1.5, n)
    recall = np.clip(1.0 - 0.02 * err + rng.normal(0.0, 0.03, n), 0.0, 1.0)
    precision = np.clip(1.0 - 0.015 * err + rng.normal(0.0, 0.03, n), 0.0, 1.0)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    err[rng.random(n) < 0.05] = np.nan  # voxels with no matched pair: undefined
    acc = np.clip(0.95 - 0.01 * noise - 0.1 * crossing + rng.normal(0, 0.03, n), -1, 1)
    jsd = np.clip(0.05 + 0.01 * noise + rng.normal(0, 0.02, n), 0, 1)
    nufo = (rng.random(n) > 0.02 * noise * difficulty).astype(float)
    frame = pd.DataFrame(
        {
            "case": case["case"],
            "model": model["label"],
            "i": np.arange(n) % 5,
            "j": (np.arange(n) // 5) % 4,
            "k": np.arange(n) // 20,
            "region": region,
            "peak_angular_error_deg": err,
            "peak_precision": precision,
            "peak_recall": recall,
            "peak_f1": f1,
            "nufo_correct": nufo,
            "acc": acc,
            "jsd": jsd,
        }
    )
    if all_nan:
        for metric in TASKS:
            frame[metric] = np.nan
    return frame


def _stat_rows(values: np.ndarray, rng: np.random.Generator) -> dict[str, tuple]:
    finite = values[np.isfinite(values)]
    nan3 = (np.nan, np.nan, np.nan)
    if finite.size == 0:
        return {
            "median": nan3,
            "mean": nan3,
            "iqr_low": nan3,
            "iqr_high": nan3,
            "n": (0.0, np.nan, np.nan),
            "n_undefined": (float(values.size), np.nan, np.nan),
        }
    boot = rng.choice(finite, size=(N_BOOT, finite.size), replace=True)
    med_ci = np.percentile(np.median(boot, axis=1), [2.5, 97.5])
    mean_ci = np.percentile(np.mean(boot, axis=1), [2.5, 97.5])
    return {
        "median": (float(np.median(finite)), float(med_ci[0]), float(med_ci[1])),
        "mean": (float(np.mean(finite)), float(mean_ci[0]), float(mean_ci[1])),
        "iqr_low": (float(np.percentile(finite, 25)), np.nan, np.nan),
        "iqr_high": (float(np.percentile(finite, 75)), np.nan, np.nan),
        "n": (float(finite.size), np.nan, np.nan),
        "n_undefined": (float(values.size - finite.size), np.nan, np.nan),
    }


def score_table(voxels: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """scores.csv from per-voxel metrics, as metrics.score_table documents it."""
    rows = []
    cases = [*pd.unique(voxels["case"]), "all"]
    for case in cases:
        vc = voxels if case == "all" else voxels[voxels["case"] == case]
        for region in ["all", *sorted(pd.unique(vc["region"]))]:
            vr = vc if region == "all" else vc[vc["region"] == region]
            for metric, task in TASKS.items():
                medians = {}
                for model in pd.unique(voxels["model"]):
                    values = vr.loc[vr["model"] == model, metric].to_numpy(float)
                    rng = np.random.default_rng(_seed(seed, case, region, model, metric))
                    stats = _stat_rows(values, rng)
                    medians[model] = stats["median"][0]
                    for stat, (value, lo, hi) in stats.items():
                        rows.append((case, region, model, metric, stat, value, lo, hi))
                finite = {m: v for m, v in medians.items() if np.isfinite(v)}
                ordered = sorted(finite, key=lambda m: finite[m], reverse=task["higher_is_better"])
                for model in medians:
                    rank = float(ordered.index(model) + 1) if model in finite else np.nan
                    rows.append((case, region, model, metric, "rank", rank, np.nan, np.nan))
    return pd.DataFrame(
        rows,
        columns=["case", "region", "model", "metric", "statistic", "value", "ci_low", "ci_high"],
    )


def _odf(vertices: np.ndarray, dirs: Sequence[np.ndarray], kappa: float) -> np.ndarray:
    odf = np.zeros(len(vertices))
    for d in dirs:
        odf += np.exp(kappa * ((vertices @ d) ** 2 - 1.0))
    return odf


def _unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def _write_report_data(path: Path, cases: list[dict], models: list[dict], seed: int) -> None:
    from dipy.data import get_sphere

    sphere = get_sphere(name="repulsion100")
    folder = path / "report_data"
    folder.mkdir()
    for case in cases:
        angle = float(case.get("crossing_angle_deg", 90.0))
        truth_dirs = [_unit(0.0), _unit(angle)]
        arrays: dict[str, np.ndarray] = {
            "sphere_vertices": sphere.vertices.astype(np.float64),
            "sphere_faces": sphere.faces.astype(np.int32),
            "voxels": np.array([[2, 1, 0], [3, 2, 1]], dtype=np.int32),
            "odf_truth": np.stack([_odf(sphere.vertices, truth_dirs, 30.0)] * 2),
            "odf_microscopy": np.stack([_odf(sphere.vertices, truth_dirs, 12.0)] * 2),
        }
        for model in models:
            rng = np.random.default_rng(_seed(seed, case["case"], model["label"], "glyph"))
            tilt = rng.normal(0.0, float(model["params"].get("noise_deg", 8.0)), 2)
            dirs = [_unit(tilt[0]), _unit(angle + tilt[1])]
            arrays[f"odf_{model['label']}"] = np.stack([_odf(sphere.vertices, dirs, 6.0)] * 2)
        np.savez(folder / f"glyphs_{case['case']}.npz", **arrays)

        rng = np.random.default_rng(_seed(seed, case["case"], "dec"))
        base = rng.random((10, 12, 3))
        dec = {
            "slice_axis": np.int64(2),
            "slice_index": np.int64(1),
            "dec_microscopy": base,
            "dec_truth": np.clip(base + 0.05, 0, 1),
        }
        for model in models[:2]:
            dec[f"dec_{model['label']}"] = np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1)
        np.savez(folder / f"dec_{case['case']}.npz", **dec)


def _write_tracts(path: Path, cases: list[dict], models: list[dict], seed: int) -> None:
    """report_data/tracts_<case>.npz: projected truth bundles and streamline densities."""
    a, b = np.mgrid[0:16, 0:12]
    for case in cases:
        arrays: dict[str, np.ndarray] = {
            "projection_axis": np.int64(2),
            "truth_bundle_a": (np.abs(b - 6) <= 1).astype(np.float64),
            "truth_bundle_b": (np.abs(a - 8) <= 1).astype(np.float64),
        }
        for model in models:
            rng = np.random.default_rng(_seed(seed, case["case"], model["label"], "tracts"))
            arrays[f"density_{model['label']}"] = rng.poisson(
                3.0, size=(16, 12)) * (arrays["truth_bundle_a"] + arrays["truth_bundle_b"] > 0)
        np.savez(path / "report_data" / f"tracts_{case['case']}.npz", **arrays)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_run(
    path: str | Path,
    *,
    models: list[dict[str, Any]] | None = None,
    cases: list[dict[str, Any]] | None = None,
    seed: int = 0,
    schema_version: Any = 1,
    all_nan_models: Sequence[str] = (),
    failures: list[dict[str, Any]] | None = None,
    with_voxels: bool = True,
    with_report_data: bool = True,
    with_tractography: bool = False,
    gates: Mapping[str, str] | None = None,
) -> Path:
    """Write a run directory at ``path`` (created) and return it."""
    path = Path(path)
    path.mkdir(parents=True)
    models = [dict(m) for m in (models if models is not None else DEFAULT_MODELS)]
    cases = [dict(c) for c in (cases if cases is not None else DEFAULT_CASES)]
    if failures is None:
        failures = [
            {
                "case": cases[0]["case"],
                "model": models[-1]["label"],
                "stage": "fit",
                "reason": "TimeoutError: fit exceeded timeout_s = 600 s & <b>was stopped</b>",
            }
        ]

    voxels = pd.concat(
        [
            _voxel_metrics(c, m, seed=seed, all_nan=m["label"] in all_nan_models)
            for c in cases
            for m in models
        ],
        ignore_index=True,
    )
    scores = score_table(voxels, seed=seed)
    scores.to_csv(path / "scores.csv", index=False)
    if with_voxels:
        voxels.to_csv(path / "voxels.csv.gz", index=False)
    pd.DataFrame(cases).to_csv(path / "cases.csv", index=False)
    (path / "tasks.json").write_text(json.dumps(TASKS, indent=2))
    (path / "models.json").write_text(json.dumps(models, indent=2))
    (path / "failures.json").write_text(json.dumps(failures, indent=2))
    provenance = {
        "schema_version": schema_version,
        "xscale_version": "0.1.0",
        "versions": {"python": "3.11.2", "numpy": np.__version__, "dipy": "1.9.0"},
        "git_commit": "4af6772",
        "seeds": {"run": seed},
        "timings": {"total_s": 12.5},
        "machine": {"hostname": "ci-runner", "cpus": 2},
        "input_hashes": {"suite": "sha256:0123abcd"},
        "started": "2026-11-25T16:00:00Z",
        "finished": "2026-11-25T16:00:12Z",
    }
    (path / "provenance.json").write_text(json.dumps(provenance, indent=2))

    lines = ["[run]", 'name = "crossings"', f"seed = {seed}", "", "[data]"]
    lines += ['suite = "crossing-angle"', ""]
    for m in models:
        lines += ["[[models]]", f"name = {_toml_value(m['name'])}"]
        lines += [f"label = {_toml_value(m['label'])}"]
        lines += [f"display_name = {_toml_value(m['display_name'])}"]
        lines += [f"params = {_toml_value(m['params'])}", "timeout_s = 600", ""]
    lines += ["[metrics]", "threshold_deg = 25.0", ""]
    if gates:
        lines += ["[gates]"] + [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in gates.items()]
    (path / "config.toml").write_text("\n".join(lines) + "\n")
    (path / "run.log").write_text("run started\nrun finished\n")

    if with_report_data:
        _write_report_data(path, cases, models, seed)
    if with_tractography:
        rows = [
            {
                "case": c["case"],
                "model": m["label"],
                "bundle": b,
                "vs": 0.8,
                "ol": 0.7,
                "or_gt": 0.1,
                "or_vs": 0.12,
                "f1": 0.75,
            }
            for c in cases
            for m in models
            for b in ("bundle_a", "bundle_b")
        ]
        pd.DataFrame(rows).to_csv(path / "tractography.csv", index=False)
        if with_report_data:
            _write_tracts(path, cases, models, seed)
    derivatives = path / "derivatives"
    derivatives.mkdir()
    (derivatives / "README").write_text("fODFs and peaks would be here\n")
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A complete run directory: 3 cases, 3 models (one named like an XSS payload)."""
    return write_run(tmp_path / "run")


@pytest.fixture
def make_run(tmp_path: Path):
    """Factory: ``make_run(name, **kwargs)`` writes a run directory under tmp_path."""

    def _make(name: str = "run", **kwargs: Any) -> Path:
        return write_run(tmp_path / name, **kwargs)

    return _make


@pytest.fixture(scope="session")
def built_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html of the default run, built once per session (tests must not modify it)."""
    from reports import build_report

    run = write_run(tmp_path_factory.mktemp("built") / "run", with_tractography=True)
    return build_report(run)


@pytest.fixture
def default_models() -> list[dict[str, Any]]:
    """A deep copy of the fixture's models (label, name, display_name, params, ...)."""
    return json.loads(json.dumps(DEFAULT_MODELS))


@pytest.fixture
def xss() -> str:
    """The display name of the third model."""
    return XSS
