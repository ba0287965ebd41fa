"""Per-voxel sums over fibre segments: the ground truth and the dMRI signal.

A segment belongs to the dMRI voxel of its midpoint. Per voxel and bundle, the fibre
volume fraction is the bundles' summed axon volume (pi r^2 l, myelin included) over the
voxel volume (scaled down to sum to 1 where overlapping bundles over-fill a voxel). The
tissue fraction is ``min(1, sum_b f_b / packing_b)``; the rest of the voxel is free water.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from phantoms import _kernels
from phantoms.geometry import Geometry
from phantoms.schemes import Diffusivities

SH_ORDER_MAX = 8
#: a bundle is a fibre population of a voxel when its volume fraction reaches this
MIN_FRACTION = 0.1


@dataclass(frozen=True)
class VoxelSums:
    """Raw per-voxel sums (voxels flattened in C order)."""

    fractions: np.ndarray  # (V, B) fibre volume fraction per bundle, sum <= 1
    intra: np.ndarray  # (V,) intra-axonal (visible) water fraction
    tissue: np.ndarray  # (V,) tissue fraction in [0, 1]
    directions: np.ndarray  # (V, B, 3) volume-weighted principal direction per bundle
    stick: np.ndarray  # (V, N) intra-axonal signal fraction per gradient (sum of sticks)
    segment_voxel: np.ndarray  # (S,) flat voxel index of each segment, -1 outside
    fod_sh: np.ndarray  # (V, n_coeffs) fibre ODF in SH, integrates to 1 (0 if no fibre)


def voxel_sums(
    geometry: Geometry,
    shape: tuple[int, int, int],
    voxel_um: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    diffusivities: Diffusivities,
) -> VoxelSums:
    """Sum the axon segments of ``geometry`` into the voxels of a grid.

    ``voxel_um`` (3,) um; ``bvals`` (N,) s/mm^2; ``bvecs`` (N, 3) in the grid frame.
    """
    axon = geometry.is_axon
    tube = geometry.tube
    p0 = np.ascontiguousarray(geometry.p0[axon])
    p1 = np.ascontiguousarray(geometry.p1[axon])
    radius = geometry.tube_radius[tube[axon]]
    g_ratio = geometry.tube_inner_ratio[tube[axon]]
    bundle = geometry.tube_bundle[tube[axon]]
    fib, intra, scatter, stick, vox, moments = _kernels.accumulate_voxels(
        p0,
        p1,
        radius,
        g_ratio,
        bundle,
        np.asarray(shape, dtype=np.int64),
        np.asarray(voxel_um, dtype=np.float64),
        geometry.n_bundles,
        np.asarray(bvals, dtype=np.float64),
        np.ascontiguousarray(bvecs, dtype=np.float64),
        float(diffusivities.intra_axial),
        _monomial_powers(SH_ORDER_MAX),
    )
    vvox = float(np.prod(voxel_um))
    frac = fib / vvox
    total = frac.sum(axis=1)
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-300), 1.0)
    packing = np.maximum(geometry.bundle_packing, 1e-6)
    tissue = np.minimum(1.0, (frac / packing[None]).sum(axis=1))
    frac = frac * scale[:, None]
    intra_frac = intra / vvox * scale
    stick = stick / vvox * scale[:, None]
    _, vecs = np.linalg.eigh(scatter)  # ascending eigenvalues
    directions = vecs[..., :, 2]
    directions = _canonical_sign(directions)
    directions[fib <= 0] = 0.0
    full_vox = np.full(geometry.p0.shape[0], -1, dtype=np.int64)
    full_vox[axon] = vox
    weight = fib.sum(axis=1)
    fod = moments @ _monomials_to_sh(SH_ORDER_MAX)
    fod = np.divide(fod, weight[:, None], out=np.zeros_like(fod), where=weight[:, None] > 0)
    return VoxelSums(frac, intra_frac, tissue, directions, stick, full_vox, fod)


@cache
def _monomial_powers(degree: int) -> np.ndarray:
    """Exponents (a, b, c), a + b + c = degree, of the degree-``degree`` monomials."""
    rows = [
        (a, b, degree - a - b) for a in range(degree, -1, -1) for b in range(degree - a, -1, -1)
    ]
    return np.array(rows, dtype=np.int64)


@cache
def _monomials_to_sh(sh_order_max: int) -> np.ndarray:
    """Matrix T with Y(u) = m(u) @ T for unit u: the even SH up to ``sh_order_max``
    (descoteaux07, legacy=False) from the degree-``sh_order_max`` monomials m(u). Exact: on
    the sphere every even harmonic of order <= L is a homogeneous polynomial of degree L.
    So a fibre ODF's SH is the moment vector sum(w m(u)) times T."""
    from dipy.reconst.shm import real_sh_descoteaux

    powers = _monomial_powers(sh_order_max)
    rng = np.random.default_rng(12345)
    u = rng.normal(size=(400, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    mono = np.prod(u[:, None, :] ** powers[None], axis=-1)
    theta = np.arccos(np.clip(u[:, 2], -1, 1))
    phi = np.arctan2(u[:, 1], u[:, 0])
    ysh, _, _ = real_sh_descoteaux(sh_order_max, theta, phi, legacy=False)
    t, *_ = np.linalg.lstsq(mono, ysh, rcond=None)
    return t


def _canonical_sign(v: np.ndarray) -> np.ndarray:
    """Flip axial vectors so that their largest-magnitude component is positive."""
    idx = np.argmax(np.abs(v), axis=-1)
    sign = np.sign(np.take_along_axis(v, idx[..., None], axis=-1))
    sign[sign == 0] = 1.0
    return v * sign


def signal_fraction(sums: VoxelSums, bvals: np.ndarray, bvecs: np.ndarray,
                    diffusivities: Diffusivities) -> np.ndarray:
    """Noise-free S / S0 per voxel and gradient, (V, N), in (0, 1].

    Visible water: intra-axonal (sticks along each segment), extra-axonal (one hindered
    tensor per bundle along its voxel direction, sharing the extra-axonal space by fibre
    fraction) and free water; myelin water is invisible. Normalised so that S(b=0) = S0.
    """
    fib_total = sums.fractions.sum(axis=1)
    extra = np.clip(sums.tissue - fib_total, 0.0, None)
    free = 1.0 - sums.tissue
    water = sums.intra + extra + free
    d = diffusivities
    cos = np.einsum("vbc,nc->vbn", sums.directions, bvecs)  # (V, B, N)
    hindered = np.exp(-bvals[None, None] * (d.extra_radial
                                            + (d.extra_axial - d.extra_radial) * cos**2))
    share = np.divide(
        sums.fractions, fib_total[:, None], out=np.zeros_like(sums.fractions),
        where=fib_total[:, None] > 0,
    )
    extra_signal = np.einsum("vb,vbn->vn", share, hindered) * extra[:, None]
    free_signal = free[:, None] * np.exp(-bvals[None] * d.free)
    out = (sums.stick + extra_signal + free_signal) / water[:, None]
    return np.clip(out, np.finfo(float).tiny, 1.0)


def truth_peaks(sums: VoxelSums, *, min_fraction: float = MIN_FRACTION):
    """Peaks (V, K, 3), fractions (V, K) sorted by fraction (descending), nufo (V,)."""
    frac = np.where(sums.fractions >= min_fraction, sums.fractions, 0.0)
    order = np.argsort(-frac, axis=1, kind="stable")
    frac = np.take_along_axis(frac, order, axis=1)
    peaks = np.take_along_axis(sums.directions, order[..., None], axis=1)
    peaks = np.where(frac[..., None] > 0, peaks, 0.0)
    norm = np.linalg.norm(peaks, axis=-1, keepdims=True)
    peaks = np.divide(peaks, norm, out=np.zeros_like(peaks), where=norm > 0)
    nufo = (frac > 0).sum(axis=1)
    return peaks, frac, nufo
