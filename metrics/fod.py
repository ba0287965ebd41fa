"""FOD agreement: angular correlation (ACC), Jensen-Shannon divergence on the sphere,
and orientation dispersion (ODI) from spherical harmonics.

SH coefficients are in dipy's ``descoteaux07`` basis with ``legacy=False`` (design.md),
even orders only, ordered by degree l (1 coefficient for l = 0, then 5 for l = 2, ...).
ACC needs only that both inputs share one orthonormal basis ordered by degree; ODI uses
the ``descoteaux07`` l <= 2 coefficients explicitly.
"""

from __future__ import annotations

import platform
from functools import lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from metrics._validate import as_float_array, broadcast_pair
from metrics.errors import MetricInputError

#: numba fast-math flags without "no NaN / no inf" (NaN checks must survive) and
#: without "approximate reciprocal" (exact quotients keep equal inputs at exactly 0)
_FASTMATH = {"nsz", "contract", "afn", "reassoc"}


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
    lead = a.shape[:-1]
    # no copy for C-contiguous inputs (the usual case); broadcast views are copied
    a2 = np.ascontiguousarray(a.reshape(-1, a.shape[-1]))
    b2 = np.ascontiguousarray(b.reshape(-1, b.shape[-1]))
    out = np.empty(a2.shape[0], dtype=np.float64)
    _acc_rows(a2, b2, out)
    return out.reshape(lead)


@numba.njit(fastmath=_FASTMATH, cache=True)
def _acc_rows(a, b, out):  # pragma: no cover - compiled
    """ACC per row (see :func:`acc`): the three l >= 2 sums in one pass, in float64.

    Serial on purpose: one pass at ~50 ns per voxel streams the inputs at memory speed,
    and a parallel region costs a thread wake-up (milliseconds on a busy machine).
    """
    n_rows, n_coeffs = a.shape
    for i in range(n_rows):
        uv = 0.0
        uu = 0.0
        vv = 0.0
        for j in range(1, n_coeffs):  # coefficient 0 is the l = 0 term
            u = np.float64(a[i, j])
            v = np.float64(b[i, j])
            uv += u * v
            uu += u * u
            vv += v * v
        den = np.sqrt(uu * vv)
        # NaN without l >= 2 power (den = 0) or with NaN/infinite input (NaN survives
        # the comparisons below); clipping only removes rounding beyond +-1
        r = uv / den if den > 0 else np.nan
        if r > 1.0:
            r = 1.0
        elif r < -1.0:
            r = -1.0
        out[i] = r


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


#: smallest normal float64: smaller normalised ODF values count as 0 (their share of the
#: JSD is below 1e-305), so the exponent/mantissa split below never sees a subnormal
_SMALLEST_NORMAL = 2.2250738585072014e-308
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_SQRT2 = 1.4142135623730951
_TWO_OVER_LN2 = 2.0 / np.log(2.0)
_EXPONENT_MASK = 0x7FF
_MANTISSA_BITS = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000


@intrinsic
def _float_bits(typingctx, x):  # pragma: no cover - compiled
    """The IEEE-754 bits of a float64 as an int64 (a register bitcast; vectorises)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, x):  # pragma: no cover - compiled
    """The float64 with the IEEE-754 bits of an int64 (inverse of :func:`_float_bits`)."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _opaque(typingctx, x):  # pragma: no cover - compiled
    """x, unchanged, through an empty inline-asm register constraint.

    Under the fast-math flags LLVM rewrites ``x * (1 / m)`` inside a loop as ``x / m``,
    a vector division per element (the JSD loop ran ~10% slower); a value that comes
    out of this barrier is opaque to that rewrite. Costs nothing at run time.
    """
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        if not _X86:
            return args[0]  # "x" (an SSE register) is an x86 constraint; elsewhere a no-op
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType()])
        return builder.asm(fnty, "", "=x,0", [args[0]], side_effect=False)

    return types.float64(types.float64), codegen


@numba.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _split(x):  # pragma: no cover - compiled
    """``x = m 2^e`` for a normal positive x (or 0): ``(e, m)``, e as float, m in [1, 2).

    For x = 0 the result is finite (``(-1023, 1)``); callers multiply it by 0.
    """
    bits = _float_bits(x)
    exponent = np.float64(((bits >> 52) & _EXPONENT_MASK) - 1023)
    return exponent, _bits_float((bits & _MANTISSA_BITS) | _ONE_BITS)


@numba.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _log2_atanh(t):  # pragma: no cover - compiled
    """``log2((1 + t) / (1 - t)) = 2 / ln 2 * atanh(t)`` for |t| <= 0.172.

    ``atanh(t) / t`` is a degree-6 polynomial in ``t^2``, fitted (least squares on
    Chebyshev nodes, in extended precision) on ``t^2 <= 0.0301``: within 2.3e-16 of it,
    about one rounding, where the Taylor series needs 10 terms for that.
    """
    v = t * t
    poly = 0.08426067909426962
    poly = poly * v + 0.09060507794498134
    poly = poly * v + 0.11111725410606783
    poly = poly * v + 0.14285708025295146
    poly = poly * v + 0.20000000029350934
    poly = poly * v + 0.33333333333287307
    poly = poly * v + 1.0
    return _TWO_OVER_LN2 * t * poly


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _jsd_rows(p, q, w, out):  # pragma: no cover - compiled
    """JSD per row (see :func:`jsd`): ``1/2 sum w (x log2(2x / s) + y log2(2y / s))``.

    x, y are the clipped, normalised ODF values (``p / mass_p``, multiplied by a
    reciprocal, not divided) and ``s = x + y``. Both logarithms are taken of mantissa
    ratios: with ``x = mx 2^ex`` and ``s = ms 2^es``,
    ``log2(2x / s) = 1 + ex - es + log2(mx / ms)``, ``mx / ms`` folded by a factor 2
    into [1/sqrt2, sqrt2) and ``log2(mx / ms) = 2 / ln 2 * atanh((mx - ms) / (mx + ms))``.
    The two quotients share one division, nothing is branched on (the loop vectorises)
    and nothing is written but the result. Exact where it matters: x = y gives
    ``mx = ms``, so 0; y = 0 gives ``mx = ms``, so exactly 1 bit.
    """
    n_rows, n_vertices = p.shape
    for i in numba.prange(n_rows):
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
        inv_p = _opaque(1.0 / mass_p)
        inv_q = _opaque(1.0 / mass_q)
        total_a = 0.0
        total_b = 0.0
        for j in range(n_vertices):
            x = p[i, j] * inv_p
            y = q[i, j] * inv_q
            x = x if x >= _SMALLEST_NORMAL else 0.0  # clip (and drop subnormals)
            y = y if y >= _SMALLEST_NORMAL else 0.0
            exp_x, mx = _split(x)
            exp_y, my = _split(y)
            exp_s, ms = _split(x + y)
            # fold mx / ms (in (1/2, 2)) into [1/sqrt2, sqrt2); the factor goes to the exponent
            high_x = mx > _SQRT2 * ms
            low_x = mx * _SQRT2 < ms
            high_y = my > _SQRT2 * ms
            low_y = my * _SQRT2 < ms
            mx = mx * 0.5 if high_x else (mx * 2.0 if low_x else mx)
            my = my * 0.5 if high_y else (my * 2.0 if low_y else my)
            int_x = 1.0 + exp_x - exp_s + (1.0 if high_x else (-1.0 if low_x else 0.0))
            int_y = 1.0 + exp_y - exp_s + (1.0 if high_y else (-1.0 if low_y else 0.0))
            inv = 1.0 / ((mx + ms) * (my + ms))
            t_x = (mx - ms) * (my + ms) * inv
            t_y = (my - ms) * (mx + ms) * inv
            # x = 0 (or y = 0) multiplies a finite value: 0 log 0 = 0
            total_a += w[j] * x * (int_x + _log2_atanh(t_x))
            total_b += w[j] * y * (int_y + _log2_atanh(t_y))
        out[i] = min(max(0.5 * (total_a + total_b), 0.0), 1.0)


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
