"""The benchmark run: phantoms (or a dataset) in, run directory with scores and report out.

``run(config)`` resolves the config, then for every case: builds the phantom, renders
its microscopy volume and extracts structure-tensor orientations and the microscopy FOD
on the dMRI grid, simulates the dMRI signal, fits every model (failures isolated and
recorded), scores every orientation source against the geometric truth voxel by voxel,
optionally tracks and scores tractograms; then aggregates, writes the run directory
(design.md) and builds the report.

Cases with several microscopy levels also get every pair of levels compared on the dMRI
grid (``crossscale.csv``, :mod:`validation.crossscale`); ``[registration]
perturbations = n`` re-places the microscopy n times and records how far each main
score moves (``registration.csv``, :mod:`validation.uncertainty`), next to the landmark
errors of levels placed by landmarks. Datasets (``[data] manifest``) are loaded and
checked before the run directory is created, so bad input writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from validation import __version__
from validation.cases import CaseData, MicroscopyInput, derive_seed, iter_cases
from validation.config import dumps_config, resolve_config
from validation.crossscale import crossscale_table, crossscale_voxels
from validation.errors import UserError
from validation.progress import Progress
from validation.rundir import SCHEMA_VERSION, RunDirectory, to_jsonable

log = logging.getLogger("xscale")

#: Per-voxel orientation metrics scored for every source (models and microscopy).
VOXEL_METRICS = [
    "peak_angular_error_deg",
    "peak_precision",
    "peak_recall",
    "peak_f1",
    "nufo_correct",
    "acc",
    "jsd",
    "dispersion_error",
]

MICROSCOPY_LABEL = "microscopy"
#: microscopy voxels with a lower structure-tensor anisotropy stop the reference tracking
MICROSCOPY_TRACK_ANISOTROPY = 0.1


@dataclass
class RunResult:
    """The tables of a finished run (``validation.run`` / ``validation.load_run``)."""

    path: Path
    scores: pd.DataFrame
    cases: pd.DataFrame
    voxels: pd.DataFrame
    tractography: pd.DataFrame
    failures: list[dict[str, Any]]
    config: dict[str, Any]
    provenance: dict[str, Any]
    tasks: dict[str, Any] = field(default_factory=dict)
    #: crossscale.csv (empty when the run compared no microscopy levels)
    crossscale: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: registration.csv (empty without perturbations or landmarks)
    registration: pd.DataFrame = field(default_factory=pd.DataFrame)

    def score(self, model: str, metric: str, statistic: str = "median", *, case: str = "all",
              region: str = "all") -> float:
        """One value of scores.csv (NaN when absent)."""
        s = self.scores
        rows = s[(s.model == model) & (s.metric == metric) & (s.statistic == statistic)
                 & (s.case == case) & (s.region == region)]
        return float(rows.value.iloc[0]) if len(rows) else float("nan")


# --------------------------------------------------------------------------------------
# provenance


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_hash() -> str:
    """SHA-256 of XScale's own Python sources (stale results are not compared)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in ("phantoms", "metrics", "validation", "reports"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "xscale": __version__}
    for dist in ("numpy", "scipy", "dipy", "nibabel", "pandas", "dask", "zarr", "numba",
                 "scikit-image", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 3)


# --------------------------------------------------------------------------------------
# scoring


def score_source(
    truth: Any,
    peaks: np.ndarray,
    sh: np.ndarray | None,
    *,
    threshold_deg: float,
    sphere: Any,
) -> dict[str, np.ndarray]:
    """Per-voxel metrics of one orientation source against the truth, in truth.mask voxels.

    Returns a dict of 1-D arrays (one value per voxel of ``truth.mask``, in C order).
    """
    import metrics

    mask = np.asarray(truth.mask, bool)
    ref = np.asarray(truth.peaks)[mask]
    est = np.asarray(peaks, dtype=np.float64)[mask]
    out = dict(metrics.peak_voxel_metrics(ref, est, threshold_deg=threshold_deg))
    n = int(mask.sum())
    if sh is None:
        for name in ("acc", "jsd", "dispersion_error"):
            out[name] = np.full(n, np.nan)
        return out
    sh_true = np.asarray(truth.fod_sh)[mask]
    sh_est = np.asarray(sh, dtype=np.float64)[mask]
    out["acc"] = np.asarray(metrics.acc(sh_true, sh_est), dtype=np.float64)
    basis = _sh_basis_on(sphere, sh_true.shape[-1])
    out["jsd"] = np.asarray(metrics.jsd(sh_true @ basis.T, sh_est @ basis.T, sphere))
    out["dispersion_error"] = np.asarray(metrics.dispersion_error(sh_true, sh_est))
    return out


def _sh_basis_on(sphere: Any, n_coeffs: int) -> np.ndarray:
    from dipy.reconst.shm import calculate_max_order, real_sh_descoteaux

    order = calculate_max_order(n_coeffs)
    basis, _, _ = real_sh_descoteaux(order, sphere.theta, sphere.phi, legacy=False)
    return basis


# --------------------------------------------------------------------------------------
# the run


#: Above this many voxels a microscopy level is processed chunk by chunk (dask), below it
#: in memory (faster for the small phantoms of the built-in suites).
IN_MEMORY_VOXELS = 64 * 2**20


def _microscopy_cache_parts(level: MicroscopyInput, case: CaseData, cfg: dict[str, Any],
                            inputs: Any) -> dict[str, Any]:
    """Everything a microscopy FOD depends on, for its content-hash cache key.

    A phantom level is identified by its case spec and render seed (so a cache hit also
    skips rendering); a level read from disk by the bytes of its volume and mask
    (``inputs()`` reads them).
    """
    import phantoms
    import validation._st_kernels
    import validation.fod
    import validation.orientation
    from validation.cache import hash_array, source_digest

    if "suite_case" in case.source:
        data = {"phantom": case.source, "level": level.name,
                "seed": derive_seed(int(cfg["run"]["seed"]), case.case_id, "microscopy"),
                "phantoms_code": source_digest(phantoms)}
    else:
        volume, mask = inputs()
        data = {"volume": hash_array(volume),
                "mask": None if mask is None else hash_array(mask)}
    return {
        "data": data,
        "spacing_um": [float(s) for s in level.spacing_um],
        "voxel_to_dmri": np.asarray(level.voxel_to_dmri, dtype=np.float64),
        "grid": [list(case.grid_shape), np.asarray(case.grid_affine, dtype=np.float64)],
        "orientation": cfg["orientation"],
        "fod": cfg["fod"],
        "code": source_digest(validation.orientation, validation._st_kernels, validation.fod),
    }


def _microscopy_orientation(level: MicroscopyInput, case: CaseData, cfg: dict[str, Any],
                            jobs: int, timer: _Timer, cache_dir: str | Path | None = None
                            ) -> tuple[Any, dict[str, Any], Any, Any]:
    """Structure-tensor orientations of one microscopy level, projected to the dMRI grid.

    Returns the FOD, a summary for models.json, a function ``affine -> FOD`` that
    projects the same orientations through another voxel -> dMRI affine (registration
    uncertainty) and a function ``() -> (structure tensor, mask)`` (None for chunked
    levels) for the microscopy reference tractogram; the structure tensor is computed
    once, and only when needed.

    With ``cache_dir``, FODs of in-memory levels (up to :data:`IN_MEMORY_VOXELS`) come
    from the content-hash cache when nothing they depend on changed; a hit skips
    rendering, the structure tensor and the projection.
    """
    from validation.cache import cached_arrays
    from validation.fod import MicroscopyFOD, microscopy_fod
    from validation.orientation import structure_tensor_orientation

    ocfg = cfg["orientation"]
    spacing = tuple(float(s) for s in level.spacing_um)
    sigma_um = ocfg["sigma_um"] if ocfg["sigma_um"] is not None else 1.5 * min(spacing)
    rho_um = ocfg["rho_um"] if ocfg["rho_um"] is not None else 4.0 * min(spacing)
    in_memory = int(np.prod(level.volume.shape)) <= IN_MEMORY_VOXELS
    key = f"{case.case_id}/{level.name}"
    state: dict[str, Any] = {}

    def inputs() -> tuple[Any, Any]:
        """The volume and mask, materialised once for in-memory levels."""
        if "volume" not in state:
            volume, mask = level.volume, level.mask
            with timer(f"{key}/render_or_read"):
                if in_memory:
                    volume = np.asarray(volume.compute(num_workers=jobs)
                                        if hasattr(volume, "compute") else volume,
                                        dtype=np.float32)
                    if mask is not None:
                        mask = np.asarray(mask.compute() if hasattr(mask, "compute") else mask,
                                          bool)
            state["volume"], state["mask"] = volume, mask
        return state["volume"], state["mask"]

    def tensor() -> Any:
        volume, _ = inputs()
        if "st" not in state:
            with timer(f"{key}/structure_tensor"):
                state["st"] = structure_tensor_orientation(
                    volume, sigma=sigma_um, rho=rho_um, spacing=spacing,
                    truncate=ocfg["truncate"])
        return state["st"]

    def project(affine: np.ndarray) -> Any:
        st = tensor()
        mask = state["mask"]
        return microscopy_fod(
            st.vectors,
            st.anisotropy,
            microscopy_affine=affine,
            spacing=np.asarray(spacing) / 1000.0,
            grid_shape=case.grid_shape,
            grid_affine=case.grid_affine,
            sh_order_max=cfg["fod"]["sh_order_max"],
            relative_peak_threshold=cfg["fod"]["relative_peak_threshold"],
            min_separation_angle=cfg["fod"]["min_separation_angle"],
            mask=mask,
        )

    def field() -> tuple[Any, Any] | None:
        """The structure tensor and mask at microscopy resolution (in-memory levels)."""
        if not in_memory:
            return None
        return tensor(), state["mask"]

    def compute() -> dict[str, np.ndarray]:
        with timer(f"{key}/microscopy_fod"):
            fod = project(level.voxel_to_dmri)
        return {"sh": fod.sh, "peaks": fod.peaks, "odi": fod.odi, "count": fod.count,
                "weight": fod.weight}

    cached = False
    if cache_dir is not None and in_memory:
        parts = _microscopy_cache_parts(level, case, cfg, inputs)
        arrays, cached = cached_arrays(cache_dir, "microscopy-fod", parts, compute,
                                       meta={"case": case.case_id, "level": level.name})
    else:
        arrays = compute()
    fod = MicroscopyFOD(**arrays, sh_order_max=int(cfg["fod"]["sh_order_max"]))
    info = {"level": level.name, "voxel_size_um": list(spacing), "sigma_um": sigma_um,
            "rho_um": rho_um, "shape": [int(n) for n in level.volume.shape],
            "relative_peak_threshold": cfg["fod"]["relative_peak_threshold"],
            "min_separation_angle": cfg["fod"]["min_separation_angle"]}
    if level.alignment is not None:
        info["landmarks"] = {"transform": level.alignment.kind,
                             **level.alignment.summary()}
    if cached:
        log.info("%s: microscopy FOD from the cache", key)
    return fod, info, project, field


def _write_derivatives(rd: RunDirectory, case_id: str, label: str, grid: Any,
                       peaks: np.ndarray, sh: np.ndarray | None, sh_order_max: int) -> None:
    import nibabel as nib

    base = f"derivatives/sub-{case_id}/dwi/sub-{case_id}_model-{label}"
    affine = np.asarray(grid.affine, dtype=np.float64)
    shape = tuple(peaks.shape[:3])
    if sh is not None:
        from validation.io.sh import XSCALE, sh_sidecar

        img = nib.Nifti1Image(np.asarray(sh, dtype=np.float32), affine)
        nib.save(img, rd.file(f"{base}_param-fod_dwimap.nii.gz"))
        rd.write_json(f"{base}_param-fod_dwimap.json",
                      {"Model": label, **sh_sidecar(XSCALE, sh_order_max)})
    flat = np.asarray(peaks, dtype=np.float32).reshape(shape + (-1,))
    nib.save(nib.Nifti1Image(flat, affine), rd.file(f"{base}_param-peaks_dwimap.nii.gz"))
    rd.write_json(f"{base}_param-peaks_dwimap.json", {
        "Model": label,
        "OrientationEncoding": {"Type": "unit3vector", "EncodingAxis": 3, "Reference": "ijk"},
        "n_peaks": int(peaks.shape[-2]),
    })


def _write_dataset_description(rd: RunDirectory) -> None:
    """BIDS derivative dataset description, so BIDS tools pick up derivatives/."""
    rd.write_json("derivatives/dataset_description.json", {
        "Name": "XScale orientation estimates",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "xscale", "Version": __version__,
                         "Description": "dMRI model fODFs/peaks and microscopy FODs"}],
    })


def _report_data(truth: Any, sources: dict[str, tuple[np.ndarray, np.ndarray | None]],
                 case_id: str, rd: RunDirectory) -> None:
    """Small arrays for the report: glyph ODFs in chosen voxels and DEC slices."""
    from dipy.data import get_sphere

    sphere = get_sphere(name="repulsion100")
    mask = np.asarray(truth.mask, bool)
    nufo = np.asarray(truth.nufo)
    centre = np.array(mask.shape) / 2.0
    coords = np.argwhere(mask)
    chosen: list[np.ndarray] = []
    for want in (2, 1, 3):
        cand = coords[nufo[tuple(coords.T)] == want]
        if len(cand):
            order = np.argsort(np.linalg.norm(cand - centre, axis=1), kind="stable")
            chosen.extend(cand[order[:2]])
    voxels = np.array(chosen[:4], dtype=np.int64).reshape(-1, 3)
    n_coeffs = np.asarray(truth.fod_sh).shape[-1]
    basis = _sh_basis_on(sphere, n_coeffs)
    arrays: dict[str, np.ndarray] = {
        "sphere_vertices": sphere.vertices,
        "sphere_faces": sphere.faces,
        "voxels": voxels,
        "odf_truth": np.asarray(truth.fod_sh)[tuple(voxels.T)] @ basis.T,
    }
    for label, (_, sh) in sources.items():
        if sh is not None:
            arrays[f"odf_{label}"] = np.asarray(sh)[tuple(voxels.T)] @ basis.T
    np.savez_compressed(rd.file(f"report_data/glyphs_{case_id}.npz"), **arrays)  # type: ignore[arg-type]

    axis = 2
    index = int(mask.shape[axis] // 2)
    dec: dict[str, Any] = {"slice_axis": axis, "slice_index": index}

    def _dec(peaks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        first = np.abs(np.take(np.asarray(peaks)[..., 0, :], index, axis=axis))
        if weights is not None:
            first = first * np.clip(np.take(weights, index, axis=axis), 0, 1)[..., None]
        return np.clip(first, 0.0, 1.0).astype(np.float32)

    dec["dec_truth"] = _dec(truth.peaks)
    for label, (peaks, _) in sources.items():
        dec[f"dec_{label}"] = _dec(peaks)
    np.savez_compressed(rd.file(f"report_data/dec_{case_id}.npz"), **dec)


def _truth_from_microscopy(fod: Any, fit_mask: np.ndarray) -> Any:
    """Reference for data without ground truth: the (first) microscopy FOD."""
    from validation.cases import Truth

    peaks = np.asarray(fod.peaks, dtype=np.float64)
    present = np.linalg.norm(peaks, axis=-1) > 0
    nufo = present.sum(-1)
    count = np.asarray(getattr(fod, "count", nufo > 0))
    mask = (nufo > 0) & (count > 0) & fit_mask
    fractions = present / np.maximum(nufo[..., None], 1)
    return Truth(peaks=peaks, fractions=fractions, nufo=nufo, mask=mask,
                 fod_sh=np.asarray(fod.sh, dtype=np.float64))


def _source_label(index: int, level: MicroscopyInput, n_levels: int) -> str:
    from validation.config import slugify

    if n_levels == 1 or index == 0:
        return MICROSCOPY_LABEL
    slug = slugify(level.name) or str(index)
    return slug if slug.startswith(MICROSCOPY_LABEL) else f"{MICROSCOPY_LABEL}{slug}"


def run(
    config: dict[str, Any] | str | Path | None = None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    jobs: int = 1,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    build_report: bool = True,
) -> RunResult:
    """Run a benchmark and write its run directory.

    Parameters
    ----------
    config : dict, path or None
        Run config (design.md); None runs the built-in default benchmark.
    output : path, optional
        Run directory; default ``./xscale-runs/<run name>``.
    overwrite : bool
        Replace an existing run at ``output`` (only once the new run is complete).
    jobs : int
        Processes/threads for model fitting and chunked computation.
    progress : bool
        Show progress bars on stderr.
    cache_dir : path, optional
        Content-hash cache of model fits and microscopy FODs (in-memory levels).
    build_report : bool
        Build ``report/`` at the end (default True).

    Returns
    -------
    RunResult
    """
    from dipy.data import get_sphere

    import metrics
    from validation.models import ModelFailure, ModelSpec, fit_case

    cfg = resolve_config(config)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be at least 1")
    final = Path(output) if output is not None else Path("xscale-runs") / cfg["run"]["name"]
    n_cases, cases_iter = iter_cases(cfg)
    timer = _Timer()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_seed = int(cfg["run"]["seed"])
    threshold = float(cfg["metrics"]["threshold_deg"])
    sh_order_max = int(cfg["fod"]["sh_order_max"])
    sphere = get_sphere(name="repulsion724")
    model_specs = [
        ModelSpec(name=m["name"], label=m["label"], display_name=m["display_name"],
                  params=dict(m["params"]), timeout_s=float(m["timeout_s"]))
        for m in cfg["models"]
    ]

    with RunDirectory(final, overwrite=overwrite) as rd:
        log.info("xscale %s: run '%s', %d cases x %d models", __version__, cfg["run"]["name"],
                 n_cases, len(model_specs))
        rd.write_text("config.toml", dumps_config(cfg))
        voxel_tables: list[pd.DataFrame] = []
        tract_rows: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        case_rows: list[dict[str, Any]] = []
        crossscale_frames: list[pd.DataFrame] = []
        perturbed_tables: list[pd.DataFrame] = []
        registration_rows: list[tuple[Any, ...]] = []
        input_hashes: dict[str, str] = {}
        seeds: dict[str, int] = {}
        micro_info: dict[str, Any] = {}
        reference_sources: dict[str, dict[str, Any]] = {}
        model_meta: dict[str, dict[str, Any]] = {
            m.label: {"label": m.label, "name": m.name, "display_name": m.display_name,
                      "params": m.params, "timeout_s": m.timeout_s}
            for m in model_specs
        }
        bar = Progress(total=n_cases * (3 + len(model_specs)), enabled=progress,
                       desc="xscale run")
        for case_index in range(n_cases):
            bar.set_description("loading case" if cfg["data"]["manifest"] else "phantom")
            with timer(f"case{case_index}/load"):
                case = next(cases_iter)
            case_id = case.case_id
            timer.timings[f"{case_id}/load"] = timer.timings.pop(f"case{case_index}/load")
            for stage in ("phantom", "dmri", "microscopy"):
                seeds[f"{case_id}/{stage}"] = derive_seed(run_seed, case_id, stage)
            case_rows.append({"case": case_id, **case.conditions})
            input_hashes[case_id] = hashlib.sha256(
                json.dumps(case.source, sort_keys=True, default=str).encode()).hexdigest()
            bar.update()

            sources: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
            level_fods: dict[str, Any] = {}
            projections: list[tuple[MicroscopyInput, str, Any]] = []
            reference_field: tuple[MicroscopyInput, Any] | None = None
            truth = case.truth
            for index, level in enumerate(case.microscopy):
                label = _source_label(index, level, len(case.microscopy))
                bar.set_description(f"{case_id}: microscopy {level.name}")
                fod, info, project, field = _microscopy_orientation(
                    level, case, cfg, jobs, timer, cache_dir=cache_dir)
                if index == 0:
                    reference_field = (level, field)
                level_fods[level.name] = fod
                projections.append((level, label, project))
                micro_info.setdefault(label, {})[case_id] = info
                reference_sources[label] = {"label": label, "name": "structure-tensor",
                                            "display_name": f"Microscopy ({level.name})"
                                            if index else "Microscopy (structure tensor)",
                                            "reference": True}
                if truth is None and index == 0:
                    # real data: the first microscopy level is the reference, not a score
                    truth = _truth_from_microscopy(fod, case.fit_mask)
                    continue
                sources[label] = (np.asarray(fod.peaks), np.asarray(fod.sh))
            bar.update()
            if truth is None:
                raise UserError(
                    f"case {case_id}: nothing to score against: the dataset has neither "
                    "[truth] nor a [[microscopy]] level"
                )
            if cfg["crossscale"]["enabled"] and len(level_fods) >= 2:
                with timer(f"{case_id}/crossscale"):
                    crossscale_frames.append(crossscale_voxels(
                        case_id, level_fods, mask=np.asarray(truth.mask, bool),
                        threshold_deg=threshold, sphere=sphere))
            for level, _, _ in projections:
                if level.alignment is not None:
                    for name, value in level.alignment.summary().items():
                        registration_rows.append((case_id, level.name, "landmarks",
                                                  f"landmark_{name}", "value", value))

            for mspec in model_specs:
                bar.set_description(f"{case_id}: {mspec.label}")
                model_seed = derive_seed(run_seed, case_id, mspec.label)
                seeds[f"{case_id}/{mspec.label}"] = model_seed
                try:
                    with timer(f"{case_id}/model-{mspec.label}"):
                        out = fit_case(
                            mspec, case.dwi, case.bvals, case.bvecs, case.fit_mask,
                            truth=truth, sh_order_max=sh_order_max, jobs=jobs,
                            cache_dir=Path(cache_dir) if cache_dir else None, seed=model_seed,
                        )
                except ModelFailure as exc:
                    log.warning("model %s failed on %s (%s): %s", mspec.label, case_id,
                                exc.stage, exc.reason)
                    failures.append({"case": case_id, "model": mspec.label,
                                     "stage": exc.stage, "reason": exc.reason})
                    bar.update()
                    continue
                model_meta[mspec.label]["capabilities"] = to_jsonable(
                    getattr(out.capabilities, "__dict__", {}) or {})
                model_meta[mspec.label]["peak_params"] = to_jsonable(out.peak_params)
                sources[mspec.label] = (np.asarray(out.peaks), out.sh)
                bar.update()

            bar.set_description(f"{case_id}: scoring")
            with timer(f"{case_id}/scoring"):
                mask = np.asarray(truth.mask, bool)
                ijk = np.argwhere(mask)
                nufo = np.asarray(truth.nufo)[mask]
                region = np.where(nufo >= 2, "crossing", "single")
                for label, (peaks, sh) in sources.items():
                    values = score_source(truth, peaks, sh, threshold_deg=threshold,
                                          sphere=sphere)
                    table = pd.DataFrame({
                        "case": case_id, "model": label,
                        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
                        "region": region, "nufo_true": nufo,
                    })
                    for name in VOXEL_METRICS:
                        table[name] = values[name]
                    voxel_tables.append(table)
                    _write_derivatives(rd, case_id, label, case.grid, peaks, sh, sh_order_max)
                _report_data(truth, sources, case_id, rd)
            if int(cfg["registration"]["perturbations"]) > 0 and projections:
                with timer(f"{case_id}/registration"):
                    perturbed_tables.extend(_registration_perturbations(
                        cfg, case, truth, sources, projections, threshold=threshold,
                        sphere=sphere))
            tract_rows.extend(_tractography(
                cfg, case, truth, sources, run_seed, timer, rd,
                reference_field=reference_field if case.truth is None else None))
            bar.update()
        bar.close()

        voxels = pd.concat(voxel_tables, ignore_index=True) if voxel_tables else pd.DataFrame(
            columns=["case", "model", "i", "j", "k", "region", "nufo_true", *VOXEL_METRICS])
        with timer("aggregate"):
            scores = metrics.score_table(
                voxels, metrics=VOXEL_METRICS, n_boot=int(cfg["metrics"]["n_boot"]),
                seed=run_seed,
            )
        tractography = pd.DataFrame(tract_rows)
        cases = pd.DataFrame(case_rows)

        tasks = {name: metrics.TASKS[name] for name in VOXEL_METRICS if name in metrics.TASKS}
        if len(tractography):
            for name in ("vs", "is", "ic", "nc", "vb", "ib", "ol", "or_gt", "or_vs", "f1"):
                if name in metrics.TASKS:
                    tasks[name] = metrics.TASKS[name]
        _write_dataset_description(rd)
        rd.write_csv("scores.csv", scores)
        rd.write_csv("cases.csv", cases)
        rd.write_csv("voxels.csv.gz", voxels)
        rd.write_csv("tractography.csv", tractography)
        rd.write_json("tasks.json", tasks)
        if crossscale_frames:
            cs_voxels = pd.concat(crossscale_frames, ignore_index=True)
            rd.write_csv("crossscale.csv", crossscale_table(
                cs_voxels, n_boot=int(cfg["metrics"]["n_boot"]), seed=run_seed))
        if perturbed_tables or registration_rows:
            from validation.uncertainty import REGISTRATION_COLUMNS, registration_spread

            main = [m for m in VOXEL_METRICS if metrics.TASKS.get(m, {}).get("main")]
            spread = registration_spread(
                voxels, pd.concat(perturbed_tables, ignore_index=True)
                if perturbed_tables else pd.DataFrame(), metrics=main)
            landmark_rows = pd.DataFrame(registration_rows, columns=list(REGISTRATION_COLUMNS))
            rd.write_csv("registration.csv", pd.concat(
                [t for t in (spread, landmark_rows) if len(t)], ignore_index=True))
        rd.write_json("failures.json", failures)
        models_json = [model_meta[m.label] for m in model_specs]
        for label, meta in reference_sources.items():
            models_json.append({**meta, "params": micro_info.get(label, {})})
        rd.write_json("models.json", models_json)
        provenance = {
            "schema_version": SCHEMA_VERSION,
            "xscale_version": __version__,
            "code_hash": code_hash(),
            "git_commit": _git_commit(),
            "versions": _versions(),
            "machine": _machine(),
            "command": " ".join(sys.argv),
            "data": cfg["data"],
            "seeds": {"run": run_seed, **seeds},
            "registration": dict(cfg["registration"]),
            "input_hashes": input_hashes,
            "jobs": jobs,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timings_s": timer.timings,
        }
        rd.write_json("provenance.json", provenance)
        if build_report:
            import reports

            with timer("report"):
                reports.build_report(rd.path)
        log.info("run written in %.1f s", sum(timer.timings.values()))
    return load_run(final)


def _registration_perturbations(
    cfg: dict[str, Any], case: CaseData, truth: Any,
    sources: dict[str, tuple[np.ndarray, np.ndarray | None]],
    projections: list[tuple[MicroscopyInput, str, Any]], *, threshold: float, sphere: Any,
) -> list[pd.DataFrame]:
    """Per-voxel scores of one case under each registration perturbation.

    Every microscopy level is re-placed through its own perturbed affine (landmark refits
    when the level has landmarks, else random rigid draws) and its FOD re-projected.
    Phantoms (a truth of their own): the microscopy sources are rescored. Real data (the
    reference is the first level's FOD): the reference moves and every other source is
    rescored against it. Model fits are reused.
    """
    from validation.uncertainty import landmark_perturbations, perturbed_affines

    reg = cfg["registration"]
    n = int(reg["perturbations"])
    affines: dict[str, list[np.ndarray]] = {}
    for level, _, _ in projections:
        seed = derive_seed(int(reg["seed"]), case.case_id, level.name, "registration")
        if level.alignment is not None and level.landmarks is not None:
            affines[level.name] = landmark_perturbations(
                level.voxel_to_dmri, level.alignment, level.landmarks, n=n, rng=seed)
        else:
            affines[level.name] = perturbed_affines(
                level.voxel_to_dmri, tuple(level.volume.shape), n=n,
                rotation_deg=float(reg["rotation_deg"]),
                translation_mm=float(reg["translation_um"]) / 1000.0, rng=seed)
    reference_moves = case.truth is None
    tables = []
    for k in range(n):
        moved: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        ref = truth
        for index, (level, label, project) in enumerate(projections):
            fod = project(affines[level.name][k])
            if reference_moves and index == 0:
                ref = _truth_from_microscopy(fod, case.fit_mask)
                continue
            moved[label] = (np.asarray(fod.peaks), np.asarray(fod.sh))
        rescored = {**sources, **moved} if reference_moves else moved
        mask = np.asarray(ref.mask, bool)
        for label, (peaks, sh) in rescored.items():
            values = score_source(ref, peaks, sh, threshold_deg=threshold, sphere=sphere)
            table = pd.DataFrame({"case": case.case_id, "model": label, "perturbation": k},
                                 index=range(int(mask.sum())))
            for name in VOXEL_METRICS:
                table[name] = values[name]
            tables.append(table)
    return tables


def _microscopy_reference_tracts(cfg: dict[str, Any], case: CaseData, truth: Any,
                                 reference_field: tuple[MicroscopyInput, Any], run_seed: int,
                                 timer: _Timer, rd: RunDirectory) -> np.ndarray | None:
    """Real data: streamlines through the reference microscopy level's orientation field,
    at microscopy resolution, mapped to the dMRI grid and written as the reference
    tractogram. Returns the dMRI voxels they pass through (None when the level is too
    large to track in memory or no streamline was found)."""
    from validation.tracking import save_tractogram, streamline_voxels, track_microscopy

    level, field = reference_field
    got = field()
    if got is None:
        log.info("%s: microscopy level %s is processed in chunks; no reference tractogram",
                 case.case_id, level.name)
        return None
    st, mask = got
    tcfg = cfg["tracking"]
    usable = np.asarray(st.anisotropy) > MICROSCOPY_TRACK_ANISOTROPY
    if mask is not None:
        usable &= np.asarray(mask, bool)
    # as many seeds as the models get (seeds_per_voxel per dMRI voxel of the mask),
    # drawn among the usable microscopy voxels
    n_seeds = int(tcfg["seeds_per_voxel"]) * int(np.asarray(truth.mask, bool).sum())
    candidates = np.flatnonzero(usable)
    if not len(candidates) or not n_seeds:
        return None
    gen = np.random.default_rng(derive_seed(run_seed, case.case_id, "track", "microscopy"))
    seed_mask = np.zeros(usable.shape, bool)
    seed_mask.flat[gen.choice(candidates, size=min(n_seeds, len(candidates)),
                              replace=False)] = True
    with timer(f"{case.case_id}/tracking-microscopy"):
        result = track_microscopy(
            np.asarray(st.vectors), mask=usable, microscopy_affine=level.voxel_to_dmri,
            grid_affine=case.grid_affine, seed_mask=seed_mask, seeds_per_voxel=1,
            step_size=float(tcfg["step_size"]), max_angle_deg=float(tcfg["max_angle_deg"]),
            rng=derive_seed(run_seed, case.case_id, "track", "microscopy", "seeds"))
    out = rd.path / f"derivatives/sub-{case.case_id}/micr"
    out.mkdir(parents=True, exist_ok=True)
    save_tractogram(result.streamlines,
                    out / f"sub-{case.case_id}_desc-microscopy_tractography.{tcfg['format']}",
                    affine=np.asarray(case.grid_affine), shape=case.grid_shape)
    voxels = streamline_voxels(result.streamlines, case.grid_shape)
    return voxels if voxels.any() else None


def _tractography(cfg: dict[str, Any], case: CaseData, truth: Any,
                  sources: dict[str, tuple[np.ndarray, np.ndarray | None]], run_seed: int,
                  timer: _Timer, rd: RunDirectory,
                  reference_field: tuple[MicroscopyInput, Any] | None = None
                  ) -> list[dict[str, Any]]:
    """Track with the configured models on this case and score them: against the truth
    bundles (phantoms), or, for real data, against the voxels of a reference tractogram
    tracked through the microscopy orientation field (``reference_field``)."""
    tcfg = cfg["tracking"]
    bundles = list(getattr(truth, "bundles", []) or [])
    if not tcfg["enabled"] or not (bundles or reference_field):
        return []
    from validation.tracking import track_and_score

    reference = None
    if not bundles:
        assert reference_field is not None
        reference = _microscopy_reference_tracts(cfg, case, truth, reference_field,
                                                 run_seed, timer, rd)
        if reference is None:
            return []
    rows: list[dict[str, Any]] = []
    out_dir = rd.path / f"derivatives/sub-{case.case_id}/dwi"
    out_dir.mkdir(parents=True, exist_ok=True)
    axis = 2
    projections: dict[str, Any] = {"projection_axis": axis}
    for bundle in bundles:
        projections[f"truth_{bundle.name}"] = np.asarray(bundle.mask, bool).max(axis=axis
                                                                                 ).astype(
            np.float32)
    if reference is not None:
        projections["truth_microscopy"] = reference.max(axis=axis).astype(np.float32)
    for label in tcfg["models"]:
        if label not in sources:
            continue
        peaks, sh = sources[label]
        with timer(f"{case.case_id}/tracking-{label}"):
            rows.extend(track_and_score(
                case_id=case.case_id, label=label, peaks=peaks, sh=sh, truth=truth,
                grid=case.grid, config=tcfg,
                seed=derive_seed(run_seed, case.case_id, "track", label), out_dir=out_dir,
                reference_mask=reference,
            ))
        trk = out_dir / f"sub-{case.case_id}_model-{label}_tractography.trk"
        if trk.is_file():
            projections[f"density_{label}"] = _streamline_density(
                trk, case.grid_affine, case.grid_shape, axis)
    if len(projections) > 1:
        np.savez_compressed(rd.file(f"report_data/tracts_{case.case_id}.npz"), **projections)
    return rows


def _streamline_density(path: Path, affine: np.ndarray, shape: tuple[int, int, int],
                        axis: int) -> np.ndarray:
    """Streamline points per voxel (dMRI grid), summed along ``axis`` (report figure)."""
    import nibabel as nib

    points = nib.streamlines.load(str(path)).streamlines.get_data()
    if len(points) == 0:
        return np.zeros([n for a, n in enumerate(shape) if a != axis], np.float32)
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), points)).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape)), axis=1)
    counts = np.zeros(shape, np.float32)
    np.add.at(counts, tuple(ijk[inside].T), 1.0)
    return counts.sum(axis=axis)


def load_run(path: str | Path) -> RunResult:
    """Read a finished run directory into DataFrames."""
    path = Path(path)
    prov_file = path / "provenance.json"
    if not prov_file.is_file():
        raise UserError(f"{path}: not a finished XScale run (no provenance.json)")
    provenance = json.loads(prov_file.read_text())
    if provenance.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: run has schema version {provenance.get('schema_version')}, this XScale "
            f"reads version {SCHEMA_VERSION}"
        )
    import tomllib

    def _csv(name: str) -> pd.DataFrame:
        f = path / name
        if not f.is_file() or f.stat().st_size == 0:
            return pd.DataFrame()
        try:
            return pd.read_csv(f)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    return RunResult(
        path=path,
        scores=_csv("scores.csv"),
        cases=_csv("cases.csv"),
        voxels=_csv("voxels.csv.gz"),
        tractography=_csv("tractography.csv"),
        failures=json.loads((path / "failures.json").read_text())
        if (path / "failures.json").is_file() else [],
        config=tomllib.loads((path / "config.toml").read_text())
        if (path / "config.toml").is_file() else {},
        provenance=provenance,
        tasks=json.loads((path / "tasks.json").read_text())
        if (path / "tasks.json").is_file() else {},
        crossscale=_csv("crossscale.csv"),
        registration=_csv("registration.csv"),
    )
