"""Fibre geometry in micrometres: bundles of axons (and optional vessels) as tube segments.

Frame: the dMRI grid frame, in micrometres, with its origin at the outer corner of voxel
(0, 0, 0) and axes along the grid's array axes (i, j, k). A point x lies in voxel
``floor(x / voxel_um)``; its dMRI voxel coordinate is ``x / voxel_um - 0.5``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from phantoms import _kernels
from phantoms.errors import PhantomError
from phantoms.spec import CaseSpec

RADIUS_MIN_UM = 0.2
RADIUS_MAX_UM = 5.0
VESSEL_RADIUS_UM = (8.0, 20.0)
VESSEL_LUMEN_RATIO = 0.85
_MARGIN_UM = 30.0


@dataclass(frozen=True)
class Geometry:
    """Tubes as line segments (the dMRI grid frame, micrometres).

    Attributes
    ----------
    p0, p1 : ndarray (n_segments, 3) float64
        Segment end points, grouped by tube and ordered along it.
    tube : ndarray (n_segments,) int64
        Tube index of each segment.
    tube_radius : ndarray (n_tubes,) float64
        Outer radius (um).
    tube_inner_ratio : ndarray (n_tubes,) float64
        g-ratio of an axon, lumen / outer radius of a vessel.
    tube_bundle : ndarray (n_tubes,) int64
        Bundle index of an axon; -1 for a vessel.
    bundle_names : tuple of str
    bundle_packing : ndarray (n_bundles,)
        Achieved axon area fraction of each bundle's cross-section.
    fov_um : float
        Edge of the cubic field of view (the dMRI grid).
    """

    p0: np.ndarray
    p1: np.ndarray
    tube: np.ndarray
    tube_radius: np.ndarray
    tube_inner_ratio: np.ndarray
    tube_bundle: np.ndarray
    bundle_names: tuple[str, ...]
    bundle_packing: np.ndarray
    fov_um: float

    @property
    def n_bundles(self) -> int:
        return len(self.bundle_names)

    @property
    def is_axon(self) -> np.ndarray:
        """(n_segments,) bool: the segment belongs to an axon (not a vessel)."""
        return self.tube_bundle[self.tube] >= 0


# --- centrelines -----------------------------------------------------------------------

Frame = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # c, T, N, B; each (m, 3)


def _perp_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = d / np.linalg.norm(d)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    n = np.cross(d, helper)
    n /= np.linalg.norm(n)
    return n, np.cross(d, n)


def _straight(centre: np.ndarray, d: np.ndarray) -> Callable[[np.ndarray], Frame]:
    d = np.asarray(d, float) / np.linalg.norm(d)
    n, b = _perp_basis(d)

    def frame(t: np.ndarray) -> Frame:
        m = t.shape[0]
        return (
            centre[None] + t[:, None] * d[None],
            np.broadcast_to(d, (m, 3)),
            np.broadcast_to(n, (m, 3)),
            np.broadcast_to(b, (m, 3)),
        )

    return frame


def _arc(
    pivot: np.ndarray, radius: float, e_in: np.ndarray, e_tan: np.ndarray
) -> Callable[[np.ndarray], Frame]:
    """Circle of ``radius`` about ``pivot`` in the plane (e_in, e_tan); t = arc length, the
    point at t = 0 is ``pivot - radius * e_in`` moving along ``e_tan``."""
    binormal = np.cross(e_tan, e_in)

    def frame(t: np.ndarray) -> Frame:
        phi = t / radius
        cos, sin = np.cos(phi)[:, None], np.sin(phi)[:, None]
        radial = -cos * e_in[None] + sin * e_tan[None]  # unit vector from the pivot
        tangent = sin * e_in[None] + cos * e_tan[None]
        c = pivot[None] + radius * radial
        return c, tangent, radial, np.broadcast_to(binormal, (t.shape[0], 3))

    return frame


@dataclass(frozen=True)
class _BundleDef:
    name: str
    frame: Callable[[np.ndarray], Frame]
    t_range: tuple[float, float]
    fan_rate: float = 0.0  # lateral (N) offsets scale by exp(fan_rate * t)


def _bundle_defs(spec: CaseSpec) -> list[_BundleDef]:
    fov = spec.fov_um
    c = np.full(3, fov / 2.0)
    half = fov * np.sqrt(3.0) / 2.0 + _MARGIN_UM + spec.undulation_amplitude_um
    t_range = (-half, half)
    ex, ey, ez = np.eye(3)
    g = spec.geometry
    if g == "single":
        return [_BundleDef("bundle-1", _straight(c, ex), t_range)]
    if g == "crossing":
        a = np.deg2rad(spec.crossing_angle_deg) / 2.0
        return [
            _BundleDef("bundle-1", _straight(c, np.cos(a) * ex + np.sin(a) * ey), t_range),
            _BundleDef("bundle-2", _straight(c, np.cos(a) * ex - np.sin(a) * ey), t_range),
        ]
    if g == "three-way":
        if spec.crossing_angle_deg == 90.0:
            dirs = [ex, ey, ez]
        else:
            a = np.deg2rad(spec.crossing_angle_deg)
            dirs = [np.cos(k * a) * ex + np.sin(k * a) * ey for k in range(3)]
        return [
            _BundleDef(f"bundle-{k + 1}", _straight(c, d), t_range) for k, d in enumerate(dirs)
        ]
    if g == "curved":
        radius = 0.8 * fov
        return [
            _BundleDef(
                "bundle-1", _arc(c + radius * ey, radius, ey, ex), (-0.49 * np.pi * radius,
                                                                      0.49 * np.pi * radius)
            )
        ]
    if g == "fanning":
        return [_BundleDef("bundle-1", _straight(c, ex), t_range, fan_rate=1.0 / fov)]
    if g == "kissing":
        radius = 1.0 * fov
        rb = spec.bundle_diameter_um / 2.0
        arc_t = (-0.45 * np.pi * radius, 0.45 * np.pi * radius)
        return [
            _BundleDef("bundle-1", _arc(c + (radius + rb) * ey, radius, ey, ex), arc_t),
            _BundleDef("bundle-2", _arc(c - (radius + rb) * ey, radius, -ey, ex), arc_t),
        ]
    raise PhantomError(f"geometry {g!r} is unknown")  # pragma: no cover - spec validates


# --- sampling ----------------------------------------------------------------------------


def _rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def sample_radii(
    n: int, mean_um: float, shape: float, rng: int | np.random.Generator | None = None
) -> np.ndarray:
    """Axon outer radii (um): gamma(shape, mean / shape), clipped to [0.2, 5] um. (n,)"""
    r = _rng(rng).gamma(shape, mean_um / shape, size=n)
    return np.clip(r, RADIUS_MIN_UM, RADIUS_MAX_UM)


def sample_watson(
    n: int, kappa: float, rng: int | np.random.Generator | None = None
) -> np.ndarray:
    """``n`` unit vectors from a Watson distribution about +z (z >= 0; axial), (n, 3).

    The polar cosine is drawn by inverting the tabulated CDF of ``exp(kappa t^2)`` on
    [0, 1]; ``kappa = inf`` gives +z exactly.
    """
    gen = _rng(rng)
    if np.isinf(kappa):
        out = np.zeros((n, 3))
        out[:, 2] = 1.0
        gen.random(2 * n)  # keep the stream position independent of kappa
        return out
    grid = np.linspace(0.0, 1.0, 8193)
    dens = np.exp(kappa * (grid**2 - 1.0))
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2.0)])
    cdf /= cdf[-1]
    u = gen.random(n)
    cos_t = np.interp(u, cdf, grid)
    phi = 2.0 * np.pi * gen.random(n)
    sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, None))
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)


def pack_cross_section(
    radius_um: float,
    packing: float,
    mean_um: float,
    shape: float,
    rng: int | np.random.Generator | None = None,
    *,
    max_tries: int = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping axon discs in a disc of ``radius_um`` at area fraction ``packing``.

    Radii are drawn until their total area reaches ``packing`` of the disc; they are placed
    largest first by random sequential addition; discs that find no room are dropped.

    Returns
    -------
    centres : ndarray (n, 2), um, relative to the disc centre
    radii : ndarray (n,), um
    """
    gen = _rng(rng)
    target = packing * np.pi * radius_um**2
    mean_area = np.pi * mean_um**2 * (1.0 + 1.0 / shape)
    n_guess = int(1.3 * target / mean_area) + 16
    radii = sample_radii(n_guess, mean_um, shape, gen)
    while np.pi * np.sum(radii**2) < target:
        radii = np.concatenate([radii, sample_radii(n_guess, mean_um, shape, gen)])
    n = int(np.searchsorted(np.cumsum(np.pi * radii**2), target)) + 1
    radii = np.sort(radii[:n])[::-1].copy()
    seed = int(gen.integers(0, 2**31 - 1))
    centres, placed = _kernels.pack_discs(radii, float(radius_um), seed, max_tries, 0.05)
    return centres[placed], radii[placed]


# --- building -----------------------------------------------------------------------------


def _axon_points(
    bundle: _BundleDef,
    offsets: np.ndarray,
    drift: np.ndarray,
    und_amp: float,
    und_wavelength: float,
    und_phase: np.ndarray,
    und_plane: np.ndarray,
    step_um: float,
) -> np.ndarray:
    """Polyline vertices (n_axons, n_t, 3) of a bundle's axons."""
    t0, t1 = bundle.t_range
    n_t = max(int(np.ceil((t1 - t0) / step_um)), 1) + 1
    t = np.linspace(t0, t1, n_t)
    c, _tan, nrm, bin_ = bundle.frame(t)
    fan = np.exp(bundle.fan_rate * t)  # (n_t,)
    a = (offsets[:, 0:1] * fan[None] + drift[:, 0:1] * t[None])[..., None]  # (n, n_t, 1)
    b = (offsets[:, 1:2] + drift[:, 1:2] * t[None])[..., None]
    und = und_amp * np.sin(2.0 * np.pi * t[None] / und_wavelength + und_phase[:, None])
    ua = (und * np.cos(und_plane)[:, None])[..., None]
    ub = (und * np.sin(und_plane)[:, None])[..., None]
    return c[None] + (a + ua) * nrm[None] + (b + ub) * bin_[None]


def build_geometry(spec: CaseSpec, rng: int | np.random.Generator | None = None) -> Geometry:
    """The fibre geometry of a case (deterministic for a given ``rng``).

    ``rng`` None uses ``spec.seed``.
    """
    gen = np.random.default_rng(spec.seed if rng is None else rng)
    fov = spec.fov_um
    centre = np.full(3, fov / 2.0)
    rot = Rotation.from_euler("xyz", spec.rotation_deg, degrees=True).as_matrix()
    lo, hi = -_MARGIN_UM, fov + _MARGIN_UM

    p0s: list[np.ndarray] = []
    p1s: list[np.ndarray] = []
    tubes: list[np.ndarray] = []
    radii_all: list[np.ndarray] = []
    inner_all: list[np.ndarray] = []
    bundle_all: list[np.ndarray] = []
    packing = []
    n_tubes = 0

    def add_tubes(points: np.ndarray, radii: np.ndarray, inner: np.ndarray, bundle: int):
        nonlocal n_tubes
        pts = (points - centre) @ rot.T + centre
        a, b = pts[:, :-1], pts[:, 1:]
        keep = (np.minimum(a, b) <= hi + radii[:, None, None]).all(-1) & (
            np.maximum(a, b) >= lo - radii[:, None, None]
        ).all(-1)
        ids = np.broadcast_to(np.arange(len(radii))[:, None], keep.shape)
        p0s.append(a[keep])
        p1s.append(b[keep])
        tubes.append(ids[keep] + n_tubes)
        radii_all.append(radii)
        inner_all.append(inner)
        bundle_all.append(np.full(len(radii), bundle, dtype=np.int64))
        n_tubes += len(radii)

    defs = _bundle_defs(spec)
    rb = spec.bundle_diameter_um / 2.0
    for index, bdef in enumerate(defs):
        centres, radii = pack_cross_section(
            rb, spec.packing, spec.radius_mean_um, spec.radius_shape, gen
        )
        packing.append(float(np.sum(radii**2) / rb**2))
        n = len(radii)
        w = sample_watson(n, spec.kappa, gen)
        drift = w[:, :2] / w[:, 2:3]  # lateral drift per unit length along the bundle
        phase = 2.0 * np.pi * gen.random(n)
        plane = 2.0 * np.pi * gen.random(n)
        g_ratio = np.full(n, spec.g_ratio)
        batch = 4096
        for start in range(0, n, batch):
            sl = slice(start, start + batch)
            pts = _axon_points(
                bdef,
                centres[sl],
                drift[sl],
                spec.undulation_amplitude_um,
                spec.undulation_wavelength_um,
                phase[sl],
                plane[sl],
                spec.step_um,
            )
            add_tubes(pts, radii[sl], g_ratio[sl], index)

    for _ in range(spec.n_vessels):
        d = gen.normal(size=3)
        d /= np.linalg.norm(d)
        through = centre + (gen.random(3) - 0.5) * 0.6 * fov
        radius = gen.uniform(*VESSEL_RADIUS_UM)
        t = np.linspace(-fov, fov, int(np.ceil(2 * fov / spec.step_um)) + 1)
        pts = (through[None] + t[:, None] * d[None])[None]
        add_tubes(pts, np.array([radius]), np.array([VESSEL_LUMEN_RATIO]), -1)

    return Geometry(
        p0=np.ascontiguousarray(np.concatenate(p0s)),
        p1=np.ascontiguousarray(np.concatenate(p1s)),
        tube=np.concatenate(tubes).astype(np.int64),
        tube_radius=np.concatenate(radii_all),
        tube_inner_ratio=np.concatenate(inner_all),
        tube_bundle=np.concatenate(bundle_all),
        bundle_names=tuple(d.name for d in defs),
        bundle_packing=np.array(packing),
        fov_um=fov,
    )
