"""``check-model``: a conformance check of a model on a tiny synthetic phantom.

The phantom is built here with ``dipy.sims.voxel.multi_tensor`` (no dependency on the
``phantoms`` package): single-fibre voxels along each axis, 90 and 60 degree crossings and a
few background voxels outside the mask whose signal is NaN, so a model that ignores the
mask shows it. Every problem is reported in plain words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from validation.models.protocol import ModelFailure, capabilities_of

__all__ = ["ConformanceReport", "TinyPhantom", "check_model", "tiny_phantom"]


@dataclass
class TinyTruth:
    """Ground truth of the tiny phantom, shaped like the phantoms package's GroundTruth."""

    peaks: np.ndarray  # (X, Y, Z, 2, 3)
    fractions: np.ndarray  # (X, Y, Z, 2)
    fod_sh: np.ndarray  # (X, Y, Z, 45)
    nufo: np.ndarray  # (X, Y, Z)
    mask: np.ndarray  # (X, Y, Z)


@dataclass
class TinyPhantom:
    """dMRI data and truth of :func:`tiny_phantom`."""

    data: np.ndarray  # (X, Y, Z, N) float64
    bvals: np.ndarray  # (N,)
    bvecs: np.ndarray  # (N, 3)
    mask: np.ndarray  # (X, Y, Z) bool
    truth: TinyTruth


def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _gradient_scheme(shells: tuple[float, ...], n_dirs: int, n_b0: int):
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(1234)  # a fixed scheme: the check is about the model
    xyz = rng.normal(size=(n_dirs, 3))
    hemi = HemiSphere(xyz=xyz / np.linalg.norm(xyz, axis=1, keepdims=True))
    hemi, _ = disperse_charges(hemi, 500)
    dirs = hemi.vertices
    bvals = np.concatenate([np.zeros(n_b0)] + [np.full(n_dirs, b) for b in shells])
    bvecs = np.concatenate([np.zeros((n_b0, 3))] + [dirs for _ in shells])
    return bvals, bvecs


def tiny_phantom(
    *,
    shape: tuple[int, int, int] = (4, 4, 2),
    shells: tuple[float, ...] = (1000.0,),
    snr: float | None = 30.0,
    n_dirs: int = 60,
    rng: int | np.random.Generator | None = 0,
) -> TinyPhantom:
    """A small multi-tensor phantom with known peaks (dMRI voxel frame).

    Voxel kinds cycle through: single fibre along i, along j, along k, a 90 degree
    crossing (i, j), a 60 degree crossing in the (i, j) plane, and an oblique single
    fibre. The last voxel in array order is outside the mask and holds NaN signal.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid size (at least 2 voxels).
    shells : tuple of float
        Non-zero b-values, s/mm^2 (several for multi-shell models).
    snr : float or None
        Rician noise at this SNR (S0 = 100); None: noise-free.
    n_dirs : int
        Gradient directions per shell.
    rng : int, Generator or None
        Noise seed.

    Returns
    -------
    TinyPhantom
    """
    from dipy.reconst.shm import real_sh_descoteaux
    from dipy.sims.voxel import multi_tensor

    rng = np.random.default_rng(rng)
    if int(np.prod(shape)) < 2:
        raise ValueError(f"tiny_phantom shape {shape} has fewer than 2 voxels")
    bvals, bvecs = _gradient_scheme(tuple(shells), n_dirs, 4)
    from dipy.core.gradients import gradient_table

    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
    c60 = (np.cos(np.radians(60)), np.sin(np.radians(60)), 0.0)
    kinds: list[list[Any]] = [
        [(1, 0, 0)],
        [(0, 1, 0)],
        [(0, 0, 1)],
        [(1, 0, 0), (0, 1, 0)],
        [(1, 0, 0), c60],
        [(1, 1, 1)],
    ]
    n_vox = int(np.prod(shape))
    data = np.zeros((n_vox, len(bvals)))
    peaks = np.zeros((n_vox, 2, 3))
    fractions = np.zeros((n_vox, 2))
    evals = np.array([[1.7e-3, 0.3e-3, 0.3e-3]] * 2)
    for v in range(n_vox):
        dirs = [_unit(d) for d in kinds[v % len(kinds)]]
        k = len(dirs)
        fr = [100.0 / k] * k
        sticks = [np.degrees([np.arccos(d[2]), np.arctan2(d[1], d[0])]) for d in dirs]
        signal, _ = multi_tensor(gtab, evals[:k], S0=100.0, angles=sticks, fractions=fr,
                                 snr=None)
        if snr is not None:
            sigma = 100.0 / snr
            signal = np.sqrt((signal + rng.normal(0, sigma, signal.shape)) ** 2
                             + rng.normal(0, sigma, signal.shape) ** 2)
        data[v] = signal
        peaks[v, :k] = dirs
        fractions[v, :k] = 1.0 / k
    mask = np.ones(n_vox, dtype=bool)
    mask[-1] = False
    data[-1] = np.nan
    peaks[-1] = 0
    fractions[-1] = 0
    # truth fODF: fraction-weighted sum of order-8 Dirac deltas (sharp, antipodal)
    theta = np.arccos(np.clip(peaks[..., 2], -1, 1))
    phi = np.arctan2(peaks[..., 1], peaks[..., 0])
    ylm, _, _ = real_sh_descoteaux(8, theta.ravel(), phi.ravel(), legacy=False)
    ylm = ylm.reshape(n_vox, 2, -1)
    fod_sh = np.einsum("vk,vkc->vc", fractions, ylm)
    nufo = (fractions > 0).sum(axis=1)
    truth = TinyTruth(
        peaks=peaks.reshape(shape + (2, 3)),
        fractions=fractions.reshape(shape + (2,)),
        fod_sh=fod_sh.reshape(shape + (-1,)),
        nufo=nufo.reshape(shape),
        mask=mask.reshape(shape) & (nufo.reshape(shape) > 0),
    )
    return TinyPhantom(data.reshape(shape + (-1,)), bvals, bvecs, mask.reshape(shape), truth)


@dataclass
class ConformanceReport:
    """Result of :func:`check_model`: ``problems`` in plain words (empty = conforms)."""

    model: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_text(self) -> str:
        lines = [f"check-model {self.model}: " + ("OK" if self.ok else
                                                  f"{len(self.problems)} problem(s)")]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_model(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    timeout_s: float = 120.0,
    jobs: int = 1,
    seed: int = 0,
) -> ConformanceReport:
    """Run ``name`` on the tiny phantom and list every way it breaks the contract.

    Checks: it can be built and declares valid capabilities; the fit runs within
    ``timeout_s`` without raising; shapes and dtypes of peaks and SH; unit peaks;
    no NaN or Inf; the mask is honoured (NaN signal outside the mask must neither make
    ``fit`` raise nor change any output inside the mask); two fits with the same seed are
    identical.

    Returns
    -------
    ConformanceReport
    """
    from validation.models.fitting import NPEAKS, ModelSpec, fit_case
    from validation.models.registry import make_model

    params = dict(params or {})
    report = ConformanceReport(model=name)
    t0 = time.perf_counter()
    try:
        model = make_model(name, params)
        caps = capabilities_of(model)
    except ModelFailure as exc:
        report.problems.append(f"the model cannot be built ({exc.reason})")
        report.seconds = time.perf_counter() - t0
        return report
    declared = [k for k, v in caps.to_dict().items() if v]
    report.notes.append("capabilities: " + (", ".join(declared) or "none"))
    if not isinstance(getattr(model, "name", None), str):
        report.problems.append("the model has no string attribute 'name'")
    shells = (1000.0, 2000.0, 3000.0) if caps.multi_shell_only else (1000.0,)
    ph = tiny_phantom(shells=shells, rng=seed)
    spec = ModelSpec(name=name, label="check", display_name=name, params=params,
                     timeout_s=timeout_s)
    runs = []
    for _ in range(2):
        try:
            runs.append(fit_case(spec, ph.data, ph.bvals, ph.bvecs, ph.mask, truth=ph.truth,
                                 jobs=jobs, seed=seed))
        except ModelFailure as exc:
            report.problems.append(_explain(exc, spec, ph, jobs, seed))
            break
    if len(runs) == 2:
        a, b = runs
        _check_outputs(a, ph, NPEAKS, report, caps)
        same = np.array_equal(a.peaks, b.peaks) and (
            (a.sh is None and b.sh is None)
            or (a.sh is not None and b.sh is not None and np.array_equal(a.sh, b.sh))
        )
        if not same:
            report.problems.append(
                "not deterministic: two fits with the same seed gave different peaks or SH"
            )
        report.notes.append(f"fit time {a.fit_seconds:.2f} s on {int(ph.mask.sum())} voxels")
        # only for a model that fits at all: one that fails fails this for the same reason
        _check_raw_mask(model, caps, ph, report, timeout_s)
    report.seconds = time.perf_counter() - t0
    return report


_STAGE_WORDS = {
    "timeout": "the fit did not finish in time",
    "output": "its output is invalid",
    "capabilities": "its declared capabilities do not work",
    "worker": "the process fitting it crashed",
    "fit": "fit(data, gtab, mask=mask) raised an exception",
    "prepare": "prepare(data, gtab, mask=mask) raised an exception",
    "init": "the model cannot be built",
}


def _explain(exc: ModelFailure, spec: Any, ph: TinyPhantom, jobs: int, seed: int) -> str:
    """Plain words for a failed fit; tells a mask problem from a general one."""
    from validation.models.fitting import fit_case

    words = f"{_STAGE_WORDS.get(exc.stage, f'it failed ({exc.stage})')}: {exc.reason}"
    if exc.stage not in ("output", "fit", "prepare"):
        return words
    clean = ph.data.copy()
    clean[~ph.mask] = ph.data[ph.mask][0]  # a valid signal where the mask excludes voxels
    try:
        fit_case(spec, clean, ph.bvals, ph.bvecs, ph.mask, truth=ph.truth, jobs=jobs, seed=seed)
    except ModelFailure:
        return words
    return ("the mask is not honoured: with NaN signal outside the mask the fit fails "
            f"({exc.reason}); with finite signal there it works")


def _check_outputs(out: Any, ph: TinyPhantom, npeaks: int, report: ConformanceReport,
                   caps: Any) -> None:
    shape = ph.mask.shape
    if out.peaks.shape != shape + (npeaks, 3) or out.peaks.dtype != np.float64:
        report.problems.append(f"peaks have shape {out.peaks.shape} / dtype {out.peaks.dtype}")
    present = np.linalg.norm(out.peaks, axis=-1) > 0
    if not caps.needs_truth and not present[ph.mask].any():
        report.notes.append("no peak was found in any voxel of the phantom")
    single = ph.truth.nufo == 1
    if present[single].any() and not caps.needs_truth:
        ref = ph.truth.peaks[single][:, 0]
        est = out.peaks[single][:, 0]
        cos = np.abs(np.sum(ref * est, axis=-1))
        err = np.degrees(np.arccos(np.clip(cos, 0, 1)))
        report.notes.append(
            f"first-peak angular error in single-fibre voxels: median {np.median(err):.1f} deg"
        )


def _check_raw_mask(
    model: Any, caps: Any, ph: TinyPhantom, report: ConformanceReport, timeout_s: float
) -> None:
    """Call the model's own fit (in a worker) on data with NaN outside the mask."""
    from validation.models.isolation import run_isolated

    try:
        problems = run_isolated(_raw_mask_job, model, caps, ph, timeout_s=2 * timeout_s)
    except ModelFailure as exc:
        report.problems.append(
            f"fit(data, gtab, mask=mask) fails when the signal outside the mask is NaN "
            f"({exc.reason}); the mask must exclude those voxels"
        )
        return
    report.problems.extend(problems)


def _raw_mask_job(model: Any, caps: Any, ph: TinyPhantom) -> list[str]:
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere

    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    clean = ph.data.copy()
    clean[~ph.mask] = ph.data[ph.mask][0]

    def outputs(data: np.ndarray) -> list[tuple[str, np.ndarray]]:
        prepared = model.prepare(data, gtab, mask=ph.mask) if hasattr(model, "prepare") else (
            model)
        if caps.needs_truth:
            fit = prepared.fit(data, gtab, mask=ph.mask, truth=ph.truth)
        else:
            fit = prepared.fit(data, gtab, mask=ph.mask)
        found = []
        if caps.gives_odf:
            found.append(("odf(sphere)", np.asarray(fit.odf(default_sphere), dtype=float)))
        if caps.gives_sh:
            found.append(("shm_coeff", np.asarray(fit.shm_coeff, dtype=float)))
        return found

    problems = []
    for (label, dirty), (_, ref) in zip(outputs(ph.data), outputs(clean), strict=True):
        if dirty.shape[:3] != ph.mask.shape or dirty.shape != ref.shape:
            continue  # reported by the shape check
        inside, expected = dirty[ph.mask], ref[ph.mask]
        scale = max(float(np.nanmax(np.abs(expected))), 1e-300)
        if not np.all(np.isfinite(inside)) or np.nanmax(np.abs(inside - expected)) > 1e-6 * scale:
            problems.append(
                f"the mask is not honoured: {label} inside the mask changes when the signal "
                "outside the mask changes"
            )
    return problems
