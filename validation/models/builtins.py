"""Built-in dMRI models (dipy) by registry name: dti, csa, csd, msmt-csd, sfm, gqi, forecast,
mapmri.

Each factory takes keyword-only hyper-parameters and returns an object that follows the
plug-in contract (:mod:`validation.models.protocol`); the dipy ones go through the one
adapter :class:`~validation.models.adapter.DipyReconstModel`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from validation.models.adapter import DipyReconstModel
from validation.models.protocol import Capabilities

__all__ = [
    "CSDModel",
    "LSIFitter",
    "MSMTCSDModel",
    "DTIModel",
    "csa",
    "csd",
    "dti",
    "forecast",
    "gqi",
    "mapmri",
    "msmt_csd",
    "response_voxels",
    "sfm",
]


class _TensorPeaksFit:
    """A dipy ``TensorFit`` whose one peak is the principal eigenvector."""

    def __init__(self, fit: Any):
        self._fit = fit

    def odf(self, sphere: Any) -> np.ndarray:
        return self._fit.odf(sphere)

    def peaks(self) -> tuple[np.ndarray, np.ndarray]:
        evecs = np.asarray(self._fit.evecs)[..., :, 0]  # columns are eigenvectors
        norms = np.linalg.norm(evecs, axis=-1, keepdims=True)
        ok = (norms > 1e-12) & np.isfinite(norms)
        direction = np.where(ok, evecs / np.where(ok, norms, 1.0), 0.0)
        values = np.where(ok[..., 0], np.nan_to_num(self._fit.fa), 0.0)
        return direction[..., None, :], values[..., None]


class DTIModel(DipyReconstModel):
    """Diffusion tensor: one peak, the principal eigenvector (weighted by FA).

    The tensor ODF of a planar tensor (a crossing) has a ring of maxima; a peak finder on
    it returns arbitrary points of the ring, which is not what anyone reads from DTI.
    """

    def __init__(self, *, fit_method: str = "WLS"):
        from dipy.reconst.dti import TensorModel

        super().__init__(
            TensorModel,
            name="dti",
            capabilities=Capabilities(gives_odf=True, gives_peaks=True),
            fit_method=fit_method,
        )

    def wrap_fit(self, fit: Any) -> Any:
        return _TensorPeaksFit(fit)


def dti(*, fit_method: str = "WLS") -> DTIModel:
    """Diffusion tensor (dipy ``TensorModel``); one peak (principal eigenvector), SH of the
    tensor ODF."""
    return DTIModel(fit_method=fit_method)


def csa(*, sh_order_max: int = 8, smooth: float = 0.006) -> DipyReconstModel:
    """Constant solid angle Q-ball (dipy ``CsaOdfModel``, Aganj 2010)."""
    from dipy.reconst.shm import CsaOdfModel

    return DipyReconstModel(CsaOdfModel, name="csa", sh_order_max=sh_order_max, smooth=smooth)


def gqi(*, sampling_length: float = 1.2, method: str = "gqi2") -> DipyReconstModel:
    """Generalized q-sampling imaging (dipy ``GeneralizedQSamplingModel``)."""
    from dipy.reconst.gqi import GeneralizedQSamplingModel

    return DipyReconstModel(
        GeneralizedQSamplingModel, name="gqi", sampling_length=sampling_length, method=method
    )


def sfm(
    *,
    response: tuple[float, float, float] = (0.0015, 0.0005, 0.0005),
    solver: str = "NNLS",
    l1_ratio: float = 0.5,
    alpha: float = 0.001,
) -> DipyReconstModel:
    """Sparse fascicle model (dipy ``SparseFascicleModel``, Rokem 2015).

    ``solver="NNLS"`` by default: dipy's default ``"ElasticNet"`` needs scikit-learn.
    """
    from dipy.reconst.sfm import SparseFascicleModel

    params: dict[str, Any] = {"response": tuple(response), "solver": solver}
    if solver == "ElasticNet":
        params.update(l1_ratio=l1_ratio, alpha=alpha)
    return DipyReconstModel(SparseFascicleModel, name="sfm", **params)


def forecast(
    *, sh_order_max: int = 8, lambda_lb: float = 1e-3, dec_alg: str = "CSD"
) -> DipyReconstModel:
    """FORECAST fODF (Anderson 2005, dipy ``ForecastModel``); multi-shell only."""
    from dipy.reconst.forecast import ForecastModel

    return DipyReconstModel(
        ForecastModel,
        name="forecast",
        capabilities=Capabilities(multi_shell_only=True),
        sh_order_max=sh_order_max,
        lambda_lb=lambda_lb,
        dec_alg=dec_alg,
    )


def mapmri(
    *, radial_order: int = 6, laplacian_weighting: float = 0.2
) -> DipyReconstModel:
    """MAP-MRI with Laplacian regularisation (dipy ``MapmriModel``); multi-shell only."""
    from dipy.reconst.mapmri import MapmriModel

    return DipyReconstModel(
        MapmriModel,
        name="mapmri",
        capabilities=Capabilities(multi_shell_only=True),
        radial_order=radial_order,
        laplacian_regularization=True,
        laplacian_weighting=laplacian_weighting,
        positivity_constraint=False,
    )


def response_voxels(
    gtab: Any,
    data: np.ndarray,
    mask: np.ndarray | None,
    *,
    fa_thr: float = 0.7,
    min_voxels: int = 10,
) -> np.ndarray:
    """Voxels to estimate a single-fibre response from: FA above ``fa_thr`` within ``mask``.

    When fewer than ``min_voxels`` pass, the ``min_voxels`` voxels of highest FA in the mask
    are used instead (small phantoms, low FA ex vivo data).

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    return _response_voxels_and_evals(gtab, data, mask, fa_thr=fa_thr,
                                      min_voxels=min_voxels)[0]


def _response_voxels_and_evals(
    gtab: Any, data: np.ndarray, mask: np.ndarray | None, *, fa_thr: float, min_voxels: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`response_voxels` and the tensor eigenvalues (X, Y, Z, 3) of the same fit."""
    from dipy.reconst.dti import TensorModel

    from validation.models.parallel import map_voxels

    if mask is None:
        mask = np.ones(data.shape[:-1], dtype=bool)
    tensor = TensorModel(gtab)

    def fa_evals(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fit = tensor.fit(voxels)
        return fit.fa, fit.evals

    # the one serial step of a CSD fit: spread over the fit's processes
    fa_in, evals_in = map_voxels(fa_evals, data[mask])
    fa = np.zeros(mask.shape)
    fa[mask] = np.where(np.isfinite(fa_in), fa_in, 0.0)
    evals = np.zeros(mask.shape + (3,))
    evals[mask] = evals_in
    selected = mask & (fa > fa_thr)
    if selected.sum() < min_voxels:
        flat = np.argsort(fa, axis=None)[::-1][: min(min_voxels, int(mask.sum()))]
        selected = np.zeros(mask.shape, dtype=bool)
        selected.flat[flat] = True
    return selected, evals


def response_ssst(gtab: Any, data: np.ndarray, mask: np.ndarray | None, *, fa_thr: float
                  ) -> tuple[tuple[np.ndarray, float], np.ndarray]:
    """Single-fibre response ``((l1, l2, l2), S0)`` and the voxels it came from.

    The estimator of dipy's ``response_from_mask_ssst`` (mean of the two largest tensor
    eigenvalues and of the b0 signal over the voxels), computed from the one tensor fit
    that selected the voxels instead of fitting them a second time: this serial step
    runs before the parallel chunks of a fit.
    """
    selected, evals = _response_voxels_and_evals(gtab, data, mask, fa_thr=fa_thr)
    lambdas = evals[selected][:, :2]
    s0s = data[selected][:, np.nonzero(gtab.b0s_mask)[0]]
    s0 = float(np.mean(s0s)) if s0s.size else 0.0
    l01 = np.mean(lambdas, axis=0)
    return (np.array([l01[0], l01[1], l01[1]]), s0), selected


class CSDModel(DipyReconstModel):
    """Constrained spherical deconvolution (Tournier 2007) with automatic response.

    The single-fibre response is estimated once per case from the voxels of
    :func:`response_voxels` (FA > ``fa_thr`` within the mask) with dipy's
    ``response_from_mask_ssst``, unless ``response=((l1, l2, l3), S0)`` is given.
    """

    def __init__(
        self,
        *,
        sh_order_max: int = 8,
        lambda_: float = 1.0,
        tau: float = 0.1,
        fa_thr: float = 0.7,
        response: Any = None,
    ):
        from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

        super().__init__(
            ConstrainedSphericalDeconvModel,
            name="csd",
            sh_order_max=sh_order_max,
            lambda_=lambda_,
            tau=tau,
        )
        self.fa_thr = fa_thr
        self.response = response

    def build(self, gtab: Any, data: np.ndarray, mask: np.ndarray | None) -> Any:
        response = self.response
        if response is None:
            response, voxels = response_ssst(gtab, data, mask, fa_thr=self.fa_thr)
            self.details = {
                "response_evals": [float(v) for v in response[0]],
                "response_s0": float(response[1]),
                "response_voxels": int(voxels.sum()),
            }
        else:
            response = (np.asarray(response[0], dtype=float), float(response[1]))
        return self.model_class(gtab, response, **self.params)


def csd(
    *,
    sh_order_max: int = 8,
    lambda_: float = 1.0,
    tau: float = 0.1,
    fa_thr: float = 0.7,
    response: Any = None,
) -> CSDModel:
    """Constrained spherical deconvolution with a response estimated within the mask."""
    return CSDModel(
        sh_order_max=sh_order_max, lambda_=lambda_, tau=tau, fa_thr=fa_thr, response=response
    )


class LSIFitter:
    """Exact solver of ``min ||X f - s||^2`` subject to ``G f >= 0`` (one voxel).

    Lawson & Hanson's reduction of least squares with inequalities (LSI) to a least
    distance problem solved by non-negative least squares (scipy ``nnls``); a drop-in for
    dipy's cvxpy-based ``QpFitter`` in MSMT-CSD, needing no cvxpy, deterministic.

    Parameters
    ----------
    X : ndarray, shape (N, n)
        Design matrix, full column rank.
    G : ndarray, shape (m, n)
        Constraint matrix (fODF on a sphere and the isotropic compartments).
    """

    def __init__(self, X: np.ndarray, G: np.ndarray):
        q, r = np.linalg.qr(np.asarray(X, dtype=np.float64))
        self._q = q
        self._r_inv = np.linalg.inv(r)
        self._e = np.asarray(G, dtype=np.float64) @ self._r_inv  # (m, n)
        n = self._e.shape[1]
        self._rhs = np.zeros(n + 1)
        self._rhs[n] = 1.0
        # z = R f - Q^T s; minimise |z| subject to E z >= -E Q^T s (a least distance problem)

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        from scipy.optimize import nnls

        c = self._q.T @ np.asarray(signal, dtype=np.float64)
        h = -self._e @ c
        n = self._e.shape[1]
        if np.all(h <= 0):  # unconstrained optimum is feasible
            return self._r_inv @ c
        a = np.vstack([self._e.T, h[None, :]])  # (n + 1, m)
        u, _ = nnls(a, self._rhs, maxiter=50 * a.shape[1])
        resid = a @ u - self._rhs
        if abs(resid[n]) < 1e-12:  # infeasible cannot happen with G f = 0 feasible
            return np.zeros(n)
        z = -resid[:n] / resid[n]
        return self._r_inv @ (z + c)


class MSMTCSDModel(DipyReconstModel):
    """Multi-shell multi-tissue CSD (Jeurissen 2014), dipy ``MultiShellDeconvModel``.

    The white-matter response per shell comes from the high-FA voxels in the mask
    (``response_from_mask_msmt``); grey matter and CSF are isotropic with mean
    diffusivities ``gm_md`` and ``csf_md`` (mm^2/s) and the white-matter S0, since
    phantoms and tissue blocks rarely contain enough of either to estimate them.
    """

    def __init__(
        self,
        *,
        sh_order_max: int = 8,
        fa_thr: float = 0.7,
        gm_md: float = 0.8e-3,
        csf_md: float = 3.0e-3,
    ):
        from dipy.reconst.mcsd import MultiShellDeconvModel

        super().__init__(
            MultiShellDeconvModel,
            name="msmt-csd",
            capabilities=Capabilities(multi_shell_only=True),
        )
        self.sh_order_max = sh_order_max
        self.fa_thr = fa_thr
        self.gm_md = gm_md
        self.csf_md = csf_md

    def build(self, gtab: Any, data: np.ndarray, mask: np.ndarray | None) -> Any:
        from dipy.core.gradients import unique_bvals_tolerance
        from dipy.reconst.mcsd import multi_shell_fiber_response, response_from_mask_msmt

        voxels = response_voxels(gtab, data, mask, fa_thr=self.fa_thr)
        wm, _, _ = response_from_mask_msmt(gtab, data, voxels, voxels, voxels)
        gm = np.column_stack([np.full((len(wm), 3), self.gm_md), wm[:, 3]])
        csf = np.column_stack([np.full((len(wm), 3), self.csf_md), wm[:, 3]])
        ubvals = unique_bvals_tolerance(gtab.bvals)
        response = multi_shell_fiber_response(self.sh_order_max, ubvals, wm, gm, csf)
        self.details = {
            "response_wm": wm.tolist(),
            "response_voxels": int(voxels.sum()),
            "solver": "least squares with inequality constraints via NNLS (Lawson-Hanson)",
        }
        model = self.model_class(gtab, response, sh_order_max=self.sh_order_max)
        model.fitter = LSIFitter(model._X, model.fitter._reg)
        return model


def msmt_csd(
    *, sh_order_max: int = 8, fa_thr: float = 0.7, gm_md: float = 0.8e-3, csf_md: float = 3.0e-3
) -> MSMTCSDModel:
    """Multi-shell multi-tissue CSD; fails with a clear reason on single-shell schemes."""
    return MSMTCSDModel(sh_order_max=sh_order_max, fa_thr=fa_thr, gm_md=gm_md, csf_md=csf_md)
