"""Fit one model on one case: isolation, voxel chunks in parallel, peaks, SH, validation.

``fit_case`` is what the runner calls. Everything the model does (construction aside)
runs in a worker process that is killed after ``spec.timeout_s``; any failure of the
model itself comes back as :class:`~validation.models.protocol.ModelFailure`.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError
from validation.models.isolation import run_isolated
from validation.models.parallel import WorkerDied, run_shares, using_jobs
from validation.models.protocol import Capabilities, ModelFailure, capabilities_of
from validation.models.registry import make_model, resolve_factory

__all__ = [
    "NPEAKS",
    "PEAK_PARAMS",
    "FIT_PIPELINE_VERSION",
    "ModelOutputs",
    "ModelSpec",
    "fit_case",
    "fit_cache_key",
]

#: bump when anything here changes the numbers a cached fit holds
FIT_PIPELINE_VERSION = 1
NPEAKS = 5
#: voxels per chunk; fixed (not derived from ``jobs``) so parallel fits equal serial ones
CHUNK_VOXELS = 128
B0_THRESHOLD = 50.0

PEAK_PARAMS: dict[str, Any] = {
    "method": "dipy.direction.peaks.peak_directions",
    "sphere": "dipy default_sphere (repulsion724 hemisphere, 362 vertices)",
    "relative_peak_threshold": 0.5,
    "min_separation_angle": 25.0,
    "npeaks": NPEAKS,
    "refine": "quadratic fit to the ODF at the peak vertex and its neighbours "
    "(tangent-plane maximum)",
}

_LABEL_RE = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a run.

    Parameters
    ----------
    name : str
        Registry name (``"csd"``), entry-point name, or ``"package.module:factory"``.
    label : str
        File label, a slug of ``[a-z0-9]`` (``"csd8"``), unique within a run.
    display_name : str
        Any text, for tables and the report.
    params : dict
        Keyword hyper-parameters for the factory.
    timeout_s : float
        Wall-clock limit of one case's fit, seconds (default 600).
    """

    name: str
    label: str
    display_name: str
    params: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not _LABEL_RE.fullmatch(self.label):
            raise UserError(
                f"model label {self.label!r} is invalid; use lowercase letters and digits only"
            )
        if not isinstance(self.params, dict):
            raise UserError(f"model {self.label!r}: params must be a table, got {self.params!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise UserError(
                f"model {self.label!r}: timeout_s must be a positive number, got {self.timeout_s!r}"
            )


@dataclass
class ModelOutputs:
    """What one model gives on one case.

    Attributes
    ----------
    peaks : ndarray, shape (X, Y, Z, 5, 3), float64
        Unit rows in the voxel (ijk) frame, sorted by decreasing value; zero rows = absent,
        and zero outside the mask.
    peak_values : ndarray, shape (X, Y, Z, 5), float64
        ODF value at each peak (or the model's own peak weights); 0 where absent.
    sh : ndarray, shape (X, Y, Z, n_coeffs), float64, or None
        fODF in dipy ``descoteaux07``, ``legacy=False``, order ``sh_order_max``, ijk frame;
        zero outside the mask.
    capabilities : Capabilities
    peak_params : dict
        How peaks and SH were obtained (recorded in the run).
    fit_seconds : float
        Wall time of the fit (of the original fit when ``cached``).
    cached : bool
        Read from the content-hash cache.
    details : dict
        Model-specific facts (estimated response...) and timings: ``model_seconds`` is the
        time spent in the model's own code (prepare, fit, odf/shm/peaks).
    """

    peaks: np.ndarray
    peak_values: np.ndarray
    sh: np.ndarray | None
    capabilities: Capabilities
    peak_params: dict[str, Any]
    fit_seconds: float
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _n_coeffs(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _order_of(n_coeffs: int) -> int | None:
    for order in range(0, 40, 2):
        if _n_coeffs(order) == n_coeffs:
            return order
    return None


@functools.lru_cache(maxsize=4)
def _geometry(sh_order_max: int) -> _Geometry:
    return _Geometry(sh_order_max)


class _Geometry:
    """The sphere and SH matrices shared by every chunk of a fit."""

    def __init__(self, sh_order_max: int):
        from dipy.data import default_sphere
        from dipy.reconst.shm import real_sh_descoteaux

        self.sphere = default_sphere
        self.sh_order_max = sh_order_max
        self.n_coeffs = _n_coeffs(sh_order_max)
        basis, _, _ = real_sh_descoteaux(
            sh_order_max, default_sphere.theta, default_sphere.phi, legacy=False
        )
        self.sh_to_sf = np.ascontiguousarray(basis.T)  # (C, V): sf = sh @ sh_to_sf
        # least squares via the normal equations (B is well conditioned on 362 points)
        self.sf_to_sh = np.ascontiguousarray(basis @ np.linalg.inv(basis.T @ basis))  # (V, C)
        self._init_refinement()

    def _init_refinement(self) -> None:
        """Per vertex: its neighbours and the pseudo-inverse of a quadratic fit around it.

        A peak found on a vertex is refined to the maximum of the quadratic
        ``f = c + g.x + x^T H x / 2`` fitted (least squares) to the ODF at the vertex and its
        neighbours, in gnomonic coordinates of the tangent plane. The sphere's vertices are
        about 8 degrees apart, so without this a noise-free peak is off by up to ~4 degrees.
        """
        verts = self.sphere.vertices
        n_vert = len(verts)
        neighbours: list[set[int]] = [set() for _ in range(n_vert)]
        for a, b in self.sphere.edges:
            neighbours[a].add(int(b))
            neighbours[b].add(int(a))
        width = 1 + max(len(nb) for nb in neighbours)
        self.nb_count = np.array([len(nb) for nb in neighbours], dtype=np.int64)
        self.nb_index = np.zeros((n_vert, width - 1), dtype=np.int64)
        for v, nb in enumerate(neighbours):
            self.nb_index[v, : len(nb)] = sorted(nb)
        self.ref_index = np.zeros((n_vert, width), dtype=np.intp)
        self.ref_pinv = np.zeros((n_vert, 6, width))
        self.ref_e1 = np.zeros((n_vert, 3))
        self.ref_e2 = np.zeros((n_vert, 3))
        self.ref_radius = np.zeros(n_vert)
        for v in range(n_vert):
            u = verts[v]
            e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(u, e1)
            idx = [v] + sorted(neighbours[v])
            w = verts[idx]
            w = w * np.sign(w @ u)[:, None]  # antipodal neighbours on a hemisphere
            x = (w @ e1) / (w @ u)
            y = (w @ e2) / (w @ u)
            design = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
            self.ref_index[v, : len(idx)] = idx
            self.ref_index[v, len(idx) :] = v
            self.ref_pinv[v, :, : len(idx)] = np.linalg.pinv(design)
            self.ref_e1[v], self.ref_e2[v] = e1, e2
            self.ref_radius[v] = np.hypot(x, y).max()

    def refine(
        self, odf: np.ndarray, voxel: np.ndarray, vertex: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Refined directions (P, 3) and values (P,) of peaks at ``vertex`` of ``odf[voxel]``.

        A peak whose local fit is not a maximum, or whose maximum falls outside its
        neighbourhood, stays on its vertex.
        """
        u = self.sphere.vertices[vertex]
        values = odf[voxel[:, None], self.ref_index[vertex]]
        coef = np.einsum("pij,pj->pi", self.ref_pinv[vertex], values)
        g = coef[:, 1:3]
        hxx, hxy, hyy = 2 * coef[:, 3], coef[:, 4], 2 * coef[:, 5]
        det = hxx * hyy - hxy * hxy
        ok = (det > 0) & (hxx < 0)
        safe = np.where(ok, det, 1.0)
        sx = -(hyy * g[:, 0] - hxy * g[:, 1]) / safe
        sy = -(-hxy * g[:, 0] + hxx * g[:, 1]) / safe
        ok &= np.hypot(sx, sy) <= self.ref_radius[vertex]
        sx, sy = np.where(ok, sx, 0.0), np.where(ok, sy, 0.0)
        direction = u + sx[:, None] * self.ref_e1[vertex] + sy[:, None] * self.ref_e2[vertex]
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        peak = coef[:, 0] + g[:, 0] * sx + g[:, 1] * sy + 0.5 * (
            hxx * sx * sx + 2 * hxy * sx * sy + hyy * sy * sy
        )
        value = np.where(ok, peak, odf[voxel, vertex])
        return direction, value


def _nonfinite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        n_vox = int(bad.reshape(array.shape[0], -1).any(axis=1).sum())
        raise ModelFailure(
            f"{name} contains NaN or Inf in {n_vox} of {array.shape[0]} voxels", "output"
        )


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    if array.shape != expected:
        raise ModelFailure(
            f"{name} has shape {array.shape}; expected {expected}", "output"
        )


def _find_peaks(odf: np.ndarray, geometry: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """dipy's peak finder on each row of ``odf`` (n, V), refined -> (n, 5, 3), (n, 5)."""
    n = odf.shape[0]
    vertex = np.full((n, NPEAKS), -1, dtype=np.int64)
    if n:
        _peak_vertices(
            np.ascontiguousarray(odf, dtype=np.float64), geometry.nb_index, geometry.nb_count,
            geometry.sphere.vertices, float(PEAK_PARAMS["relative_peak_threshold"]),
            float(np.cos(np.radians(PEAK_PARAMS["min_separation_angle"]))), vertex,
        )
    peaks = np.zeros((n, NPEAKS, 3))
    values = np.zeros((n, NPEAKS))
    vox, slot = np.nonzero(vertex >= 0)
    if len(vox):
        dirs, vals = geometry.refine(odf, vox, vertex[vox, slot])
        peaks[vox, slot] = dirs
        values[vox, slot] = vals
        # refinement can reorder values within a voxel: keep them sorted
        order = np.argsort(-values, axis=1, kind="stable")
        peaks = np.take_along_axis(peaks, order[..., None], axis=1)
        values = np.take_along_axis(values, order, axis=1)
    return peaks, values


def _peak_vertices_py(odf, nb_index, nb_count, vertices, rel, cos_sep, out):  # type: ignore[no-untyped-def]
    """Vertex indices of the peaks of each row of ``odf``, as ``dipy.direction.peak_directions``.

    Peaks: vertices greater than or equal to all their neighbours and greater than at least
    one (negative values clipped to 0), above ``min + rel * (max - min)`` with
    ``min = max(0, odf.min())``, taken in decreasing value, dropping any within the
    separation angle of a kept one (axial). Compiled with numba (this is the hot loop).
    """
    n, n_vert = odf.shape
    npk = out.shape[1]
    cand = np.empty(n_vert, dtype=np.int64)
    cand_val = np.empty(n_vert)
    kept = np.empty(n_vert, dtype=np.int64)
    for i in range(n):
        row = odf[i]
        lo = 0.0
        hi = 0.0
        first = True
        for v in range(n_vert):
            x = max(row[v], 0.0)
            if first:
                lo = x
                hi = x
                first = False
            else:
                lo = min(lo, x)
                hi = max(hi, x)
        thr = lo + rel * (hi - lo)
        m = 0
        for v in range(n_vert):
            x = max(row[v], 0.0)
            if x <= thr:
                continue
            ge_all = True
            gt_any = False
            for j in range(nb_count[v]):
                y = max(row[nb_index[v, j]], 0.0)
                if y > x:
                    ge_all = False
                    break
                if x > y:
                    gt_any = True
            if ge_all and gt_any:
                cand[m] = v
                cand_val[m] = x
                m += 1
        # sort candidates by decreasing value (insertion sort: there are few)
        for a in range(1, m):
            cv = cand[a]
            cx = cand_val[a]
            b = a - 1
            while b >= 0 and cand_val[b] < cx:
                cand[b + 1] = cand[b]
                cand_val[b + 1] = cand_val[b]
                b -= 1
            cand[b + 1] = cv
            cand_val[b + 1] = cx
        k = 0
        for a in range(m):
            v = cand[a]
            ok = True
            for c in range(k):
                u = kept[c]
                dot = (vertices[v, 0] * vertices[u, 0] + vertices[v, 1] * vertices[u, 1]
                       + vertices[v, 2] * vertices[u, 2])
                if abs(dot) > cos_sep:
                    ok = False
                    break
            if ok:
                kept[k] = v
                k += 1
        for c in range(min(k, npk)):
            out[i, c] = kept[c]


_peak_vertices: Any
try:
    import numba

    _peak_vertices = numba.njit(cache=True, nogil=True)(_peak_vertices_py)
except ImportError:  # pragma: no cover - numba is a dependency
    _peak_vertices = _peak_vertices_py


def _model_peaks(
    fit: Any, n_all: int, spatial: tuple[int, ...], keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    got = fit.peaks()
    if isinstance(got, tuple) and len(got) == 2:
        dirs, vals = np.asarray(got[0], dtype=np.float64), np.asarray(got[1], dtype=np.float64)
    else:
        dirs = np.asarray(got, dtype=np.float64)
        vals = None
    if dirs.ndim != len(spatial) + 2 or dirs.shape[: len(spatial)] != spatial or (
        dirs.shape[-1] != 3
    ):
        raise ModelFailure(
            f"peaks() has shape {dirs.shape}; expected {spatial + ('K', 3)}", "output"
        )
    k = dirs.shape[-2]
    n = len(keep)
    dirs = dirs.reshape(n_all, k, 3)[keep]
    norms = np.linalg.norm(dirs, axis=-1)
    if vals is None:
        vals = (norms > 0).astype(np.float64)
    else:
        _check_shape("peaks() values", vals, spatial + (k,))
        vals = vals.reshape(n_all, k)[keep]
    _nonfinite("peaks()", dirs)
    _nonfinite("peaks() values", vals)
    present = norms > 1e-12
    if np.any(np.abs(norms[present] - 1.0) > 1e-3):
        raise ModelFailure(
            "peaks() returned directions that are neither unit vectors nor zero rows "
            f"(norms from {norms[present].min():.3g} to {norms[present].max():.3g})",
            "output",
        )
    vals = np.where(present, vals, 0.0)
    order = np.argsort(-np.where(present, vals, -np.inf), axis=1, kind="stable")
    dirs = np.take_along_axis(dirs, order[..., None], axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    present = np.take_along_axis(present, order, axis=1)
    out_p = np.zeros((n, NPEAKS, 3))
    out_v = np.zeros((n, NPEAKS))
    kk = min(k, NPEAKS)
    out_p[:, :kk] = np.where(present[:, :kk, None], dirs[:, :kk], 0.0)
    out_v[:, :kk] = np.where(present[:, :kk], vals[:, :kk], 0.0)
    return out_p, out_v


def _extract(
    fit: Any,
    caps: Capabilities,
    spatial: tuple[int, ...],
    geometry: _Geometry,
    select: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Peaks (n, 5, 3), values (n, 5), SH (n, C) of a fit over ``spatial`` voxels.

    ``select`` (flat voxel indices) keeps only those voxels, before the checks for NaN:
    what a whole-volume model returns outside the mask is discarded, not judged.
    Returns the seconds spent in the model's own ``odf``/``shm_coeff``/``peaks`` too.
    """
    n_all = int(np.prod(spatial))
    keep = np.arange(n_all) if select is None else select
    n = len(keep)
    odf = sh = None
    model_s = 0.0
    if caps.gives_sh:
        t0 = time.perf_counter()
        raw = getattr(fit, "shm_coeff", None)
        model_s += time.perf_counter() - t0
        if raw is None:
            raise ModelFailure(
                f"declares gives_sh but its fit ({type(fit).__name__}) has no shm_coeff",
                "output",
            )
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != len(spatial) + 1 or raw.shape[:-1] != spatial:
            raise ModelFailure(
                f"shm_coeff has shape {raw.shape}; expected {spatial + ('n_coeffs',)}",
                "output",
            )
        if _order_of(raw.shape[-1]) is None:
            raise ModelFailure(
                f"shm_coeff has {raw.shape[-1]} coefficients, not an even-order SH count "
                "(1, 6, 15, 28, 45, ...)",
                "output",
            )
        raw = raw.reshape(n_all, -1)[keep]
        _nonfinite("shm_coeff", raw)
        sh = np.zeros((n, geometry.n_coeffs))
        c = min(raw.shape[1], geometry.n_coeffs)
        sh[:, :c] = raw[:, :c]
    if caps.gives_odf:
        if not callable(getattr(fit, "odf", None)):
            raise ModelFailure(
                f"declares gives_odf but its fit ({type(fit).__name__}) has no odf(sphere) method",
                "output",
            )
        t0 = time.perf_counter()
        odf = np.asarray(fit.odf(geometry.sphere), dtype=np.float64)
        model_s += time.perf_counter() - t0
        _check_shape("odf(sphere)", odf, spatial + (len(geometry.sphere.vertices),))
        odf = odf.reshape(n_all, -1)[keep]
        _nonfinite("odf(sphere)", odf)
    if not caps.gives_odf and not caps.gives_sh:
        raise ModelFailure("declares neither gives_odf nor gives_sh", "capabilities")
    if sh is None:
        sh = odf @ geometry.sf_to_sh  # least-squares projection, exact for band-limited ODFs
    if caps.gives_peaks:
        if not callable(getattr(fit, "peaks", None)):
            raise ModelFailure(
                f"declares gives_peaks but its fit ({type(fit).__name__}) has no peaks() method",
                "output",
            )
        t0 = time.perf_counter()
        peaks, values = _model_peaks(fit, n_all, spatial, keep)
        model_s += time.perf_counter() - t0
    else:
        if odf is None:
            odf = sh @ geometry.sh_to_sf
        peaks, values = _find_peaks(odf, geometry)
    return peaks, values, sh, model_s


def _preload() -> None:
    """Import what every worker needs once, in the parent, so forked workers start warm."""
    import dipy.core.gradients  # noqa: F401
    import dipy.data  # noqa: F401
    import dipy.direction.peaks  # noqa: F401
    import dipy.reconst.shm  # noqa: F401

    # compile the peak finder once here (or load numba's cache), not in every worker
    geometry = _geometry(8)
    _find_peaks(np.ones((1, len(geometry.sphere.vertices))), geometry)


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _call_fit(model: Any, data: np.ndarray, gtab: Any, mask: np.ndarray, truth: Any) -> Any:
    if truth is not None:
        return model.fit(data, gtab, mask=mask, truth=truth)
    return model.fit(data, gtab, mask=mask)


# state of one fit inside the worker (inherited by chunk workers under fork)
_STATE: dict[str, Any] = {}


def _init_chunk_worker(state: dict[str, Any]) -> None:
    from validation.models.isolation import limit_blas_threads

    limit_blas_threads(1)  # OpenBLAS may reset its thread count in a forked child
    _STATE.clear()
    _STATE.update(state)


def _fit_chunk(chunk: int) -> tuple[str, Any]:
    s = _STATE
    idx = s["chunks"][chunk]
    sub = s["data_flat"][idx].reshape(len(idx), 1, 1, -1)
    np.random.seed(_chunk_seed(s["seed"], chunk))  # noqa: NPY002 (models using the global RNG)
    try:
        t0 = time.perf_counter()
        try:
            fit = _call_fit(s["model"], sub, s["gtab"], np.ones(sub.shape[:3], bool), None)
        except ModelFailure:
            raise
        except Exception as exc:
            raise ModelFailure(
                f"{type(exc).__name__}: {exc}".splitlines()[0], "fit", _format_tb()
            ) from exc
        fit_s = time.perf_counter() - t0
        try:
            peaks, values, sh, odf_s = _extract(fit, s["caps"], sub.shape[:3], s["geometry"])
        except ModelFailure:
            raise
        except Exception as exc:
            raise ModelFailure(
                f"{type(exc).__name__}: {exc}".splitlines()[0], "output", _format_tb()
            ) from exc
    except ModelFailure as failure:
        return "error", failure
    return "ok", (peaks, values, sh, fit_s + odf_s)


def _fit_share(share: int, jobs: int, n_chunks: int) -> dict[int, tuple[str, Any]]:
    """Chunks ``share, share + jobs, ...`` in order, stopping at the first failure."""
    done: dict[int, tuple[str, Any]] = {}
    for chunk in range(share, n_chunks, jobs):
        done[chunk] = _fit_chunk(chunk)
        if done[chunk][0] == "error":
            break
    return done


def _chunk_share(state: dict[str, Any], share: int, jobs: int, n_chunks: int
                 ) -> dict[int, tuple[str, Any]]:
    _init_chunk_worker(state)
    return _fit_share(share, jobs, n_chunks)


def _fit_chunks(state: dict[str, Any], n_chunks: int, jobs: int) -> list[tuple[str, Any]]:
    """Fit every chunk, ``jobs`` processes at once (this one included); results in chunk
    order. Chunks are dealt round-robin (voxel-wise fits cost about the same per chunk),
    which needs no task queue; the first failure in chunk order is raised."""
    try:
        shares = run_shares(_chunk_share, [(state, share, jobs, n_chunks)
                                           for share in range(jobs)])
    except WorkerDied as died:
        raise ModelFailure(
            f"a chunk worker died without a result (exit code {died.exitcode})", "worker"
        ) from None
    done = {chunk: result for share in shares for chunk, result in share.items()}
    errors = [done[c][1] for c in sorted(done) if done[c][0] == "error"]
    if errors:
        raise errors[0]
    return [done[c] for c in range(n_chunks)]


def _format_tb() -> str:
    import traceback

    return traceback.format_exc()


def _fit_job(
    model: Any,
    caps: Capabilities,
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    truth: Any,
    sh_order_max: int,
    jobs: int,
    seed: int,
    chunk_voxels: int,
) -> dict[str, Any]:
    """Runs in the worker process: prepare, fit (chunks), extract; masked voxels only."""
    from dipy.core.gradients import gradient_table

    np.random.seed(_chunk_seed(seed, 2**32 - 1))  # noqa: NPY002 (prepare step)
    geometry = _geometry(sh_order_max)
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)
    model_s = 0.0
    prepared = model
    if callable(getattr(model, "prepare", None)):
        t0 = time.perf_counter()
        try:
            with using_jobs(jobs):  # map_voxels inside prepare uses the fit's processes
                prepared = model.prepare(data, gtab, mask=mask)
        except Exception as exc:
            raise ModelFailure(
                f"{type(exc).__name__}: {exc}".splitlines()[0], "prepare", _format_tb()
            ) from exc
        model_s += time.perf_counter() - t0
    details = dict(getattr(prepared, "details", None) or {})
    idx = np.flatnonzero(mask)
    n_chunks = 0
    if caps.voxelwise and not caps.needs_truth:
        data_flat = data.reshape(-1, data.shape[-1])
        chunks = [idx[i : i + chunk_voxels] for i in range(0, len(idx), chunk_voxels)]
        n_chunks = len(chunks)
        state = {
            "model": prepared, "caps": caps, "data_flat": data_flat, "gtab": gtab,
            "geometry": geometry, "chunks": chunks, "seed": seed,
        }
        results = _fit_chunks(state, len(chunks), min(jobs, len(chunks)))
        if results:
            peaks = np.concatenate([r[1][0] for r in results])
            values = np.concatenate([r[1][1] for r in results])
            sh = np.concatenate([r[1][2] for r in results])
            model_s += sum(r[1][3] for r in results)
        else:
            peaks = np.zeros((0, NPEAKS, 3))
            values = np.zeros((0, NPEAKS))
            sh = np.zeros((0, geometry.n_coeffs))
    else:
        np.random.seed(_chunk_seed(seed, 0))  # noqa: NPY002
        t0 = time.perf_counter()
        try:
            fit = _call_fit(prepared, data, gtab, mask, truth if caps.needs_truth else None)
        except Exception as exc:
            raise ModelFailure(
                f"{type(exc).__name__}: {exc}".splitlines()[0], "fit", _format_tb()
            ) from exc
        model_s += time.perf_counter() - t0
        try:
            peaks, values, sh, odf_s = _extract(fit, caps, mask.shape, geometry, select=idx)
        except ModelFailure:
            raise
        except Exception as exc:
            raise ModelFailure(
                f"{type(exc).__name__}: {exc}".splitlines()[0], "output", _format_tb()
            ) from exc
        model_s += odf_s
    return {
        "idx": idx, "peaks": peaks, "values": values, "sh": sh,
        "details": details, "model_seconds": model_s, "chunks": n_chunks,
    }


# --------------------------------------------------------------------------- inputs


def _check_inputs(
    data: Any, bvals: Any, bvecs: Any, mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = np.asarray(data)
    if data.ndim != 4:
        raise UserError(f"dMRI data must be 4-D (X, Y, Z, N), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise UserError(f"dMRI data must be numeric, got dtype {data.dtype}")
    n = data.shape[-1]
    bvals = np.asarray(bvals, dtype=np.float64)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    if bvals.shape != (n,):
        raise UserError(f"bvals has shape {bvals.shape}; expected ({n},) for {n} volumes")
    if bvecs.shape != (n, 3):
        raise UserError(f"bvecs has shape {bvecs.shape}; expected ({n}, 3) for {n} volumes")
    mask = np.asarray(mask)
    if mask.shape != data.shape[:3]:
        raise UserError(f"mask has shape {mask.shape}; expected {data.shape[:3]} (the data's)")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise UserError("mask must be boolean or 0/1")
        mask = mask.astype(bool)
    return data.astype(np.float64, copy=False), bvals, bvecs, mask


def _n_shells(bvals: np.ndarray) -> int:
    from dipy.core.gradients import unique_bvals_tolerance

    return int(np.sum(unique_bvals_tolerance(bvals[bvals > B0_THRESHOLD], tol=20) > 0))


def _code_version(model: Any) -> dict[str, Any]:
    import sys

    import dipy

    from validation import __version__
    from validation.cache import source_digest

    module = sys.modules.get(type(model).__module__)
    source_hash = None
    if module is not None and getattr(module, "__file__", None):
        try:
            source_hash = source_digest(module)
        except OSError:
            pass
    return {
        "xscale": __version__,
        "pipeline": FIT_PIPELINE_VERSION,
        "dipy": dipy.__version__,
        "model_source": source_hash,
    }


def fit_cache_key(
    spec: ModelSpec,
    model: Any,
    caps: Capabilities,
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    truth: Any,
    sh_order_max: int,
    seed: int,
) -> str:
    """Content key of one fit: model name, params, data, gradients, mask, code version."""
    from validation.cache import content_key, hash_array

    parts: dict[str, Any] = {
        "name": spec.name,
        "params": spec.params,
        "data": hash_array(data),
        "bvals": hash_array(bvals),
        "bvecs": hash_array(bvecs),
        "mask": hash_array(mask),
        "sh_order_max": sh_order_max,
        "seed": seed,
        "code": _code_version(model),
    }
    if caps.needs_truth and truth is not None:
        parts["truth"] = {
            a: hash_array(np.asarray(getattr(truth, a)))
            for a in ("peaks", "fractions", "fod_sh")
            if getattr(truth, a, None) is not None
        }
    return content_key("model-fit", **parts)


# --------------------------------------------------------------------------- entry point


def fit_case(
    spec: ModelSpec,
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    *,
    truth: Any = None,
    sh_order_max: int = 8,
    jobs: int = 1,
    cache_dir: Path | str | None = None,
    seed: int = 0,
    chunk_voxels: int = CHUNK_VOXELS,
) -> ModelOutputs:
    """Fit one model on one case and return peaks, peak values and SH.

    Parameters
    ----------
    spec : ModelSpec
    data : ndarray, shape (X, Y, Z, N)
        dMRI signal (any real dtype; fitted in float64).
    bvals : ndarray, shape (N,)
        s/mm^2; volumes with b <= 50 are b0.
    bvecs : ndarray, shape (N, 3)
        Unit gradient directions in the voxel (ijk) frame.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels to fit; the others get zero peaks and zero SH.
    truth : object, optional
        Ground truth (``.peaks``, ``.fractions``, ``.fod_sh``), given to the model only when
        it declares ``needs_truth``.
    sh_order_max : int
        Even SH order of ``ModelOutputs.sh`` (8 -> 45 coefficients).
    jobs : int
        Processes fitting voxel chunks in parallel (voxel-wise models); results are
        identical for any ``jobs`` (chunks do not depend on it).
    cache_dir : Path, optional
        Content-hash cache of fits (see :mod:`validation.cache`).
    seed : int
        Seeds numpy's global generator per chunk for models that draw from it.
    chunk_voxels : int
        Voxels per chunk.

    Returns
    -------
    ModelOutputs

    Raises
    ------
    ModelFailure
        The model failed on this case: it raised (``reason = "ExcType: message"``),
        returned NaN/Inf or wrong shapes, exceeded ``spec.timeout_s``, or needs several
        shells on a single-shell scheme. The run records it and goes on.
    UserError
        Bad inputs (shapes) or an unknown model name.
    """
    data, bvals, bvecs, mask = _check_inputs(data, bvals, bvecs, mask)
    if sh_order_max < 0 or sh_order_max % 2:
        raise UserError(f"sh_order_max must be even and >= 0, got {sh_order_max}")
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs must be a positive integer, got {jobs!r}")
    if chunk_voxels < 1:
        raise UserError(f"chunk_voxels must be >= 1, got {chunk_voxels}")
    resolve_factory(spec.name)  # unknown names are the user's error, not the model's
    _preload()
    _geometry(sh_order_max)  # computed here once, inherited by forked workers
    t_start = time.perf_counter()
    model = make_model(spec.name, spec.params)
    caps = capabilities_of(model)
    if caps.multi_shell_only:
        shells = _n_shells(bvals)
        if shells < 2:
            raise ModelFailure(
                f"{spec.name} needs a multi-shell scheme (at least 2 non-zero b-value shells); "
                f"this one has {shells}",
                "capabilities",
            )
    if caps.needs_truth and truth is None:
        raise ModelFailure(f"{spec.name} needs the ground truth and none was given", "capabilities")

    params = dict(PEAK_PARAMS)
    params["source"] = "model peaks()" if caps.gives_peaks else "dipy peak finder on the ODF"
    params["sh"] = (
        f"model shm_coeff (descoteaux07, legacy=False) to order {sh_order_max}"
        if caps.gives_sh
        else f"least-squares SH fit (descoteaux07, legacy=False, order {sh_order_max}) "
        "of the ODF on the sphere"
    )

    cache = key = None
    if cache_dir is not None:
        from validation.cache import ContentCache

        cache = ContentCache(cache_dir)
        key = fit_cache_key(spec, model, caps, data, bvals, bvecs, mask, truth, sh_order_max, seed)
        hit = cache.load("model-fit", key)
        if hit is not None:
            arrays, meta = hit
            return ModelOutputs(
                peaks=arrays["peaks"], peak_values=arrays["peak_values"], sh=arrays["sh"],
                capabilities=caps, peak_params=meta.get("peak_params", params),
                fit_seconds=float(meta.get("fit_seconds", np.nan)), cached=True,
                details=meta.get("details", {}),
            )

    result = run_isolated(
        _fit_job, model, caps, data, bvals, bvecs, mask, truth, sh_order_max, jobs, seed,
        chunk_voxels, timeout_s=float(spec.timeout_s),
    )
    shape = mask.shape
    idx = result["idx"]
    n = len(idx)
    c = _n_coeffs(sh_order_max)
    for name, arr, tail in (
        ("peaks", result["peaks"], (NPEAKS, 3)),
        ("peak values", result["values"], (NPEAKS,)),
        ("SH", result["sh"], (c,)),
    ):
        if arr.shape != (n,) + tail:  # pragma: no cover - guarded in the worker
            raise ModelFailure(f"{name} came back with shape {arr.shape}", "output")
    peaks = np.zeros(shape + (NPEAKS, 3))
    values = np.zeros(shape + (NPEAKS,))
    sh = np.zeros(shape + (c,))
    peaks.reshape(-1, NPEAKS, 3)[idx] = result["peaks"]
    values.reshape(-1, NPEAKS)[idx] = result["values"]
    sh.reshape(-1, c)[idx] = result["sh"]
    fit_seconds = time.perf_counter() - t_start
    details = dict(result["details"])
    details.update(
        model_seconds=result["model_seconds"], chunks=result["chunks"], jobs=jobs,
        chunk_voxels=chunk_voxels,
    )
    outputs = ModelOutputs(
        peaks=peaks, peak_values=values, sh=sh, capabilities=caps, peak_params=params,
        fit_seconds=fit_seconds, cached=False, details=details,
    )
    if cache is not None and key is not None:
        cache.store(
            "model-fit", key, {"peaks": peaks, "peak_values": values, "sh": sh},
            {"peak_params": params, "fit_seconds": fit_seconds, "details": details,
             "model": spec.name, "params": spec.params},
        )
    return outputs
