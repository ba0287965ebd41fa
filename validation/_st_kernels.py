"""numba kernels of the structure tensor: separable Gaussian passes and a 3x3 eigensolver.

Layout: C-contiguous float32 volumes (Z, Y, X); every pass keeps the contiguous X axis as
the inner loop so LLVM vectorises it. Kernels are folded (symmetric smoothing weights,
antisymmetric derivative weights); edges follow ``mode="nearest"`` (index clamping).

Pipeline (8 + 15 one-dimensional passes, products fused, eigen fused):

1. along X: ``sx = S_x V``, ``dx = D_x V`` (one padded row buffer, two outputs);
2. along Y: ``a = S_y sx``, ``b = D_y sx``, ``c = S_y dx``;
3. along Z: ``gz = D_z a``, ``gy = S_z b``, ``gx = S_z c`` (scaled to physical units), the
   six products formed in registers and smoothed along X at rho into an edge-padded
   plane buffer, then along Y at rho -> ``p[6]`` (one Z plane per task; the buffer stays
   in L2);
4. along Z at rho, fused with the eigen-decomposition: per (Z, 128)-column chunk, each
   component's column is copied once into an edge-padded buffer that stays in cache and
   smoothed from there.

The rho passes (17 taps at rho 4) dominate; they go through :func:`fold_smooth`, which
sums four taps per sweep in registers (one load and store of the output per four taps)
from a padded source, so the inner loops carry no clamping.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

#: numba's default threading layer must not be entered from two threads at once; the
#: chunked scheduler may call the kernels from several threads, so they take turns.
KERNEL_LOCK = threading.Lock()

_PI_3 = math.pi / 3.0

#: elements of a (Y X)-plane handled per task in the Z gradient pass: long contiguous
#: inner loops (cheap SIMD) and a (Z, chunk) column slab that the prefetchers stream well
PLANE_CHUNK = 1024


def gaussian_half_kernels(sigma: float, truncate: float) -> tuple[np.ndarray, np.ndarray]:
    """Folded Gaussian smoothing and first-derivative weights, scipy.ndimage conventions.

    Parameters
    ----------
    sigma : float
        Standard deviation in voxels (> 0).
    truncate : float
        Radius ``r = int(truncate * sigma + 0.5)`` voxels, as scipy.ndimage.

    Returns
    -------
    smooth : ndarray of shape (r + 1,), float32
        ``out[i] = smooth[0] x[i] + sum_k smooth[k] (x[i + k] + x[i - k])``.
    deriv : ndarray of shape (r + 1,), float32
        ``out[i] = sum_k deriv[k] (x[i + k] - x[i - k])`` (``deriv[0] = 0``): the derivative
        per voxel of the Gaussian-smoothed signal.
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(0, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / sigma) ** 2)
    phi /= phi[0] + 2.0 * phi[1:].sum()
    deriv = x / sigma**2 * phi
    return phi.astype(np.float32), deriv.astype(np.float32)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _clamp(i: int, n: int) -> int:
    return 0 if i < 0 else (n - 1 if i >= n else i)


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def grad_pass_x(volume, s, d, sx, dx):  # pragma: no cover - compiled
    nz, ny, nx = volume.shape
    r = s.shape[0] - 1
    for z in numba.prange(nz):
        buf = np.empty(nx + 2 * r, dtype=np.float32)
        for y in range(ny):
            row = volume[z, y]
            for i in range(r):
                buf[i] = row[0]
                buf[r + nx + i] = row[nx - 1]
            for i in range(nx):
                buf[r + i] = row[i]
            out_s = sx[z, y]
            out_d = dx[z, y]
            mid = buf[r : r + nx]
            for i in range(nx):
                out_s[i] = s[0] * mid[i]
                out_d[i] = 0.0
            for k in range(1, r + 1):
                sk = s[k]
                dk = d[k]
                # slice views, not offset indexing: numba's negative-index handling of
                # ``buf[i - k]`` would block vectorisation
                hi = buf[r + k : r + k + nx]
                lo = buf[r - k : r - k + nx]
                for i in range(nx):
                    out_s[i] += sk * (hi[i] + lo[i])
                    out_d[i] += dk * (hi[i] - lo[i])


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def grad_pass_y(sx, dx, s, d, a, b, c):  # pragma: no cover - compiled
    nz, ny, nx = sx.shape
    r = s.shape[0] - 1
    for z in numba.prange(nz):
        for y in range(ny):
            oa = a[z, y]
            ob = b[z, y]
            oc = c[z, y]
            rs = sx[z, y]
            rd = dx[z, y]
            for i in range(nx):
                oa[i] = s[0] * rs[i]
                ob[i] = 0.0
                oc[i] = s[0] * rd[i]
            for k in range(1, r + 1):
                yp = _clamp(y + k, ny)
                ym = _clamp(y - k, ny)
                sk = s[k]
                dk = d[k]
                sp = sx[z, yp]
                sm = sx[z, ym]
                dp = dx[z, yp]
                dm = dx[z, ym]
                for i in range(nx):
                    oa[i] += sk * (sp[i] + sm[i])
                    ob[i] += dk * (sp[i] - sm[i])
                    oc[i] += sk * (dp[i] + dm[i])


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy", fastmath={"contract"})
def fold_smooth(src, c, st, w, out, nt):  # pragma: no cover - compiled
    """``out[i] = w[0] src[c + i] + sum_k w[k] (src[c + i + k st] + src[c + i - k st])``.

    ``src`` is flat and holds every tap (no clamping: callers pad or stay inside). Taps
    are summed four at a time in registers, so ``out`` is loaded and stored once per
    four taps instead of once per tap.
    """
    q = w.shape[0] - 1
    mid = src[c : c + nt]
    k = 1
    if q >= 3:
        w0 = w[0]
        w1 = w[1]
        w2 = w[2]
        w3 = w[3]
        h1 = src[c + st : c + st + nt]
        l1 = src[c - st : c - st + nt]
        h2 = src[c + 2 * st : c + 2 * st + nt]
        l2 = src[c - 2 * st : c - 2 * st + nt]
        h3 = src[c + 3 * st : c + 3 * st + nt]
        l3 = src[c - 3 * st : c - 3 * st + nt]
        for i in range(nt):
            out[i] = (
                w0 * mid[i] + w1 * (h1[i] + l1[i]) + w2 * (h2[i] + l2[i]) + w3 * (h3[i] + l3[i])
            )
        k = 4
    else:
        w0 = w[0]
        for i in range(nt):
            out[i] = w0 * mid[i]
    while k + 3 <= q:
        w1 = w[k]
        w2 = w[k + 1]
        w3 = w[k + 2]
        w4 = w[k + 3]
        o1 = c + k * st
        m1 = c - k * st
        h1 = src[o1 : o1 + nt]
        l1 = src[m1 : m1 + nt]
        h2 = src[o1 + st : o1 + st + nt]
        l2 = src[m1 - st : m1 - st + nt]
        h3 = src[o1 + 2 * st : o1 + 2 * st + nt]
        l3 = src[m1 - 2 * st : m1 - 2 * st + nt]
        h4 = src[o1 + 3 * st : o1 + 3 * st + nt]
        l4 = src[m1 - 3 * st : m1 - 3 * st + nt]
        for i in range(nt):
            out[i] += (
                w1 * (h1[i] + l1[i])
                + w2 * (h2[i] + l2[i])
                + w3 * (h3[i] + l3[i])
                + w4 * (h4[i] + l4[i])
            )
        k += 4
    while k <= q:
        wk = w[k]
        h1 = src[c + k * st : c + k * st + nt]
        l1 = src[c - k * st : c - k * st + nt]
        for i in range(nt):
            out[i] += wk * (h1[i] + l1[i])
        k += 1


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def grad_pass_z_products_xy(a, b, c, ny, nx, s, d, wx, wy, inv_spacing, p):  # pragma: no cover
    """Finish the gradients along Z, form the six products, smooth them along X and Y at rho.

    ``a``, ``b``, ``c`` are (Z, Y X) flattened planes; ``p`` is (6, Z, Y X): products in
    the order zz, yy, xx, zy, zx, yx (array axes). One task per Z plane: the gradients
    are finished along Z in blocks of rows (the accumulators stay in L1), the six
    products are formed and smoothed along X into a plane buffer padded with ``qy`` edge
    rows (``mode="nearest"``; about 1 MiB at 192^2, rho 4: it stays in L2), which is
    then smoothed along Y straight into ``p``. The six product volumes are written once
    instead of written, read and written again.
    """
    nz, nyx = a.shape
    r = s.shape[0] - 1
    qx = wx.shape[0] - 1
    qy = wy.shape[0] - 1
    fz = inv_spacing[0]
    fy = inv_spacing[1]
    fx = inv_spacing[2]
    rows_per = max(1, PLANE_CHUNK // nx)
    chunk = rows_per * nx
    nblocks = (ny + rows_per - 1) // rows_per
    width = nx + 2 * qx
    plen = (ny + 2 * qy) * nx
    for z in numba.prange(nz):
        g = np.empty(3 * chunk, dtype=np.float32)
        buf = np.empty(6 * width, dtype=np.float32)
        plane = np.empty(6 * plen, dtype=np.float32)
        for blk in range(nblocks):
            y0 = blk * rows_per
            y1 = min(y0 + rows_per, ny)
            j0 = y0 * nx
            j1 = y1 * nx
            nt = j1 - j0
            gz = g[0:nt]
            gy = g[chunk : chunk + nt]
            gx = g[2 * chunk : 2 * chunk + nt]
            rb = b[z, j0:j1]
            rc = c[z, j0:j1]
            for i in range(nt):
                gz[i] = 0.0
                gy[i] = s[0] * rb[i]
                gx[i] = s[0] * rc[i]
            for k in range(1, r + 1):
                zp = _clamp(z + k, nz)
                zm = _clamp(z - k, nz)
                sk = s[k]
                dk = d[k]
                ap = a[zp, j0:j1]
                am = a[zm, j0:j1]
                bp = b[zp, j0:j1]
                bm = b[zm, j0:j1]
                cp = c[zp, j0:j1]
                cm = c[zm, j0:j1]
                for i in range(nt):
                    gz[i] += dk * (ap[i] - am[i])
                    gy[i] += sk * (bp[i] + bm[i])
                    gx[i] += sk * (cp[i] + cm[i])
            for row in range(y1 - y0):
                rz = gz[row * nx : row * nx + nx]
                ry = gy[row * nx : row * nx + nx]
                rx = gx[row * nx : row * nx + nx]
                b0 = buf[qx : qx + nx]
                b1 = buf[width + qx : width + qx + nx]
                b2 = buf[2 * width + qx : 2 * width + qx + nx]
                b3 = buf[3 * width + qx : 3 * width + qx + nx]
                b4 = buf[4 * width + qx : 4 * width + qx + nx]
                b5 = buf[5 * width + qx : 5 * width + qx + nx]
                for i in range(nx):
                    vz = rz[i] * fz
                    vy = ry[i] * fy
                    vx = rx[i] * fx
                    b0[i] = vz * vz
                    b1[i] = vy * vy
                    b2[i] = vx * vx
                    b3[i] = vz * vy
                    b4[i] = vz * vx
                    b5[i] = vy * vx
                po = (y0 + row + qy) * nx
                for m in range(6):
                    o = m * width
                    first = buf[o + qx]
                    last = buf[o + qx + nx - 1]
                    for i in range(qx):
                        buf[o + i] = first
                        buf[o + qx + nx + i] = last
                    dst = plane[m * plen + po : m * plen + po + nx]
                    fold_smooth(buf, o + qx, 1, wx, dst, nx)
        for m in range(6):
            base = m * plen
            top = plane[base + qy * nx : base + qy * nx + nx]
            bottom = plane[base + (qy + ny - 1) * nx : base + (qy + ny) * nx]
            for yl in range(qy):
                lo = plane[base + yl * nx : base + yl * nx + nx]
                hi = plane[base + (qy + ny + yl) * nx : base + (qy + ny + yl + 1) * nx]
                for i in range(nx):
                    lo[i] = top[i]
                    hi[i] = bottom[i]
            for y in range(ny):
                fold_smooth(plane, base + (y + qy) * nx, nx, wy, p[m, z, y * nx : y * nx + nx],
                            nx)


# Vectorisable stand-ins for math.acos / math.cos (libm calls block SIMD): the
# eigenvalue error they add (< 3e-8 of the eigenvalue spread) is below float32 resolution.


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy", fastmath={"contract"})
def acos_approx(x):  # pragma: no cover - compiled
    """arccos(x) for x in [-1, 1], absolute error < 3e-8 (Abramowitz & Stegun 4.4.46)."""
    ax = abs(x)
    pp = -0.0012624911
    pp = pp * ax + 0.0066700901
    pp = pp * ax - 0.0170881256
    pp = pp * ax + 0.0308918810
    pp = pp * ax - 0.0501743046
    pp = pp * ax + 0.0889789874
    pp = pp * ax - 0.2145988016
    pp = pp * ax + 1.5707963050
    r = math.sqrt(1.0 - ax) * pp
    return r if x >= 0.0 else math.pi - r


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy", fastmath={"contract"})
def cos_approx(t):  # pragma: no cover - compiled
    """cos(t) for |t| <= pi / 3 (Taylor series to t**16, error < 1e-15)."""
    t2 = t * t
    h = 1.0 / 20922789888000.0
    h = h * t2 - 1.0 / 87178291200.0
    h = h * t2 + 1.0 / 479001600.0
    h = h * t2 - 1.0 / 3628800.0
    h = h * t2 + 1.0 / 40320.0
    h = h * t2 - 1.0 / 720.0
    h = h * t2 + 1.0 / 24.0
    h = h * t2 - 0.5
    return h * t2 + 1.0


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy", fastmath={"contract"})
def eig_row(t00, t11, t22, t01, t02, t12, out, nx):  # pragma: no cover
    """Closed-form eigen-decomposition of ``nx`` symmetric 3x3 tensors, branch-free.

    Inputs: six 1-D rows (components 00, 11, 22, 01, 02, 12). Output: ``out``, a flat
    row of length ``7 * nx`` holding per voxel the vector (3), the eigenvalues (3) and
    the anisotropy (flat indexing: 2-D stores block SIMD). Eigenvalues by the
    trigonometric method (Smith 1961) in float64; the eigenvector of the smallest one is
    the largest cross product of two rows of ``T - l3 I``, which is exact where the
    off-diagonal terms vanish.
    """
    for i in range(nx):
        a00 = np.float64(t00[i])
        a11 = np.float64(t11[i])
        a22 = np.float64(t22[i])
        a01 = np.float64(t01[i])
        a02 = np.float64(t02[i])
        a12 = np.float64(t12[i])
        qm = (a00 + a11 + a22) / 3.0
        b00 = a00 - qm
        b11 = a11 - qm
        b22 = a22 - qm
        off = a01 * a01 + a02 * a02 + a12 * a12
        p2 = (b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off) / 6.0
        pp = math.sqrt(p2)
        inv = 1.0 / max(pp, 1e-300)
        det = (
            b00 * (b11 * b22 - a12 * a12)
            - a01 * (a01 * b22 - a12 * a02)
            + a02 * (a01 * a12 - b11 * a02)
        )
        rr = 0.5 * det * inv * inv * inv
        rr = min(1.0, max(-1.0, rr))
        phi = acos_approx(rr) / 3.0
        # cos(phi + 2 pi / 3) = -cos(pi / 3 - phi), both arguments in [0, pi / 3]
        l1 = qm + 2.0 * pp * cos_approx(phi)
        l3 = qm - 2.0 * pp * cos_approx(_PI_3 - phi)
        l2 = 3.0 * qm - l1 - l3
        r00 = a00 - l3
        r11 = a11 - l3
        r22 = a22 - l3
        c0x = a01 * a12 - a02 * r11
        c0y = a02 * a01 - r00 * a12
        c0z = r00 * r11 - a01 * a01
        c1x = a01 * r22 - a02 * a12
        c1y = a02 * a02 - r00 * r22
        c1z = r00 * a12 - a01 * a02
        c2x = r11 * r22 - a12 * a12
        c2y = a12 * a02 - a01 * r22
        c2z = a01 * a12 - r11 * a02
        n0 = c0x * c0x + c0y * c0y + c0z * c0z
        n1 = c1x * c1x + c1y * c1y + c1z * c1z
        n2 = c2x * c2x + c2y * c2y + c2z * c2z
        # select the largest by arithmetic blending (keeps the loop vectorisable)
        w1 = np.float64(n1 > n0)
        vx = c0x + w1 * (c1x - c0x)
        vy = c0y + w1 * (c1y - c0y)
        vz = c0z + w1 * (c1z - c0z)
        nn = max(n0, n1)
        w2 = np.float64(n2 > nn)
        vx = vx + w2 * (c2x - vx)
        vy = vy + w2 * (c2y - vy)
        vz = vz + w2 * (c2z - vz)
        nn = max(nn, n2)
        # zero vector where the tensor is zero or isotropic (all cross products vanish)
        tiny = 1e-10 * l1 * l1
        okf = np.float64(nn > tiny * tiny)
        norm = okf / math.sqrt(max(nn, 1e-300))
        # canonical sign: the largest component positive
        ax = abs(vx)
        ay = abs(vy)
        az = abs(vz)
        wx = np.float64((ax >= ay) & (ax >= az))
        wy = (1.0 - wx) * np.float64(ay >= az)
        wz = 1.0 - wx - wy
        lead = wx * vx + wy * vy + wz * vz
        sgn = norm * (1.0 - 2.0 * np.float64(lead < 0.0))
        an = (l2 - l3) / max(l1, 1e-300)
        o = 7 * i
        out[o] = vx * sgn
        out[o + 1] = vy * sgn
        out[o + 2] = vz * sgn
        out[o + 3] = l1
        out[o + 4] = l2
        out[o + 5] = l3
        out[o + 6] = min(1.0, max(0.0, an)) * np.float64(l1 > 0.0)


#: elements of a (Y X)-plane per task in the Z smoothing + eigen pass: the padded
#: (Z + 2 q, chunk) column of one component (112 KiB at 192^3, rho 4) stays in L2
Z_EIGEN_CHUNK = 128


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def smooth_pass_z_eigen(p, w, packed):  # pragma: no cover
    """Smooth the six tensor volumes along Z and decompose each tensor.

    ``p`` (6, Z, Y X) flattened planes, components in the order zz, yy, xx, zy, zx, yx.
    Output: ``packed`` (Z, 7 Y X), a flat view of a (Z, Y, X, 7) array: vector (3),
    eigenvalues (3, descending), anisotropy (1).

    Per column chunk, each component's (Z, chunk) column is copied once into a buffer
    padded with ``q`` edge rows at both ends (``mode="nearest"``), smoothed from there
    (contiguous, cache-resident rows, no clamping), then all six are decomposed.
    """
    nc, nz, nyx = p.shape
    q = w.shape[0] - 1
    cw = Z_EIGEN_CHUNK
    nchunks = (nyx + cw - 1) // cw
    nl = nz + 2 * q
    for job in numba.prange(nchunks):
        j0 = job * cw
        j1 = min(j0 + cw, nyx)
        nt = j1 - j0
        loc = np.empty(nl * cw, dtype=np.float32)
        sm = np.empty(6 * nz * cw, dtype=np.float32)
        for m in range(6):
            for zl in range(nl):
                src = p[m, _clamp(zl - q, nz), j0:j1]
                dst = loc[zl * cw : zl * cw + nt]
                for i in range(nt):
                    dst[i] = src[i]
            base = m * nz * cw
            for z in range(nz):
                o = base + z * cw
                fold_smooth(loc, (z + q) * cw, cw, w, sm[o : o + nt], nt)
        for z in range(nz):
            o = z * cw
            eig_row(
                sm[o : o + nt],
                sm[nz * cw + o : nz * cw + o + nt],
                sm[2 * nz * cw + o : 2 * nz * cw + o + nt],
                sm[3 * nz * cw + o : 3 * nz * cw + o + nt],
                sm[4 * nz * cw + o : 4 * nz * cw + o + nt],
                sm[5 * nz * cw + o : 5 * nz * cw + o + nt],
                packed[z, 7 * j0 : 7 * j1],
                nt,
            )
