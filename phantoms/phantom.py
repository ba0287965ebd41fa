"""`build_phantom`: a case's geometry with its dMRI grid, truth, signal and microscopy."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from phantoms import _kernels
from phantoms import dmri as _dmri
from phantoms.errors import PhantomError
from phantoms.geometry import Geometry, build_geometry
from phantoms.microscopy import BlockRenderer, ContrastModel, get_contrast, render_dask
from phantoms.schemes import get_scheme
from phantoms.spec import CaseSpec

S0 = 100.0
#: streamlines kept per truth bundle (evenly spread over its axons)
STREAMLINES_PER_BUNDLE = 200
#: truth streamline points lie this far (voxels) inside the grid's outer faces
ENDPOINT_INSET_VOX = 1e-3


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
        """Truth bundles, consistent by construction (docs/phantoms.md):

        * every axon is clipped to the field of view (faces at voxel coordinates -0.5 and
          n - 0.5; points moved `ENDPOINT_INSET_VOX` inside); its pieces inside are runs;
        * ``mask`` = voxels where the bundle's fraction >= MIN_FRACTION (where the truth
          has the bundle's peak);
        * ``head_roi`` / ``tail_roi`` = voxels holding the point where an axon first enters
          / last leaves the field of view, dilated by one voxel (6-connected), within the
          mask;
        * streamlines: axons inside the field of view in one piece whose every traversed
          voxel (the tractometer's voxelisation) lies in the mask, chosen first to cover
          the mask (greedy), then evenly; so each starts in the head ROI, ends in the tail
          ROI, and stays within the mask and the grid.
        """
        from scipy import ndimage, sparse

        g = self.geometry
        shape = self.grid.shape
        n = np.asarray(shape, dtype=np.int64)
        runs = _clip_to_fov(g, self.voxel_um, shape)
        n_vox = int(np.prod(shape))
        out = []
        for b, name in enumerate(g.bundle_names):
            mask = (sums.fractions[:, b] >= _dmri.MIN_FRACTION).reshape(shape)
            mine = np.flatnonzero(g.tube_bundle[runs.tube] == b)
            flat_mask = mask.ravel()

            def roi(points: np.ndarray, mask=mask) -> np.ndarray:
                r = np.zeros(n_vox, dtype=bool)
                idx = np.floor(points + 0.5).astype(np.int64)
                ok = np.all((idx >= 0) & (idx < n), axis=1)
                idx = idx[ok]
                r[(idx[:, 0] * n[1] + idx[:, 1]) * n[2] + idx[:, 2]] = True
                return ndimage.binary_dilation(r.reshape(shape), iterations=1) & mask

            # the first run of each tube starts where it enters, the last ends where it leaves
            tubes = runs.tube[mine]
            first = mine[np.r_[True, tubes[1:] != tubes[:-1]]] if len(mine) else mine
            last = mine[np.r_[tubes[1:] != tubes[:-1], True]] if len(mine) else mine
            head = roi(runs.points[runs.offsets[first]])
            tail = roi(runs.points[runs.offsets[last] + runs.lengths[last] - 1])
            # candidates: tubes inside in one piece, every traversed voxel in the mask
            single = first[first == last]
            cand = single[runs.lengths[single] >= 2]
            flat, counts = _kernels.traversed_voxels(
                runs.points, runs.offsets[cand], runs.lengths[cand], n
            )
            owner = np.repeat(np.arange(len(cand)), counts)
            ok = np.bincount(owner, weights=~flat_mask[flat], minlength=len(cand)) == 0
            keep = ok[owner]
            cover = sparse.coo_matrix(
                (np.ones(int(keep.sum())), ((np.cumsum(ok) - 1)[owner[keep]], flat[keep])),
                shape=(int(ok.sum()), n_vox),
            ).tocsr()  # sums repeats
            cover.data[:] = 1.0
            cand = cand[ok]
            pick = _cover_then_even(cover, flat_mask, STREAMLINES_PER_BUNDLE)
            streamlines = [
                runs.points[runs.offsets[r]:runs.offsets[r] + runs.lengths[r]].copy()
                for r in cand[pick]
            ]
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


@dataclass(frozen=True)
class _Runs:
    """Axon pieces inside the field of view, in dMRI voxel coordinates: run ``r`` is
    ``points[offsets[r]:offsets[r] + lengths[r]]`` of tube ``tube[r]``; runs are ordered by
    tube and along it."""

    points: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    tube: np.ndarray


def _clip_to_fov(g: Geometry, voxel_um: np.ndarray, shape: tuple[int, int, int]) -> _Runs:
    """Clip every axon polyline to the field of view (`_kernels.clip_polylines`).

    In voxel coordinates the field of view is [-0.5, n - 0.5] per axis; the points are then
    moved `ENDPOINT_INSET_VOX` inside it, so that each lies strictly inside the grid (in
    voxel ``floor(p + 0.5)``), also after a float32 round trip through world mm.
    """
    points, offsets, lengths, tube = _kernels.clip_polylines(
        g.p0, g.p1, g.tube, g.is_axon, np.asarray(voxel_um, dtype=np.float64),
        np.asarray(shape, dtype=np.int64), float(ENDPOINT_INSET_VOX),
    )
    return _Runs(points, offsets, lengths, tube)


def _cover_then_even(cover, target: np.ndarray, n_max: int) -> np.ndarray:
    """Rows of the 0/1 sparse matrix ``cover`` (candidates x voxels): greedily the row
    covering the most still uncovered ``target`` voxels (lowest index on ties) until all
    are covered, then evenly spread rows up to ``n_max``; sorted."""
    m = cover.shape[0]
    if m == 0 or n_max <= 0:
        return np.zeros(0, dtype=np.int64)
    need = target.astype(np.float64)
    chosen: list[int] = []
    while len(chosen) < n_max:
        gain = cover @ need
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            break
        chosen.append(best)
        need[cover.indices[cover.indptr[best]:cover.indptr[best + 1]]] = 0.0
    rest = np.setdiff1d(np.arange(m), chosen)
    k = min(n_max - len(chosen), len(rest))
    if k > 0:
        rest = rest[np.unique(np.linspace(0, len(rest) - 1, k).round().astype(np.int64))]
    else:
        rest = rest[:0]
    return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), rest]))


def build_phantom(spec: CaseSpec, *, rng: int | np.random.Generator | None = None) -> Phantom:
    """Build a case's phantom (geometry now; truth, signal and microscopy on request).

    ``rng`` seeds the geometry; None uses ``spec.seed``. Same seed, identical arrays.
    """
    if not isinstance(spec, CaseSpec):
        raise PhantomError(f"spec must be a CaseSpec, got {type(spec).__name__}")
    return Phantom(spec, build_geometry(spec, rng))
