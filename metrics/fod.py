"""FOD agreement: angular correlation (ACC), Jensen-Shannon divergence on the sphere,
and orientation dispersion (ODI) from spherical harmonics.

SH coefficients are in dipy's ``descoteaux07`` basis with ``legacy=False`` (design.md),
even orders only, ordered by degree l (1 coefficient for l = 0, then 5 for l = 2, ...).
ACC needs only that both inputs share one orthonormal basis ordered by degree; ODI uses
the ``descoteaux07`` l <= 2 coefficients explicitly.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from metrics._validate import as_float_array, broadcast_pair
from metrics.errors import MetricInputError


def sh_order_from_ncoeffs(n_coeffs: int) -> int:
    """Maximal SH order of a symmetric (even-order) basis with ``n_coeffs`` coefficients.

    ``n_coeffs = (L + 1)(L + 2) / 2`` for even ``L``: 1, 6, 15, 28, 45, 66, 91, ...

    Raises
    ------
    MetricInputError
        When ``n_coeffs`` is not such a number.

    Examples
    --------
    >>> sh_order_from_ncoeffs(45)
    8
    """
    n = int(n_coeffs)
    order = int(round((np.sqrt(8 * n + 1) - 3) / 2))
    if n < 1 or order % 2 or (order + 1) * (order + 2) // 2 != n:
        raise MetricInputError(
            f"{n_coeffs} SH coefficients is not an even-order symmetric basis "
            "(expected 1, 6, 15, 28, 45, 66, 91, ...)"
        )
    return order


def sh_degrees(sh_order_max: int) -> np.ndarray:
    """Degree l of each coefficient of an even-order symmetric basis, shape (n_coeffs,)."""
    return np.concatenate([np.full(2 * ell + 1, ell) for ell in range(0, sh_order_max + 1, 2)])


def _check_sh_pair(sh_a, sh_b, sh_order_max: int | None):
    a = as_float_array(sh_a, "sh_a")
    b = as_float_array(sh_b, "sh_b")
    if a.ndim < 1 or b.ndim < 1:
        raise MetricInputError("sh_a and sh_b must have a last axis of SH coefficients")
    order_a = sh_order_from_ncoeffs(a.shape[-1])
    order_b = sh_order_from_ncoeffs(b.shape[-1])
    if order_a != order_b:
        raise MetricInputError(
            f"sh_a has SH order {order_a} ({a.shape[-1]} coefficients) but sh_b has order "
            f"{order_b} ({b.shape[-1]} coefficients); resample both to one order first"
        )
    if sh_order_max is not None and order_a != sh_order_max:
        raise MetricInputError(
            f"sh_a and sh_b have SH order {order_a}, expected sh_order_max={sh_order_max}"
        )
    a, b = broadcast_pair(a, b, "sh_a", "sh_b")
    return a, b, order_a


def acc(sh_a, sh_b, *, sh_order_max: int | None = None) -> np.ndarray:
    """Angular correlation coefficient (Anderson 2005) over the orders l >= 2.

    ``ACC = sum_{l>=2,m} u_lm v_lm / sqrt(sum_{l>=2,m} u_lm^2 * sum_{l>=2,m} v_lm^2)``:
    the correlation of the two functions on the sphere after removing their means
    (the l = 0 term, which some public code keeps and so inflates the value).

    Parameters
    ----------
    sh_a, sh_b : array_like of shape (..., n_coeffs)
        SH coefficients in one orthonormal even-order basis (descoteaux07, legacy=False
        by convention); the leading axes broadcast.
    sh_order_max : int, optional
        Expected order; when given, inputs of any other order are an error.

    Returns
    -------
    ndarray of shape (...), float64
        ACC in [-1, 1]; NaN where either input has no power at l >= 2 (undefined) or
        contains NaN.

    Raises
    ------
    MetricInputError
        Coefficient counts that are not an even-order basis, different orders, shapes
        that do not broadcast.

    Examples
    --------
    >>> u = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    >>> float(acc(u, [5.0, 2.0, 0, 0, 0, 0]))
    1.0
    """
    a, b, _ = _check_sh_pair(sh_a, sh_b, sh_order_max)
    ua = a[..., 1:].astype(np.float64, copy=False)
    ub = b[..., 1:].astype(np.float64, copy=False)
    num = np.einsum("...i,...i->...", ua, ub)
    den = np.sqrt(np.einsum("...i,...i->...", ua, ua) * np.einsum("...i,...i->...", ub, ub))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    out = np.where(np.isnan(num) | np.isnan(den), np.nan, out)
    return np.clip(out, -1.0, 1.0)


def _triangle_solid_angles(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Solid angle of each spherical triangle (Van Oosterom and Strackee 1983)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    triple = np.abs(np.einsum("ij,ij->i", a, np.cross(b, c)))
    denom = 1.0 + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c)
    denom += np.einsum("ij,ij->i", c, a)
    return 2.0 * np.arctan2(triple, denom)


def sphere_weights(sphere) -> np.ndarray:
    """Quadrature weights of a sphere's vertices: a third of the adjacent triangles' areas.

    Parameters
    ----------
    sphere : dipy.core.sphere.Sphere or HemiSphere
        Unit vertices (V, 3); triangles from ``sphere.faces`` (dipy builds them from the
        convex hull when absent). A HemiSphere is mirrored to a full sphere first and
        each vertex gets the area of itself and its antipode (what an antipodally
        symmetric function on the hemisphere represents).

    Returns
    -------
    ndarray of shape (V,), float64
        Positive weights that sum to 1 (solid angles in units of 4 pi steradians).
    """
    vertices = np.asarray(getattr(sphere, "vertices", None), dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MetricInputError("sphere must be a dipy Sphere or HemiSphere with (V, 3) vertices")
    n_vertices = len(vertices)
    is_hemisphere = type(sphere).__name__ == "HemiSphere" and hasattr(sphere, "mirror")
    full = sphere.mirror() if is_hemisphere else sphere
    full_vertices = np.asarray(full.vertices, dtype=np.float64)
    full_vertices = full_vertices / np.linalg.norm(full_vertices, axis=1, keepdims=True)
    faces = np.asarray(full.faces, dtype=np.int64)
    areas = _triangle_solid_angles(full_vertices, faces)
    weights = np.bincount(faces.ravel(), weights=np.repeat(areas / 3.0, 3),
                          minlength=len(full_vertices))
    if len(full_vertices) != n_vertices:  # mirrored hemisphere: fold the antipodes back
        weights = weights[:n_vertices] + weights[n_vertices:]
    if np.any(weights <= 0):
        raise MetricInputError("sphere has vertices in no triangle; cannot derive weights")
    return weights / weights.sum()


def _resolve_weights(sphere, weights, n_vertices: int) -> np.ndarray:
    if weights is None:
        if sphere is None:
            raise MetricInputError("jsd needs a sphere or explicit quadrature weights")
        w = sphere_weights(sphere)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise MetricInputError("weights must be a 1-D array of non-negative finite numbers")
    if len(w) != n_vertices:
        raise MetricInputError(
            f"the ODFs have {n_vertices} values per voxel but the sphere has {len(w)} vertices"
        )
    return w


def jsd(odf_a, odf_b, sphere=None, *, weights=None) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) of two ODFs sampled on a sphere.

    Negative values are clipped to 0; each ODF is normalised with the quadrature
    weights w so that ``sum w p = 1``; with ``m = (p + q) / 2``,
    ``JSD = 1/2 sum w p log2(p / m) + 1/2 sum w q log2(q / m)`` (0 log 0 = 0).

    Parameters
    ----------
    odf_a, odf_b : array_like of shape (..., V)
        ODF values at the sphere's vertices; the leading axes broadcast.
    sphere : dipy.core.sphere.Sphere or HemiSphere, optional
        The sampling sphere; default weights from :func:`sphere_weights`.
    weights : array_like of shape (V,), optional
        Quadrature weights (any scale); overrides the sphere's.

    Returns
    -------
    ndarray of shape (...), float64
        JSD in [0, 1]: 0 for equal ODFs, 1 for disjoint supports; NaN where an ODF has
        no positive value (undefined) or contains NaN.

    Raises
    ------
    MetricInputError
        Different numbers of values, a sphere of another size, bad weights.
    """
    a = as_float_array(odf_a, "odf_a")
    b = as_float_array(odf_b, "odf_b")
    if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-1]:
        raise MetricInputError(
            f"odf_a has shape {a.shape} but odf_b has shape {b.shape}; the last axes must match"
        )
    w = _resolve_weights(sphere, weights, a.shape[-1])
    a, b = broadcast_pair(a, b, "odf_a", "odf_b")
    lead = a.shape[:-1]
    a2 = np.ascontiguousarray(a.reshape(-1, a.shape[-1]))
    b2 = np.ascontiguousarray(b.reshape(-1, b.shape[-1]))
    if a2.dtype != b2.dtype:
        a2, b2 = a2.astype(np.float64), b2.astype(np.float64)
    out = np.empty(a2.shape[0], dtype=np.float64)
    _jsd_rows(a2, b2, w, out)
    return out.reshape(lead)


#: numba fast-math flags without "no NaN / no inf" (NaN checks must survive) and
#: without "approximate reciprocal" (2 a / (a + a) must stay exactly 1)
_FASTMATH = {"nsz", "contract", "afn", "reassoc"}
_TINY = 1e-300
_SQRT2 = 1.4142135623730951
_TWO_OVER_LN2 = 2.0 / np.log(2.0)
_MANTISSA_BITS = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000


@numba.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _log2_series(t):  # pragma: no cover - compiled
    """``log2((1 + t) / (1 - t)) = 2 / ln 2 * atanh(t)`` for |t| <= 0.172 (10 terms)."""
    t2 = t * t
    poly = 1.0 / 19.0
    poly = poly * t2 + 1.0 / 17.0
    poly = poly * t2 + 1.0 / 15.0
    poly = poly * t2 + 1.0 / 13.0
    poly = poly * t2 + 1.0 / 11.0
    poly = poly * t2 + 1.0 / 9.0
    poly = poly * t2 + 1.0 / 7.0
    poly = poly * t2 + 1.0 / 5.0
    poly = poly * t2 + 1.0 / 3.0
    poly = poly * t2 + 1.0
    return _TWO_OVER_LN2 * t * poly


@numba.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _weighted_log2_pair_sum(ca, xa, cb, xb):  # pragma: no cover - compiled
    """``sum_j ca_j log2(xa_j) + cb_j log2(xb_j)`` for normal positive x; overwrites x.

    log2 x = e + log2 m with x = m 2^e, m in [1, 2) read from the bits; m is folded
    into [sqrt(1/2), sqrt(2)) and ``log2 m = 2 / ln 2 * atanh((m - 1) / (m + 1))`` by
    its series (relative error < 1e-16). The two quotients share one division. No
    branches, so the loops vectorise; exact at x = 1 (0) and x = 2 (1).
    """
    bits_a = xa.view(np.int64)
    bits_b = xb.view(np.int64)
    total = 0.0
    for j in range(len(xa)):
        ba = bits_a[j]
        bb = bits_b[j]
        total += ca[j] * np.float64(((ba >> 52) & 0x7FF) - 1023)
        total += cb[j] * np.float64(((bb >> 52) & 0x7FF) - 1023)
        bits_a[j] = (ba & _MANTISSA_BITS) | _ONE_BITS
        bits_b[j] = (bb & _MANTISSA_BITS) | _ONE_BITS
    for j in range(len(xa)):
        ma = xa[j]
        mb = xb[j]
        high_a = ma > _SQRT2
        high_b = mb > _SQRT2
        ma = ma * 0.5 if high_a else ma
        mb = mb * 0.5 if high_b else mb
        inv = 1.0 / ((ma + 1.0) * (mb + 1.0))
        ta = (ma - 1.0) * (mb + 1.0) * inv
        tb = (mb - 1.0) * (ma + 1.0) * inv
        total += ca[j] * (_log2_series(ta) + (1.0 if high_a else 0.0))
        total += cb[j] * (_log2_series(tb) + (1.0 if high_b else 0.0))
    return total


#: rows per parallel task in :func:`_jsd_rows` (scratch buffers are reused within one)
_JSD_ROWS_PER_TASK = 64


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _jsd_rows(p, q, w, out):  # pragma: no cover - compiled
    """JSD per row (see :func:`jsd`): ``sum w p log2(2p / (p + q))`` and the same for q."""
    n_rows, n_vertices = p.shape
    n_tasks = (n_rows + _JSD_ROWS_PER_TASK - 1) // _JSD_ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        weight_a = np.empty(n_vertices)
        weight_b = np.empty(n_vertices)
        ratio_a = np.empty(n_vertices)
        ratio_b = np.empty(n_vertices)
        for i in range(task * _JSD_ROWS_PER_TASK, min(n_rows, (task + 1) * _JSD_ROWS_PER_TASK)):
            mass_p = 0.0
            mass_q = 0.0
            finite = 0.0  # stays 0 unless a value is NaN or infinite (x * 0 is then NaN)
            for j in range(n_vertices):
                a = p[i, j]
                b = q[i, j]
                finite += a * 0.0 + b * 0.0
                mass_p += w[j] * max(a, 0.0)
                mass_q += w[j] * max(b, 0.0)
            if not (finite == 0.0) or not (0 < mass_p < np.inf) or not (0 < mass_q < np.inf):
                out[i] = np.nan
                continue
            inv_p = 1.0 / mass_p
            inv_q = 1.0 / mass_q
            for j in range(n_vertices):
                a = max(p[i, j] * inv_p, 0.0)
                b = max(q[i, j] * inv_q, 0.0)
                weight_a[j] = w[j] * a  # 0 where a = 0: 0 log 0 = 0 whatever the ratio
                weight_b[j] = w[j] * b
                # p / m = 2 a / (a + b); q / m = 2 - p / m (exactly 1 and 1 when a = b)
                r = 2.0 * a / max(a + b, _TINY)
                ratio_a[j] = max(r, _TINY)
                ratio_b[j] = max(2.0 - r, _TINY)
            total = _weighted_log2_pair_sum(weight_a, ratio_a, weight_b, ratio_b)
            out[i] = min(max(0.5 * total, 0.0), 1.0)


@lru_cache(maxsize=1)
def _order2_tensor_projection() -> np.ndarray:
    """G (3, 3, 6): ``x_a x_b = sum_j G[a, b, j] Y_j(x)`` in descoteaux07 (legacy=False).

    Exact: products of two coordinates lie in the span of the l = 0 and l = 2 harmonics,
    so a least-squares fit on any well-spread point set recovers them to rounding.
    """
    from dipy.core.sphere import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    rng = np.random.default_rng(12345)
    pts = rng.normal(size=(200, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    _, theta, phi = cart2sphere(pts[:, 0], pts[:, 1], pts[:, 2])
    basis, _, _ = real_sh_descoteaux(2, theta, phi, legacy=False)
    products = np.einsum("pa,pb->pab", pts, pts).reshape(len(pts), 9)
    coef, *_ = np.linalg.lstsq(basis, products, rcond=None)
    return coef.T.reshape(3, 3, 6)


def orientation_tensor(sh) -> np.ndarray:
    """Second moment ``T = E[x x^T]`` of the FOD as a distribution of axes.

    Parameters
    ----------
    sh : array_like of shape (..., n_coeffs)
        descoteaux07 (legacy=False) even-order coefficients; only l <= 2 matter.

    Returns
    -------
    ndarray of shape (..., 3, 3), float64
        Symmetric, trace 1; NaN where the FOD's integral (l = 0 term) is not positive.
    """
    arr = as_float_array(sh, "sh")
    if arr.ndim < 1:
        raise MetricInputError("sh must have a last axis of SH coefficients")
    order = sh_order_from_ncoeffs(arr.shape[-1])
    if order < 2:
        raise MetricInputError(f"sh has SH order {order}; dispersion needs order >= 2")
    low = arr[..., :6].astype(np.float64)
    g = _order2_tensor_projection()
    integral = low[..., 0] * np.sqrt(4 * np.pi)  # integral of f over the sphere
    moment = np.einsum("abj,...j->...ab", g, low)
    with np.errstate(invalid="ignore", divide="ignore"):
        tensor = moment / np.where(integral > 0, integral, np.nan)[..., None, None]
    return tensor


@lru_cache(maxsize=1)
def _watson_table() -> tuple[np.ndarray, np.ndarray]:
    """Watson concentration kappa (>= 0) against the mean squared cosine to the axis."""
    from scipy.special import dawsn

    kappa = np.concatenate([[0.0], np.logspace(-4, 6, 4000)])
    root = np.sqrt(kappa[1:])
    moment = 1.0 / (2 * root * dawsn(root)) - 1.0 / (2 * kappa[1:])
    mean_cos2 = np.concatenate([[1.0 / 3.0], moment])
    return mean_cos2, kappa


def odi_from_sh(sh) -> np.ndarray:
    """Orientation dispersion index of an FOD, as NODDI defines it for a Watson distribution.

    The largest eigenvalue mu of :func:`orientation_tensor` is the mean squared cosine
    to the main axis; the Watson concentration kappa with that moment
    (``mu = 1 / (2 sqrt(k) D(sqrt(k))) - 1 / (2 k)``, D = Dawson's integral) gives
    ``ODI = 2 / pi * arctan(1 / kappa)``: 0 for a single sharp fibre, 1 for an isotropic
    FOD. For crossings ODI measures the spread around the dominant axis (a crossing is
    dispersed in this sense); negative lobes are not clipped (only l <= 2 is used).

    Parameters
    ----------
    sh : array_like of shape (..., n_coeffs)
        descoteaux07 (legacy=False) coefficients, order >= 2.

    Returns
    -------
    ndarray of shape (...), float64
        ODI in [0, 1]; NaN where the FOD integral is not positive (undefined).
    """
    tensor = orientation_tensor(sh)
    finite = np.all(np.isfinite(tensor), axis=(-2, -1))
    safe = np.where(finite[..., None, None], tensor, np.eye(3) / 3.0)
    mu = np.linalg.eigvalsh(safe)[..., -1]
    mean_cos2, kappa = _watson_table()
    k = np.interp(np.clip(mu, 1.0 / 3.0, mean_cos2[-1]), mean_cos2, kappa)
    with np.errstate(divide="ignore"):
        odi = 2.0 / np.pi * np.arctan(np.where(k > 0, 1.0 / np.where(k > 0, k, 1.0), np.inf))
    return np.where(finite, odi, np.nan)


def dispersion_error(sh_a, sh_b, *, sh_order_max: int | None = None) -> np.ndarray:
    """Absolute difference of the orientation dispersion indices ``|ODI(a) - ODI(b)|``.

    Parameters
    ----------
    sh_a, sh_b : array_like of shape (..., n_coeffs)
        descoteaux07 (legacy=False) coefficients of one order (>= 2).
    sh_order_max : int, optional
        Expected order, checked as in :func:`acc`.

    Returns
    -------
    ndarray of shape (...), float64
        In [0, 1]; NaN where either ODI is undefined. See :func:`odi_from_sh`.
    """
    a, b, _ = _check_sh_pair(sh_a, sh_b, sh_order_max)
    return np.abs(odi_from_sh(a) - odi_from_sh(b))
