"""`build_phantom`: a case's geometry with its dMRI grid, truth, signal and microscopy."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from phantoms import dmri as _dmri
from phantoms.errors import PhantomError
from phantoms.geometry import Geometry, build_geometry
from phantoms.microscopy import BlockRenderer, ContrastModel, get_contrast, render_dask
from phantoms.schemes import get_scheme
from phantoms.spec import CaseSpec

S0 = 100.0
#: streamlines kept per truth bundle (evenly spread over its axons)
STREAMLINES_PER_BUNDLE = 200


@dataclass(frozen=True)
class DMRIGrid:
    """The dMRI voxel grid: ``shape`` (X, Y, Z), ``voxel_size_mm`` (3,), ``affine`` (4, 4)
    voxel -> world (RAS+ mm), centred on the world origin."""

    shape: tuple[int, int, int]
    voxel_size_mm: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class TruthBundle:
    """One ground-truth bundle on the dMRI grid.

    ``streamlines``: list of (n, 3) float arrays in dMRI voxel coordinates (voxel centres
    at integers); ``head_roi``, ``tail_roi``, ``mask``: (X, Y, Z) bool.
    """

    name: str
    streamlines: list[np.ndarray]
    head_roi: np.ndarray
    tail_roi: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """Exact truth per dMRI voxel (see docs/internals.md for shapes)."""

    peaks: np.ndarray
    fractions: np.ndarray
    nufo: np.ndarray
    mask: np.ndarray
    fod_sh: np.ndarray
    bundles: list[TruthBundle]
    tissue_fraction: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class DMRISignal:
    """``data`` (X, Y, Z, N) float64, ``bvals`` (N,) s/mm^2, ``bvecs`` (N, 3) in the grid's
    ijk frame, ``s0`` the b=0 signal, ``snr`` (None = noise-free), ``sigma`` of the noise."""

    data: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    s0: float
    snr: float | None
    sigma: float


@dataclass(frozen=True)
class Microscopy:
    """A rendered microscopy volume (lazy).

    ``volume`` dask (I, J, K) float32; ``mask`` dask (I, J, K) bool (tissue);
    ``spacing_um`` (3,); ``affine`` (4, 4) microscopy voxel -> dMRI world mm. Array axes
    are parallel to the dMRI grid axes.
    """

    volume: Any
    mask: Any
    spacing_um: np.ndarray
    affine: np.ndarray
    contrast: str


def _seed_from(rng: int | np.random.Generator | None, default: int) -> int:
    if rng is None:
        return int(default)
    return int(np.random.default_rng(rng).integers(0, 2**62))


class Phantom:
    """A case's fibre geometry, with everything rendered from it.

    Use `build_phantom`. ``spec`` is the `CaseSpec`, ``geometry`` the `Geometry`
    (micrometres, grid frame), ``grid`` the `DMRIGrid`.
    """

    def __init__(self, spec: CaseSpec, geometry: Geometry):
        self.spec = spec
        self.geometry = geometry
        h = spec.voxel_size_mm
        n = spec.grid_size
        affine = np.diag([h, h, h, 1.0])
        affine[:3, 3] = -(n - 1) / 2.0 * h
        self.grid = DMRIGrid(
            shape=(n, n, n), voxel_size_mm=np.full(3, float(h)), affine=affine
        )
        self._scheme = get_scheme(spec.scheme)

    @property
    def voxel_um(self) -> np.ndarray:
        return self.grid.voxel_size_mm * 1000.0

    @cached_property
    def _sums(self) -> _dmri.VoxelSums:
        return _dmri.voxel_sums(
            self.geometry, self.grid.shape, self.voxel_um, self._scheme.bvals,
            self._scheme.bvecs, self._scheme.diffusivities,
        )

    def truth(self) -> GroundTruth:
        """The exact ground truth on the dMRI grid (computed once, then cached)."""
        return self._truth

    @cached_property
    def _truth(self) -> GroundTruth:
        shape = self.grid.shape
        sums = self._sums
        peaks, frac, nufo = _dmri.truth_peaks(sums)
        fod = sums.fod_sh
        k = self.geometry.n_bundles
        bundles = self._truth_bundles(sums)
        return GroundTruth(
            peaks=peaks.reshape(shape + (k, 3)),
            fractions=frac.reshape(shape + (k,)),
            nufo=nufo.reshape(shape).astype(np.int64),
            mask=(nufo > 0).reshape(shape),
            fod_sh=fod.reshape(shape + (fod.shape[-1],)),
            bundles=bundles,
            tissue_fraction=sums.tissue.reshape(shape),
        )

    def _truth_bundles(self, sums: _dmri.VoxelSums) -> list[TruthBundle]:
        from scipy import ndimage

        g = self.geometry
        shape = self.grid.shape
        vox_um = self.voxel_um
        fov = g.fov_um
        mid = 0.5 * (g.p0 + g.p1)
        inside = np.all((mid >= 0) & (mid < fov), axis=1) & g.is_axon
        tube_in = g.tube[inside]
        seg_in = np.flatnonzero(inside)
        # first / last inside segment of each tube (segments are ordered along tubes)
        tubes, first = np.unique(tube_in, return_index=True)
        last = len(tube_in) - 1 - np.unique(tube_in[::-1], return_index=True)[1]
        out = []
        for b, name in enumerate(g.bundle_names):
            sel = g.tube_bundle[tubes] == b
            mask = (sums.fractions[:, b] >= _dmri.MIN_FRACTION).reshape(shape)

            def roi(points: np.ndarray, mask=mask) -> np.ndarray:
                r = np.zeros(shape, dtype=bool)
                idx = np.clip(np.floor(points / vox_um).astype(int), 0, np.array(shape) - 1)
                r[tuple(idx.T)] = True
                r = ndimage.binary_dilation(r, iterations=1) & mask
                return r

            head = roi(g.p0[seg_in[first[sel]]])
            tail = roi(g.p1[seg_in[last[sel]]])
            tube_ids = tubes[sel]
            pick = tube_ids[np.unique(
                np.linspace(0, len(tube_ids) - 1, min(STREAMLINES_PER_BUNDLE, len(tube_ids)))
                .round().astype(int)
            )] if len(tube_ids) else tube_ids
            streamlines = []
            pos = np.searchsorted(tubes, pick)
            for a, z in zip(first[pos], last[pos], strict=True):
                s = seg_in[a:z + 1]
                # keep the longest run of consecutive segments
                breaks = np.flatnonzero(np.diff(s) != 1) + 1
                runs = np.split(s, breaks)
                run = max(runs, key=len)
                pts = np.concatenate([g.p0[run], g.p1[run[-1:]]])
                streamlines.append(pts / vox_um - 0.5)
            out.append(TruthBundle(name, streamlines, head, tail, mask))
        return out

    def simulate_dmri(self, *, rng: int | np.random.Generator | None = None) -> DMRISignal:
        """The dMRI signal of the case's scheme with Rician noise at ``spec.snr``.

        ``rng`` None derives the noise seed from ``spec.seed``; noise-free when snr is None.
        """
        sch = self._scheme
        frac = _dmri.signal_fraction(self._sums, sch.bvals, sch.bvecs, sch.diffusivities)
        data = S0 * frac.reshape(self.grid.shape + (len(sch.bvals),))
        snr = self.spec.snr
        sigma = 0.0
        if snr is not None:
            sigma = S0 / float(snr)
            gen = np.random.default_rng(_seed_from(rng, self.spec.seed + 7919))
            n1 = gen.normal(0.0, sigma, size=data.shape)
            n2 = gen.normal(0.0, sigma, size=data.shape)
            data = np.sqrt((data + n1) ** 2 + n2**2)
        return DMRISignal(data, sch.bvals.copy(), sch.bvecs.copy(), S0, snr, sigma)

    def microscopy_shape(self, voxel_size_um) -> tuple[tuple[int, int, int], np.ndarray]:
        """Shape and spacing (um) of a microscopy volume covering the field of view."""
        spacing = np.broadcast_to(np.asarray(voxel_size_um, dtype=np.float64), (3,)).copy()
        if not np.all(spacing > 0):
            raise PhantomError(f"voxel_size_um {voxel_size_um!r} must be > 0")
        shape = tuple(int(max(1, round(self.geometry.fov_um / s))) for s in spacing)
        return shape, spacing  # type: ignore[return-value]

    def microscopy_affine(self, spacing_um: np.ndarray) -> np.ndarray:
        """(4, 4) microscopy voxel index -> dMRI world mm."""
        scale = np.asarray(spacing_um, float) / self.voxel_um
        t = np.eye(4)
        t[:3, :3] = np.diag(scale)
        t[:3, 3] = 0.5 * scale - 0.5
        return self.grid.affine @ t

    def render_microscopy(
        self,
        *,
        voxel_size_um=None,
        contrast: str | ContrastModel | None = None,
        chunks=None,
        rng: int | np.random.Generator | None = None,
    ) -> Microscopy:
        """A lazily rendered microscopy volume of the geometry.

        Parameters
        ----------
        voxel_size_um : float or (3,) floats, optional
            Voxel size (anisotropic allowed); default ``spec.microscopy_voxel_um``.
        contrast : {'hipct', 'em'} or ContrastModel, optional
            Default ``spec.contrast``.
        chunks : int or tuple, optional
            Dask chunks (default: 128 per axis, one chunk along axes of <= 200 voxels).
            Values do not depend on the chunking.
        rng : int, Generator or None
            Noise seed; None derives it from ``spec.seed``.
        """
        vs = self.spec.microscopy_voxel_um if voxel_size_um is None else voxel_size_um
        shape, spacing = self.microscopy_shape(vs)
        model = get_contrast(self.spec.contrast if contrast is None else contrast)
        seed = _seed_from(rng, self.spec.seed + 104729)
        renderer = BlockRenderer(self.geometry, spacing, shape, model, seed)
        if chunks is None:
            chunks = tuple(s if s <= 200 else 128 for s in shape)
        stacked = render_dask(renderer, chunks)
        return Microscopy(
            volume=stacked[0],
            mask=stacked[1] > 0.5,
            spacing_um=spacing,
            affine=self.microscopy_affine(spacing),
            contrast=model.name,
        )


def build_phantom(spec: CaseSpec, *, rng: int | np.random.Generator | None = None) -> Phantom:
    """Build a case's phantom (geometry now; truth, signal and microscopy on request).

    ``rng`` seeds the geometry; None uses ``spec.seed``. Same seed, identical arrays.
    """
    if not isinstance(spec, CaseSpec):
        raise PhantomError(f"spec must be a CaseSpec, got {type(spec).__name__}")
    return Phantom(spec, build_geometry(spec, rng))
