"""Microscopy rendering of a geometry as a lazily computed (dask) volume.

Each chunk is rendered on its own from the geometry, with a halo wide enough for every
filter, and its noise comes from a hash of (seed, global voxel index): a voxel's value
does not depend on the chunking.

Contrasts (intensities are dimensionless, ~[0, 1]):

``hipct``
    Propagation phase contrast of dehydrated tissue: a phase map from myelin (strong),
    axoplasm and the fascicle's tissue density (the axon occupancy smoothed over
    ``tissue_sigma(spacing)`` and divided by the packing), dark vessel lumens; edge
    enhancement ``I = G*phi - alpha * Laplacian(G*phi)`` with the PSF ``G`` of ``psf_sigma_vox``;
    additive Gaussian noise. Axons below the voxel size show as oriented texture.
``em``
    Stained micro-CT / EM-like: bright myelin rings, dark axoplasm, grey extracellular
    space, light vessel lumens; small PSF; noise.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from phantoms import _kernels
from phantoms.errors import PhantomError
from phantoms.geometry import Geometry


@dataclass(frozen=True)
class ContrastModel:
    """Parameters of a microscopy contrast (see the module docstring)."""

    name: str
    background: float
    tissue: float
    myelin: float
    axoplasm: float
    vessel_wall: float
    vessel_lumen: float
    psf_sigma_vox: float
    edge_alpha: float
    tissue_sigma_vox: float
    noise_sigma: float
    mask_threshold: float = 0.3
    tissue_sigma_um: float = 3.0

    def tissue_sigma(self, spacing_um) -> np.ndarray:
        """Per-axis sigma (voxels) of the tissue-density smoothing: at least
        ``tissue_sigma_vox`` voxels and ``tissue_sigma_um`` micrometres (so that the space
        between resolved axons still counts as tissue)."""
        spacing = np.broadcast_to(np.asarray(spacing_um, dtype=np.float64), (3,))
        return np.maximum(self.tissue_sigma_vox, self.tissue_sigma_um / spacing)


CONTRAST_MODELS = {
    "hipct": ContrastModel(
        "hipct", background=0.05, tissue=0.25, myelin=0.5, axoplasm=0.15, vessel_wall=0.3,
        vessel_lumen=0.0, psf_sigma_vox=1.0, edge_alpha=0.6, tissue_sigma_vox=1.5,
        noise_sigma=0.03,
    ),
    "em": ContrastModel(
        "em", background=0.1, tissue=0.35, myelin=0.55, axoplasm=-0.2, vessel_wall=0.2,
        vessel_lumen=0.4, psf_sigma_vox=0.5, edge_alpha=0.0, tissue_sigma_vox=1.5,
        noise_sigma=0.02,
    ),
}


def get_contrast(contrast: str | ContrastModel) -> ContrastModel:
    """A contrast model by name (``hipct``, ``em``) or as given."""
    if isinstance(contrast, ContrastModel):
        return contrast
    try:
        return CONTRAST_MODELS[contrast]
    except (KeyError, TypeError):
        raise PhantomError(
            f"contrast {contrast!r} is unknown; use one of {', '.join(CONTRAST_MODELS)}"
        ) from None


def halo_voxels(model: ContrastModel, spacing_um=1.0) -> int:
    """Halo (voxels) each chunk is rendered with so filters see the same inputs."""
    tissue = float(np.max(model.tissue_sigma(spacing_um)))
    return int(math.ceil(4.0 * model.psf_sigma_vox + 4.0 * tissue)) + 2


class SegmentIndex:
    """Segments binned into cubic cells, to find those near a block quickly."""

    def __init__(self, p0: np.ndarray, p1: np.ndarray, reach: np.ndarray, cell_um: float):
        self.cell_um = float(cell_um)
        n = len(p0)
        lo = np.floor((np.minimum(p0, p1) - reach[:, None]) / cell_um).astype(np.int32)
        hi = np.floor((np.maximum(p0, p1) + reach[:, None]) / cell_um).astype(np.int32)
        self.origin = lo.min(axis=0).astype(np.int64) if n else np.zeros(3, np.int64)
        lo -= self.origin.astype(np.int32)
        hi -= self.origin.astype(np.int32)
        self.dims = (hi.max(axis=0).astype(np.int64) + 1) if n else np.ones(3, np.int64)
        span = hi - lo  # cells covered beyond the first, per axis (small: segments are short)
        del hi
        cells: list[np.ndarray] = []
        segs: list[np.ndarray] = []
        ids = np.arange(n, dtype=np.int32)
        for ox in range(int(span[:, 0].max(initial=0)) + 1):
            for oy in range(int(span[:, 1].max(initial=0)) + 1):
                for oz in range(int(span[:, 2].max(initial=0)) + 1):
                    sel = (span[:, 0] >= ox) & (span[:, 1] >= oy) & (span[:, 2] >= oz)
                    lsel = lo[sel].astype(np.int64)
                    cells.append(((lsel[:, 0] + ox) * self.dims[1] + lsel[:, 1] + oy)
                                 * self.dims[2] + lsel[:, 2] + oz)
                    segs.append(ids[sel])
        cell = np.concatenate(cells) if cells else np.zeros(0, np.int64)
        seg = np.concatenate(segs) if segs else np.zeros(0, np.int32)
        del cells, segs, lo, span
        order = np.argsort(cell, kind="stable")
        self.cell_sorted = cell[order]
        self.seg_sorted = seg[order]

    def query(self, lo_um: np.ndarray, hi_um: np.ndarray) -> np.ndarray:
        """Sorted unique indices of segments whose reach overlaps the box [lo, hi] um."""
        clo = np.maximum(np.floor(lo_um / self.cell_um).astype(np.int64) - self.origin, 0)
        chi = np.minimum(np.floor(hi_um / self.cell_um).astype(np.int64) - self.origin,
                         self.dims - 1)
        if np.any(chi < clo):
            return np.zeros(0, dtype=np.int64)
        parts = []
        for x in range(clo[0], chi[0] + 1):
            for y in range(clo[1], chi[1] + 1):
                c0 = (x * self.dims[1] + y) * self.dims[2] + clo[2]
                c1 = (x * self.dims[1] + y) * self.dims[2] + chi[2]
                a = np.searchsorted(self.cell_sorted, c0, side="left")
                b = np.searchsorted(self.cell_sorted, c1, side="right")
                parts.append(self.seg_sorted[a:b])
        if not parts:
            return np.zeros(0, dtype=np.int64)
        found = np.concatenate(parts)
        if found.size == 0:
            return found.astype(np.int64)
        mark = np.zeros(int(found.max()) + 1, dtype=bool)
        mark[found] = True
        return np.flatnonzero(mark).astype(np.int64)


class BlockRenderer:
    """Renders blocks ``(2, ...)`` = (intensity, tissue mask) of a microscopy volume."""

    def __init__(
        self,
        geometry: Geometry,
        spacing_um: np.ndarray,
        shape: tuple[int, int, int],
        model: ContrastModel,
        seed: int,
        cell_vox: int = 64,
    ):
        self.spacing = np.asarray(spacing_um, dtype=np.float64)
        self.shape = tuple(int(s) for s in shape)
        self.model = model
        self.seed = int(seed)
        self.halo = halo_voxels(model, self.spacing)
        self.tissue_sigma = tuple(float(x) for x in model.tissue_sigma(self.spacing))
        g = geometry
        # visit segments in a fixed spatial order (cells of 16 voxels, then index): the
        # same order in every chunk, and memory-local rasterisation
        cell = np.floor(0.5 * (g.p0 + g.p1) / (16.0 * self.spacing)).astype(np.int64)
        cell -= cell.min(axis=0) if len(cell) else 0
        span = cell.max(axis=0) + 1 if len(cell) else np.ones(3, np.int64)
        key = (cell[:, 0] * span[1] + cell[:, 1]) * span[2] + cell[:, 2]
        order = np.argsort(key, kind="stable")
        # float32 halves the memory of large geometries (1e-4 um at 2 mm is plenty)
        self.p0 = np.ascontiguousarray(g.p0[order], dtype=np.float32)
        self.p1 = np.ascontiguousarray(g.p1[order], dtype=np.float32)
        self.tube = g.tube[order]
        self.radius = g.tube_radius[self.tube].astype(np.float32)
        self.inner = g.tube_inner_ratio[self.tube].astype(np.float32)
        self.axon = g.tube_bundle[self.tube] >= 0
        del order, cell, key
        self.packing = float(np.mean(g.bundle_packing)) if g.n_bundles else 1.0
        h = float(self.spacing.mean())
        reach = np.maximum(self.radius, 0.5 * h) + 0.5 * h
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.index = SegmentIndex(self.p0, self.p1, reach, cell_vox * float(self.spacing.max()))

    #: rendered blocks kept (bytes) so that volume and mask computed in separate dask
    #: calls render each block once
    cache_bytes = 128 * 2**20

    def render(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        """Block [start, stop) as float32 (2, ...): intensity and tissue mask (0/1)."""
        key: tuple[tuple[int, ...], tuple[int, ...]] = (
            tuple(int(a) for a in start), tuple(int(b) for b in stop))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit.copy()
        block = self._render(*key)
        block.setflags(write=False)
        with self._lock:
            self._cache[key] = block
            while sum(b.nbytes for b in self._cache.values()) > self.cache_bytes and len(
                self._cache
            ) > 1:
                self._cache.popitem(last=False)
        return block.copy()

    def _render(self, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
        from scipy import ndimage

        m = self.model
        halo = self.halo
        start_h = np.asarray(start) - halo
        shape_h = np.asarray(stop) - np.asarray(start) + 2 * halo
        origin_um = (start_h + 0.5) * self.spacing
        lo_um = origin_um - self.spacing
        hi_um = origin_um + shape_h * self.spacing
        segs = self.index.query(lo_um, hi_um)
        ax_segs = segs[self.axon[segs]]
        ve_segs = segs[~self.axon[segs]]
        args = (origin_um, shape_h.astype(np.int64), self.spacing, self.p0, self.p1,
                self.radius, self.inner, self.tube)
        outer, inner = _kernels.rasterise_tubes(*args, ax_segs)
        np.minimum(outer, 1.0, out=outer)
        np.minimum(inner, outer, out=inner)
        tissue = ndimage.gaussian_filter(outer, self.tissue_sigma, mode="nearest")
        tissue *= np.float32(1.0 / self.packing)
        np.clip(tissue, 0.0, 1.0, out=tissue)
        # phase: myelin (outer - inner) and axoplasm (inner), in place to save memory
        phi = outer
        phi *= np.float32(m.myelin)
        inner *= np.float32(m.axoplasm - m.myelin)
        phi += inner
        del inner
        if ve_segs.size:
            v_outer, v_inner = _kernels.rasterise_tubes(*args, ve_segs)
            np.minimum(v_outer, 1.0, out=v_outer)
            np.minimum(v_inner, v_outer, out=v_inner)
            tissue *= 1.0 - v_outer
            phi += np.float32(m.vessel_wall) * (v_outer - v_inner)
            phi += np.float32(m.vessel_lumen - m.background) * v_inner
            del v_outer, v_inner
        phi += np.float32(m.tissue) * tissue
        phi += np.float32(m.background)
        image = ndimage.gaussian_filter(phi, m.psf_sigma_vox, mode="nearest")
        if m.edge_alpha:
            # Laplacian of the PSF-blurred phase (voxel units): propagation fringes
            image -= np.float32(m.edge_alpha) * ndimage.laplace(image, mode="nearest")
        crop = (slice(halo, -halo),) * 3
        image = image[crop]
        mask = (tissue[crop] > m.mask_threshold).astype(np.float32)
        if m.noise_sigma > 0:
            noise = _kernels.hashed_normal(
                np.asarray(start, dtype=np.int64),
                np.asarray(image.shape, dtype=np.int64),
                np.asarray(self.shape, dtype=np.int64),
                self.seed,
            )
            image += np.float32(m.noise_sigma) * noise
        return np.stack([image.astype(np.float32), mask])


def render_dask(renderer: BlockRenderer, chunks):
    """A dask array (2, I, J, K) float32 of rendered blocks."""
    import dask.array as da

    template = da.zeros(renderer.shape, chunks=chunks, dtype=np.uint8)

    def block(_x, block_info=None):
        loc = block_info[0]["array-location"]
        start = tuple(int(a) for a, _ in loc)
        stop = tuple(int(b) for _, b in loc)
        return renderer.render(start, stop)

    return da.map_blocks(
        block,
        template,
        new_axis=0,
        chunks=((2,),) + template.chunks,
        dtype=np.float32,
        meta=np.zeros((0, 0, 0, 0), dtype=np.float32),
    )
