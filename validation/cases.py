"""Cases of a run: what the pipeline needs of one phantom or one registered dataset.

A built-in suite gives one case per phantom (built in memory); a dataset manifest gives
one case; a suite written by ``xscale phantom`` (its ``suite.toml``) gives one case per
dataset folder. All become :class:`CaseData`, so the rest of the run does not care
where the data came from, and a phantom written to disk scores as it does in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import ConfigError, UserError

log = logging.getLogger("xscale")


def derive_seed(run_seed: int, *keys: str) -> int:
    """A seed for one (case, model, ...) that depends on nothing else.

    Changing one model's configuration never changes another model's random numbers.

    Examples
    --------
    >>> derive_seed(0, "cross90", "csd") == derive_seed(0, "cross90", "csd")
    True
    >>> derive_seed(0, "cross90", "csd") != derive_seed(0, "cross90", "dti")
    True
    """
    entropy = [int(run_seed) & 0xFFFFFFFF] + [zlib.crc32(k.encode()) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


@dataclass
class MicroscopyInput:
    """One microscopy level as the orientation step needs it."""

    name: str
    volume: Any  # numpy or dask array, any axis order
    mask: Any | None  # same shape, bool, or None (all tissue)
    spacing_um: tuple[float, float, float]  # per array axis
    voxel_to_dmri: np.ndarray  # (4, 4) microscopy voxel index -> dMRI world mm
    # landmark placement (manifest ``landmarks``): its fit (LandmarkAlignment) and pairs
    alignment: Any | None = None
    landmarks: Any | None = None


@dataclass
class Truth:
    """Ground truth on the dMRI grid (same fields as ``phantoms.GroundTruth``)."""

    peaks: np.ndarray
    fractions: np.ndarray
    nufo: np.ndarray
    mask: np.ndarray
    fod_sh: np.ndarray
    bundles: list[Any] = field(default_factory=list)


@dataclass
class Bundle:
    """A ground-truth bundle (same fields as ``phantoms.TruthBundle``)."""

    name: str
    streamlines: list[np.ndarray]
    head_roi: np.ndarray
    tail_roi: np.ndarray
    mask: np.ndarray


@dataclass
class CaseData:
    """Everything the run needs of one case."""

    case_id: str
    conditions: dict[str, Any]
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray
    dwi: np.ndarray  # (X, Y, Z, N) float32
    bvals: np.ndarray
    bvecs: np.ndarray  # ijk frame
    fit_mask: np.ndarray  # (X, Y, Z) bool: voxels the models fit
    truth: Any | None
    microscopy: list[MicroscopyInput]
    source: dict[str, Any]  # what the case was made from (for provenance)

    @property
    def grid(self) -> Any:
        """dMRI grid as an object with ``.shape`` and ``.affine``."""
        from types import SimpleNamespace

        return SimpleNamespace(shape=self.grid_shape, affine=self.grid_affine)


# --------------------------------------------------------------------------------------
# phantoms in memory


def phantom_case(spec: Any, *, run_seed: int, voxel_size_um: Any = None,
                 extra_voxel_sizes_um: Any = ()) -> CaseData:
    """Build one phantom case in memory (the built-in suites).

    ``extra_voxel_sizes_um`` adds one microscopy level per voxel size (micrometres),
    named ``microscopy-<size>um`` and rendered with the same noise seed, for cross-scale
    comparison.
    """
    import phantoms

    case_id = spec.case_id
    phantom = phantoms.build_phantom(spec, rng=derive_seed(run_seed, case_id, "phantom"))
    truth = phantom.truth()
    signal = phantom.simulate_dmri(rng=derive_seed(run_seed, case_id, "dmri"))
    kwargs = {} if voxel_size_um is None else {"voxel_size_um": voxel_size_um}
    micro = phantom.render_microscopy(rng=derive_seed(run_seed, case_id, "microscopy"),
                                      **kwargs)
    levels = [MicroscopyInput(
        name="microscopy", volume=micro.volume, mask=micro.mask,
        spacing_um=tuple(float(s) for s in micro.spacing_um),  # type: ignore[arg-type]
        voxel_to_dmri=np.asarray(micro.affine, dtype=np.float64),
    )]
    for size in extra_voxel_sizes_um:
        extra = phantom.render_microscopy(
            voxel_size_um=float(size), rng=derive_seed(run_seed, case_id, "microscopy"))
        levels.append(MicroscopyInput(
            name=f"microscopy-{float(size):g}um", volume=extra.volume, mask=extra.mask,
            spacing_um=tuple(float(s) for s in extra.spacing_um),  # type: ignore[arg-type]
            voxel_to_dmri=np.asarray(extra.affine, dtype=np.float64),
        ))
    return CaseData(
        case_id=case_id,
        conditions=dict(spec.conditions()),
        grid_shape=tuple(phantom.grid.shape),  # type: ignore[arg-type]
        grid_affine=np.asarray(phantom.grid.affine, dtype=np.float64),
        # float32 as a dataset on disk holds it: a written phantom scores the same
        dwi=np.asarray(signal.data, dtype=np.float32),
        bvals=np.asarray(signal.bvals, dtype=np.float64),
        bvecs=np.asarray(signal.bvecs, dtype=np.float64),
        fit_mask=np.asarray(truth.mask, bool),
        truth=truth,
        microscopy=levels,
        source={"suite_case": spec.to_dict()},
    )


# --------------------------------------------------------------------------------------
# datasets on disk


def _hash_file(path: Path, digest: Any) -> None:
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(sub.relative_to(path).as_posix().encode())
            digest.update(sub.read_bytes())
    elif path.is_file():
        digest.update(path.read_bytes())


def _load_nifti_array(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc}") from None
    if tuple(data.shape[:3]) != tuple(shape):
        raise UserError(
            f"{path}: {what} has shape {data.shape[:3]}, the dMRI grid is {tuple(shape)}"
        )
    return data


def _load_truth(dataset: Any, shape: tuple[int, int, int]) -> Truth | None:
    paths = dataset.truth
    if not paths or "peaks" not in paths:
        return None
    peaks_flat = _load_nifti_array(paths["peaks"], shape, "truth peaks").astype(np.float64)
    if peaks_flat.ndim != 4 or peaks_flat.shape[3] % 3:
        raise UserError(f"{paths['peaks']}: truth peaks must be (X, Y, Z, 3K)")
    peaks = peaks_flat.reshape(shape + (-1, 3))
    norms = np.linalg.norm(peaks, axis=-1, keepdims=True)
    peaks = np.where(norms > 0, peaks / np.where(norms > 0, norms, 1), 0.0)
    present = norms[..., 0] > 0
    nufo = (_load_nifti_array(paths["nufo"], shape, "truth NuFO").astype(np.int64)
            if "nufo" in paths else present.sum(-1))
    mask = (_load_nifti_array(paths["mask"], shape, "truth mask") > 0
            if "mask" in paths else nufo > 0)
    fractions = (_load_nifti_array(paths["fractions"], shape, "truth fractions")
                 .astype(np.float64) if "fractions" in paths
                 else present / np.maximum(present.sum(-1, keepdims=True), 1))
    if "fod_sh" in paths:
        fod_sh = _load_nifti_array(paths["fod_sh"], shape, "truth FOD").astype(np.float64)
    else:
        fod_sh = _sh_from_peaks(peaks, fractions)
    bundles = _load_bundles(Path(paths["bundles"]), shape) if "bundles" in paths else []
    return Truth(peaks=peaks, fractions=fractions, nufo=nufo, mask=mask, fod_sh=fod_sh,
                 bundles=bundles)


def _sh_from_peaks(peaks: np.ndarray, fractions: np.ndarray, sh_order_max: int = 8
                   ) -> np.ndarray:
    """Even SH (descoteaux07, legacy=False) of a sum of fraction-weighted axial deltas."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    shape = peaks.shape[:-2]
    flat = peaks.reshape(-1, 3)
    weights = fractions.reshape(-1)
    _, theta, phi = cart2sphere(flat[:, 0], flat[:, 1], flat[:, 2])
    basis, _, _ = real_sh_descoteaux(sh_order_max, theta, phi, legacy=False)
    present = np.linalg.norm(flat, axis=-1) > 0
    coeffs = basis * (weights * present)[:, None]
    k = peaks.shape[-2]
    return coeffs.reshape(shape + (k, -1)).sum(axis=-2)


def _load_bundles(config: Path, shape: tuple[int, int, int]) -> list[Bundle]:
    """Bundles of a scilpy-style JSON config (head/tail/gt_mask, paths beside it)."""
    try:
        spec = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config}: cannot read the bundle config: {exc}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{config}: a bundle config is a JSON object of bundles")
    bundles = []
    for name, entry in spec.items():
        if not isinstance(entry, dict) or not {"head", "tail", "gt_mask"} <= set(entry):
            raise UserError(f"{config}: bundle {name!r} needs head, tail and gt_mask")
        vols = {key: _load_nifti_array(config.parent / entry[key], shape, f"{name} {key}") > 0
                for key in ("head", "tail", "gt_mask")}
        bundles.append(Bundle(name=name, streamlines=[], head_roi=vols["head"],
                              tail_roi=vols["tail"], mask=vols["gt_mask"]))
    return bundles


#: Manifest keys of a [[microscopy]] entry read here (landmark placement); the rest of
#: the entry is validated by ``validation.manifest``.
LANDMARK_KEYS = ("landmarks", "landmark_transform")


def _read_manifest_landmarks(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse a manifest, take out the landmark keys of its levels and validate the rest.

    ``landmarks = "pairs.csv"`` (source = the level's world after its ``transform``
    chain, target = dMRI world, mm) with ``landmark_transform = "rigid" | "similarity" |
    "affine"`` (default rigid); ``transform`` defaults to ``[]`` when landmarks are given.
    """
    from validation.manifest import validate_manifest

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    found: dict[str, dict[str, Any]] = {}
    levels = data.get("microscopy", [])
    if isinstance(levels, list):
        for i, entry in enumerate(levels, start=1):
            if not isinstance(entry, dict) or not any(k in entry for k in LANDMARK_KEYS):
                continue
            where = f"{path}: [[microscopy]] entry {i}"
            csv_path = entry.pop("landmarks", None)
            kind = entry.pop("landmark_transform", "rigid")
            if not isinstance(csv_path, str):
                raise ConfigError(f"{where}: landmark_transform needs landmarks = \"pairs.csv\""
                                  if csv_path is None else
                                  f"{where}: landmarks = {csv_path!r} should be a CSV path")
            if kind not in ("rigid", "similarity", "affine"):
                raise ConfigError(f"{where}: landmark_transform = {kind!r} is invalid; use "
                                  "rigid, similarity or affine")
            entry.setdefault("transform", [])
            found[str(entry.get("name", i))] = {"path": path.parent / csv_path, "kind": kind}
    return validate_manifest(data, source=str(path)), found


def _load_dataset(path: Path) -> Any:
    """``validation.manifest.load_dataset`` plus landmark placement of levels.

    Returns the Dataset and, per level name with landmarks, (alignment, landmarks).
    """
    from validation import manifest as mf
    from validation.landmarks import align_landmarks, read_landmarks_csv
    from validation.transforms import CompositeTransform

    if path.is_dir():
        path = path / "manifest.toml"
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    manifest, landmark_entries = _read_manifest_landmarks(path)
    if not landmark_entries:
        return mf.load_dataset(path), {}
    base, source = path.parent, str(path)
    ds = mf.Dataset(path=path, manifest=manifest)
    if "dmri" in manifest:
        ds.dwi, ds.affine, ds.gradients, ds.mask, ds.labels = mf._load_dmri(
            manifest["dmri"], base, source, check_data=True)
    alignments: dict[str, tuple[Any, Any]] = {}
    for entry in manifest["microscopy"]:
        level = mf.load_microscopy_level(entry, base, source=source)
        spec = landmark_entries.get(level.name)
        if spec is not None:
            try:
                pairs = read_landmarks_csv(spec["path"])
                fit = align_landmarks(pairs, spec["kind"])
            except UserError as exc:
                raise UserError(f"{source}: microscopy {level.name!r} landmarks: {exc}") from None
            level.transform = CompositeTransform([level.transform, fit.transform])
            alignments[level.name] = (fit, pairs)
        if ds.dwi is not None and ds.affine is not None:
            grid = ds.grid_shape
            assert grid is not None
            fraction, extent = mf.microscopy_overlap(level, grid, ds.affine)
            if fraction == 0.0:
                span = ", ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in extent)
                raise UserError(
                    f"{source}: microscopy {level.name!r} does not overlap the dMRI field of "
                    f"view: it maps to dMRI voxels {span}, the grid is "
                    f"{' x '.join(map(str, grid))} (overlap 0%)"
                )
            if fraction < 1.0:
                log.warning("%s: microscopy %r lies %.0f%% inside the dMRI field of view",
                            source, level.name, 100 * fraction)
            level.overlap_fraction = fraction
        ds.microscopy.append(level)
    for key, value in manifest.get("truth", {}).items():
        p = mf._resolve(base, value)
        if not p.exists():
            raise UserError(f"{source}: [truth] {key} {str(p)!r}: file not found")
        ds.truth[key] = p
    return ds, alignments


def dataset_case(manifest_path: str | Path) -> CaseData:
    """One case from a dataset manifest (``validation.manifest.load_dataset``).

    Microscopy levels may be placed by landmarks (``landmarks``, ``landmark_transform``
    in their ``[[microscopy]]`` entry): the fitted transform follows the level's chain.
    """
    from validation.io.volumes import open_volume

    dataset, alignments = _load_dataset(Path(manifest_path))
    if dataset.dwi is None or dataset.gradients is None or dataset.affine is None:
        raise ConfigError(f"{manifest_path}: the manifest has no [dmri] data to score")
    shape = dataset.grid_shape
    assert shape is not None
    truth = _load_truth(dataset, shape)
    micro_entries = {m["name"]: m for m in dataset.manifest.get("microscopy", [])}
    levels = []
    for level in dataset.microscopy:
        affine = level.voxel_to_dmri
        if affine is None:
            raise UserError(
                f"{manifest_path}: microscopy level {level.name!r} has a non-affine transform "
                "chain; runs support affine chains (use `xscale fod` for displacement fields)"
            )
        mask = None
        entry = micro_entries.get(level.name, {})
        if entry.get("mask"):
            mask_path = Path(dataset.path).parent / entry["mask"]
            mvol = open_volume(mask_path, voxel_size_um=level.spacing_um)
            if tuple(mvol.array.shape) != tuple(level.volume.shape):
                raise UserError(f"{mask_path}: mask shape {tuple(mvol.array.shape)} does not "
                                f"match the microscopy {tuple(level.volume.shape)}")
            mask = mvol.array > 0
        alignment, pairs = alignments.get(level.name, (None, None))
        levels.append(MicroscopyInput(
            name=level.name, volume=level.volume, mask=mask,
            spacing_um=tuple(float(s) for s in level.spacing_um),  # type: ignore[arg-type]
            voxel_to_dmri=np.asarray(affine, dtype=np.float64),
            alignment=alignment, landmarks=pairs,
        ))
    if truth is not None:
        fit_mask = np.asarray(truth.mask, bool)
    elif dataset.mask is not None:
        fit_mask = np.asarray(dataset.mask, bool)
    else:
        fit_mask = np.ones(shape, bool)
    conditions = dict(dataset.manifest.get("dataset", {}).get("conditions", {}))
    digest = hashlib.sha256()
    base = Path(dataset.path).parent
    for rel in sorted(str(v) for v in dataset.manifest.get("dmri", {}).values()
                      if isinstance(v, str)):
        _hash_file(base / rel, digest)
    return CaseData(
        case_id=dataset.name,
        conditions=conditions,
        grid_shape=shape,
        grid_affine=np.asarray(dataset.affine, dtype=np.float64),
        dwi=np.asarray(dataset.dwi, dtype=np.float32),
        bvals=np.asarray(dataset.bvals, dtype=np.float64),
        bvecs=np.asarray(dataset.bvecs, dtype=np.float64),
        fit_mask=fit_mask,
        truth=truth,
        microscopy=levels,
        source={"manifest": str(Path(dataset.path).resolve()), "dmri_sha256": digest.hexdigest()},
    )


def manifest_paths(path: str | Path) -> list[Path]:
    """The dataset manifests behind ``[data] manifest``: a manifest, or a suite.toml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "cases" in data and "dmri" not in data:
        # suite.toml written by `xscale phantom`: one dataset folder per case
        out = []
        for entry in data["cases"]:
            case_id = entry.get("case_id") if isinstance(entry, dict) else None
            if not case_id:
                raise ConfigError(f"{path}: every [[cases]] entry needs a case_id")
            manifest = path.parent / case_id / "manifest.toml"
            if not manifest.is_file():
                raise ConfigError(f"{path}: case {case_id!r} has no {manifest}")
            out.append(manifest)
        return out
    return [path]


def iter_cases(cfg: dict[str, Any]) -> tuple[int, Iterator[CaseData]]:
    """Number of cases and an iterator over them.

    Phantoms are built one at a time, lazily. Datasets (``[data] manifest``) are all
    loaded and checked here, before anything is written, so a bad input anywhere in a
    suite fails the run before its run directory exists (dMRI volumes are small;
    microscopy volumes stay lazy).
    """
    run_seed = int(cfg["run"]["seed"])
    voxel = cfg["orientation"]["voxel_size_um"]
    if cfg["data"]["manifest"] is not None:
        paths = manifest_paths(cfg["data"]["manifest"])
        loaded = [dataset_case(p) for p in paths]
        return len(loaded), iter(loaded)
    import phantoms

    extra = cfg.get("crossscale", {}).get("voxel_sizes_um", []) or []
    specs = list(phantoms.get_suite(cfg["data"]["suite"]))
    return len(specs), (phantom_case(s, run_seed=run_seed, voxel_size_um=voxel,
                                     extra_voxel_sizes_um=extra) for s in specs)
