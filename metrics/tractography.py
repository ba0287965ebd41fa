"""Tractography scores: the Tractometer (VS, IS = IC + NC, WPC, VB, IB; per bundle OL,
OR_gt, OR_vs, F1) and the agreement of streamlines with an orientation field.

Coordinates: streamline points are in voxel coordinates of the scoring grid with voxel
centres at integer coordinates (dipy's ``vox`` space, ``center`` origin; nibabel's
convention), so point p lies in voxel ``floor(p + 0.5)``.

Voxelisation of B (the voxels a bundle's valid streamlines pass through): exact voxel
traversal of every segment. A segment from p0 to p1 crosses the voxel faces
``x_a = k + 1/2`` between its end voxels; the voxels it passes through are those of its
end points plus, at each face crossing, the two voxels on either side of that face (the
other coordinates taken at the crossing point). This is the set Amanatides and Woo's
walk visits, computed per face crossing (no stepping order needed) in a compiled loop;
where a segment passes exactly through a voxel edge or corner (a set of measure zero)
the voxel with the larger index is taken. Parts outside the grid are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from metrics.errors import MetricInputError

#: streamline categories in ``TractometerResult.category``
VS, WPC, IC, NC = 0, 1, 2, 3
_CATEGORY_NAMES = ("VS", "WPC", "IC", "NC")


@dataclass(frozen=True)
class BundleDefinition:
    """A ground-truth bundle as the Tractometer sees it.

    Attributes
    ----------
    name : str
        Bundle name.
    head, tail : ndarray of bool, shape (X, Y, Z)
        Endpoint ROIs: a valid streamline has one end in each.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Ground-truth volume A for OL / OR / F1; None skips those scores (NaN).
    all_mask : ndarray of bool, optional
        Every point of a valid streamline lies in it (scilpy's ``all_mask``, also
        ``limits_mask``).
    any_mask : ndarray of bool, optional
        At least one point of a valid streamline lies in it.
    length_mm : (float, float), optional
        Inclusive length limits in mm.
    max_angle_deg : float, optional
        Limit on the winding angle: the sum of the turning angles between consecutive
        segments, in degrees (scilpy's ``angle``, used to reject loops).
    """

    name: str
    head: np.ndarray
    tail: np.ndarray
    mask: np.ndarray | None = None
    all_mask: np.ndarray | None = None
    any_mask: np.ndarray | None = None
    length_mm: tuple[float, float] | None = None
    max_angle_deg: float | None = None


@dataclass(frozen=True)
class BundleScore:
    """Scores of one ground-truth bundle (see :func:`tractometer`)."""

    name: str
    vs: int
    wpc: int
    n_voxels_gt: int
    n_voxels_vs: int
    tp: int
    fp: int
    fn: int
    ol: float
    or_gt: float
    or_vs: float
    f1: float


@dataclass(frozen=True)
class TractometerResult:
    """Result of :func:`tractometer`.

    Attributes
    ----------
    n_streamlines : int
    category : ndarray of int8, shape (S,)
        Per streamline: 0 VS, 1 WPC, 2 IC, 3 NC (WPC are part of NC in the totals).
    bundle_index : ndarray of int64, shape (S,)
        Bundle of a VS or WPC streamline (index into ``bundles``), else -1.
    bundles : list of BundleScore
    invalid_bundles : dict of (str, str) to int
        IC count per ROI pair (named ``<bundle>_head`` / ``<bundle>_tail``) forming no
        bundle.
    roi_pair : ndarray of int64, shape (S, 2)
        For IC streamlines the two ROI indices (2 b = head of bundle b, 2 b + 1 = its
        tail), else -1.
    """

    n_streamlines: int
    category: np.ndarray
    bundle_index: np.ndarray
    bundles: list[BundleScore]
    invalid_bundles: dict[tuple[str, str], int] = field(default_factory=dict)
    roi_pair: np.ndarray | None = None

    def _count(self, code: int) -> int:
        return int(np.count_nonzero(self.category == code))

    @property
    def vs_count(self) -> int:
        return self._count(VS)

    @property
    def wpc_count(self) -> int:
        return self._count(WPC)

    @property
    def ic_count(self) -> int:
        return self._count(IC)

    @property
    def nc_count(self) -> int:
        """No connections, including the wrong-path connections (domain.md)."""
        return self._count(NC) + self._count(WPC)

    @property
    def is_count(self) -> int:
        return self.ic_count + self.nc_count

    @property
    def vb(self) -> int:
        return sum(1 for b in self.bundles if b.vs > 0)

    @property
    def ib(self) -> int:
        return sum(1 for n in self.invalid_bundles.values() if n > 0)

    def _fraction(self, count: int) -> float:
        return count / self.n_streamlines if self.n_streamlines else float("nan")

    def _mean(self, attr: str) -> float:
        values = [getattr(b, attr) for b in self.bundles if np.isfinite(getattr(b, attr))]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        """XScale metric names (tasks.json): fractions of all streamlines for vs, is, ic,
        nc (incl. WPC) and wpc; counts vb, ib and ``*_count``; ol, or_gt, or_vs and f1
        averaged over bundles with a ground-truth mask."""
        return {
            "n_streamlines": self.n_streamlines,
            "vs": self._fraction(self.vs_count),
            "is": self._fraction(self.is_count),
            "ic": self._fraction(self.ic_count),
            "nc": self._fraction(self.nc_count),
            "wpc": self._fraction(self.wpc_count),
            "vs_count": self.vs_count,
            "is_count": self.is_count,
            "ic_count": self.ic_count,
            "nc_count": self.nc_count,
            "wpc_count": self.wpc_count,
            "vb": self.vb,
            "ib": self.ib,
            "ol": self._mean("ol"),
            "or_gt": self._mean("or_gt"),
            "or_vs": self._mean("or_vs"),
            "f1": self._mean("f1"),
        }

    def bundle_rows(self) -> list[dict]:
        """One dict per bundle (tractography.csv rows): bundle, vs, wpc, ol, or_gt, or_vs,
        f1 and the voxel counts."""
        return [
            {
                "bundle": b.name,
                "vs_count": b.vs,
                "wpc_count": b.wpc,
                "ol": b.ol,
                "or_gt": b.or_gt,
                "or_vs": b.or_vs,
                "f1": b.f1,
                "n_voxels_gt": b.n_voxels_gt,
                "n_voxels_vs": b.n_voxels_vs,
            }
            for b in self.bundles
        ]

    def to_scilpy_dict(self) -> dict:
        """The keys of scilpy's ``results.json`` (``--compute_ic --save_wpc_separately
        --unique``): there WPC is its own class, so ``NC`` excludes WPC and
        ``IS = IC + NC``; OL / OR are fractions (scilpy's names say pct but hold
        fractions too)."""
        total = self.n_streamlines
        nc_only = self._count(NC)

        def ratio(n: int) -> float:
            return n / total if total else float("nan")

        bundle_wise: dict = {}
        for b in self.bundles:
            if np.isnan(b.ol):
                bundle_wise[b.name] = {"VS": b.vs, "Scoring skipped": "No gt_mask provided"}
                continue
            bundle_wise[b.name] = {
                "VS": b.vs,
                "TP": b.tp,
                "FP": b.fp,
                "FN": b.fn,
                "OL": b.ol,
                "OR_pct_vs": b.or_vs,
                "OR_pct_gt": b.or_gt,
                "f1": b.f1,
                "WPC": {"Count": b.wpc} if b.wpc else None,
            }
        bundle_wise["IB"] = {f"{a}_{c}": {"IC": n} for (a, c), n in self.invalid_bundles.items()}
        out = {
            "total_streamlines": total,
            "VB": self.vb,
            "VS": self.vs_count,
            "VS_ratio": ratio(self.vs_count),
            "IS": self.ic_count + nc_only,
            "IS_ratio": ratio(self.ic_count + nc_only),
            "IB": self.ib,
            "IC": self.ic_count,
            "IC_ratio": ratio(self.ic_count),
            "NC": nc_only,
            "NC_ratio": ratio(nc_only),
            "WPC": self.wpc_count,
            "WPC_bundle": sum(1 for b in self.bundles if b.wpc > 0),
            "WPC_ratio": ratio(self.wpc_count),
            "bundle_wise": bundle_wise,
        }
        if any(np.isfinite(b.ol) for b in self.bundles):
            out.update(
                {
                    "mean_OL": self._mean("ol"),
                    "mean_OR_gt": self._mean("or_gt"),
                    "mean_OR_vs": self._mean("or_vs"),
                    "mean_f1": self._mean("f1"),
                }
            )
        return out


# --------------------------------------------------------------------------- geometry


def _flatten_streamlines(streamlines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N, 3), offsets (S,) and lengths (S,) of a streamline collection.

    Points stay float32 when they are float32 (a loaded tractogram: no float64 copy of
    all points); every computation on them promotes to float64 first, so the results
    do not depend on the storage type. A compact ArraySequence is used without a copy.
    """
    data = getattr(streamlines, "_data", None)
    if data is not None and hasattr(streamlines, "_offsets"):  # dipy / nibabel ArraySequence
        offsets = np.asarray(streamlines._offsets, dtype=np.int64)
        lengths = np.asarray(streamlines._lengths, dtype=np.int64)
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        compact = len(offsets) == 0 or (
            offsets[0] == 0 and np.array_equal(offsets[1:], ends[:-1]) and len(data) >= total)
        if compact:
            points = np.asarray(data)[:total]
        else:
            seq = streamlines.copy()
            points = np.asarray(seq._data)
            offsets = np.asarray(seq._offsets, dtype=np.int64)
            lengths = np.asarray(seq._lengths, dtype=np.int64)
        if points.dtype not in (np.float32, np.float64):
            points = points.astype(np.float64)
    else:
        arrays = [np.asarray(s, dtype=np.float64) for s in streamlines]
        for i, s in enumerate(arrays):
            if s.ndim != 2 or s.shape[1] != 3:
                raise MetricInputError(f"streamline {i} has shape {s.shape}; expected (n, 3)")
        lengths = np.array([len(s) for s in arrays], dtype=np.int64)
        offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
        points = np.concatenate(arrays) if arrays else np.zeros((0, 3))
    if points.ndim != 2 or (len(points) and points.shape[1] != 3):
        raise MetricInputError(f"streamline points have shape {points.shape}; expected (N, 3)")
    if len(lengths) and lengths.min() < 1:
        raise MetricInputError("streamlines must have at least one point each")
    if not _all_finite(points):
        raise MetricInputError("streamlines contain NaN or infinite coordinates")
    return points, offsets, lengths


@numba.njit(cache=True)
def _all_finite(points):  # pragma: no cover
    for i in range(points.shape[0]):
        for c in range(points.shape[1]):
            if not np.isfinite(points[i, c]):
                return False
    return True


def _voxel_of(points: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)


def _flat_points(points: np.ndarray, shape: tuple[int, ...], chunk: int = 1 << 20) -> np.ndarray:
    """Flat voxel index (-1 outside) of every point, (N,) int64, in chunks (bounded memory)."""
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), chunk):
        out[start:start + chunk] = _flat_index(_voxel_of(points[start:start + chunk]), shape)
    return out


def _flat_index(vox: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat index of integer voxels (n, 3); -1 outside the grid."""
    return _compose(vox[:, 0], vox[:, 1], vox[:, 2], shape)


def _compose(i: np.ndarray, j: np.ndarray, k: np.ndarray, shape) -> np.ndarray:
    """Flat index from integer components; -1 outside the grid (no compaction)."""
    flat = (i * shape[1] + j) * shape[2] + k
    # unsigned comparison folds the "< 0" test into the upper bound test
    outside = i.astype(np.uint64) >= shape[0]
    outside |= j.astype(np.uint64) >= shape[1]
    outside |= k.astype(np.uint64) >= shape[2]
    flat[outside] = -1
    return flat


@numba.njit(cache=True)
def _mark_segment(points, a, shape, covered, vox):  # pragma: no cover
    """Mark in ``covered`` (flat, bool) the voxels the segment from point a to a + 1 passes
    through: those of both end points and, at every crossed voxel face, the two voxels on
    either side of the face (module docstring). Coordinates are promoted to float64."""
    nx, ny, nz = shape[0], shape[1], shape[2]
    for end in range(2):
        for c in range(3):
            vox[c] = np.int64(np.floor(np.float64(points[a + end, c]) + 0.5))
        if 0 <= vox[0] < nx and 0 <= vox[1] < ny and 0 <= vox[2] < nz:
            covered[(vox[0] * ny + vox[1]) * nz + vox[2]] = True
    for axis in range(3):
        x0 = np.float64(points[a, axis])
        x1 = np.float64(points[a + 1, axis])
        v0 = np.int64(np.floor(x0 + 0.5))
        v1 = np.int64(np.floor(x1 + 0.5))
        lo = min(v0, v1)
        hi = max(v0, v1)
        for face in range(lo, hi):
            t = (face + 0.5 - x0) / (x1 - x0)
            for c in range(3):
                if c != axis:
                    p0 = np.float64(points[a, c])
                    q = p0 + t * (np.float64(points[a + 1, c]) - p0)
                    vox[c] = np.int64(np.floor(q + 0.5))
            for side in range(2):
                vox[axis] = face + side
                if 0 <= vox[0] < nx and 0 <= vox[1] < ny and 0 <= vox[2] < nz:
                    covered[(vox[0] * ny + vox[1]) * nz + vox[2]] = True


@numba.njit(cache=True)
def _mark_streamlines(points, offsets, lengths, selected, shape, covered):  # pragma: no cover
    """Mark the voxels the selected streamlines (indices) pass through: all their
    segments, or the voxel of their one point."""
    nx, ny, nz = shape[0], shape[1], shape[2]
    vox = np.empty(3, np.int64)
    for s in selected:
        start = offsets[s]
        if lengths[s] == 1:
            for c in range(3):
                vox[c] = np.int64(np.floor(np.float64(points[start, c]) + 0.5))
            if 0 <= vox[0] < nx and 0 <= vox[1] < ny and 0 <= vox[2] < nz:
                covered[(vox[0] * ny + vox[1]) * nz + vox[2]] = True
        for a in range(start, start + lengths[s] - 1):
            _mark_segment(points, a, shape, covered, vox)


@numba.njit(cache=True)
def _geometry(points, offsets, lengths, voxel_size, length_mm, winding_deg):  # pragma: no cover
    """Length (mm) and winding angle (sum of turning angles, degrees) per streamline."""
    d_prev = np.empty(3)
    d = np.empty(3)
    for s in range(len(offsets)):
        total = 0.0
        turn = 0.0
        have_prev = False
        for p in range(offsets[s], offsets[s] + lengths[s] - 1):
            norm2 = 0.0
            for c in range(3):
                d[c] = (np.float64(points[p + 1, c]) - np.float64(points[p, c])) * voxel_size[c]
                norm2 += d[c] * d[c]
            if norm2 == 0.0:
                continue
            total += np.sqrt(norm2)
            if have_prev:
                cx = d_prev[1] * d[2] - d_prev[2] * d[1]
                cy = d_prev[2] * d[0] - d_prev[0] * d[2]
                cz = d_prev[0] * d[1] - d_prev[1] * d[0]
                dot = d_prev[0] * d[0] + d_prev[1] * d[1] + d_prev[2] * d[2]
                turn += np.arctan2(np.sqrt(cx * cx + cy * cy + cz * cz), dot)
            for c in range(3):
                d_prev[c] = d[c]
            have_prev = True
        length_mm[s] = total
        winding_deg[s] = np.degrees(turn)


def streamline_voxel_mask(streamlines, shape) -> np.ndarray:
    """Boolean volume of the voxels the streamlines' segments pass through.

    Parameters
    ----------
    streamlines : sequence of (n_i, 3) arrays or an ArraySequence
        Voxel coordinates, voxel centres at integers.
    shape : tuple of 3 int

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    points, offsets, lengths = _flatten_streamlines(streamlines)
    shape_arr = np.asarray(shape, dtype=np.int64)
    out = np.zeros(int(np.prod(shape)), dtype=bool)
    _mark_streamlines(points, offsets, lengths, np.arange(len(lengths)), shape_arr, out)
    return out.reshape(tuple(shape))


def _streamline_geometry(points, offsets, lengths, voxel_size):
    """Length in mm (S,) and winding angle in degrees (S,) of every streamline."""
    n = len(lengths)
    length_mm = np.zeros(n)
    winding = np.zeros(n)
    _geometry(points, offsets, lengths, np.asarray(voxel_size, np.float64), length_mm, winding)
    return length_mm, winding


# --------------------------------------------------------------------------- scoring


def _as_definition(bundle) -> BundleDefinition:
    if isinstance(bundle, BundleDefinition):
        return bundle

    def get(*names):
        for name in names:
            if isinstance(bundle, dict) and name in bundle:
                return bundle[name]
            if hasattr(bundle, name):
                return getattr(bundle, name)
        return None

    head, tail = get("head", "head_roi"), get("tail", "tail_roi")
    if head is None or tail is None:
        raise MetricInputError(f"bundle {get('name')!r} has no head/tail ROI")
    length = get("length_mm", "length")
    angle = get("max_angle_deg", "angle")
    return BundleDefinition(
        name=str(get("name")),
        head=np.asarray(head, dtype=bool),
        tail=np.asarray(tail, dtype=bool),
        mask=None if get("mask", "gt_mask") is None else np.asarray(get("mask", "gt_mask"), bool),
        all_mask=None if get("all_mask") is None else np.asarray(get("all_mask"), bool),
        any_mask=None if get("any_mask") is None else np.asarray(get("any_mask"), bool),
        length_mm=None if length is None else (float(length[0]), float(length[1])),
        max_angle_deg=None if angle is None else float(angle),
    )


def _point_mask_reduce(mask: np.ndarray, flat_points: np.ndarray, owner: np.ndarray, n: int):
    """Per streamline: number of points inside ``mask`` and number of points."""
    inside = np.zeros(len(flat_points), dtype=bool)
    ok = flat_points >= 0
    inside[ok] = mask.ravel()[flat_points[ok]]
    return np.bincount(owner, weights=inside, minlength=n), np.bincount(owner, minlength=n)


def tractometer(
    streamlines,
    bundles: Sequence,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    dilate_endpoints: int = 0,
) -> TractometerResult:
    """Score a tractogram against ground-truth bundles (Tractometer, domain.md).

    Each streamline gets exactly one category:

    - VS: its ends lie in the head and tail ROIs of a bundle (either order) and it meets
      that bundle's all/any masks, length and winding-angle limits. A streamline valid
      for several bundles counts for the first one in ``bundles`` (scilpy ``--unique``).
    - WPC (part of NC in the totals): it joins a bundle's ROIs but fails its limits;
      counted for the first such bundle.
    - IC: its ends lie in two different ROIs that form no bundle; counted for the pair of
      the lowest ROI indices (IB counts pairs with at least one IC).
    - NC: everything else (including both ends in one ROI).

    Per bundle, with A its mask and B the voxels its VS traverse (module docstring):
    ``OL = |A & B| / |A|``, ``OR_gt = |B - A| / |A|``, ``OR_vs = |B - A| / |B|`` (0 when
    B is empty, as in scilpy), ``F1 = 2 |A & B| / (|A| + |B|)`` (Dice).

    Parameters
    ----------
    streamlines : sequence of ndarray (n_i, 3) or ArraySequence
        Voxel coordinates of the scoring grid, voxel centres at integers.
    bundles : sequence of BundleDefinition (or objects / dicts with ``name``,
        ``head``/``head_roi``, ``tail``/``tail_roi``, ``mask``... attributes)
        All volumes share one shape (X, Y, Z).
    voxel_size : sequence of 3 float
        Voxel size in mm (for the length limits).
    dilate_endpoints : int
        Dilate every head/tail ROI by this many voxels (6-connected steps) first.

    Returns
    -------
    TractometerResult

    Raises
    ------
    MetricInputError
        No bundles, volumes of different shapes, an empty ground-truth mask, malformed
        streamlines.
    """
    defs = [_as_definition(b) for b in bundles]
    if not defs:
        raise MetricInputError("bundles is empty; the Tractometer needs at least one bundle")
    shape = defs[0].head.shape
    if len(shape) != 3:
        raise MetricInputError(f"bundle {defs[0].name!r} head ROI has shape {shape}; expected 3-D")
    for b in defs:
        for label, vol in (("head", b.head), ("tail", b.tail), ("mask", b.mask),
                           ("all_mask", b.all_mask), ("any_mask", b.any_mask)):
            if vol is not None and vol.shape != shape:
                raise MetricInputError(
                    f"bundle {b.name!r} {label} has shape {vol.shape}, expected {shape}"
                )
        if b.mask is not None and not b.mask.any():
            raise MetricInputError(f"bundle {b.name!r} has an empty ground-truth mask")
    voxel_size_arr = np.asarray(voxel_size, dtype=np.float64)
    if voxel_size_arr.shape != (3,) or np.any(voxel_size_arr <= 0):
        raise MetricInputError(f"voxel_size {tuple(voxel_size)} must be 3 positive numbers")
    if dilate_endpoints < 0:
        raise MetricInputError(f"dilate_endpoints {dilate_endpoints} must be >= 0")

    points, offsets, lengths = _flatten_streamlines(streamlines)
    n = len(lengths)

    # ROI membership of both ends (ROI 2 b = head of bundle b, 2 b + 1 = its tail)
    rois = []
    for b in defs:
        for roi in (b.head, b.tail):
            if dilate_endpoints:
                roi = ndimage.binary_dilation(roi, iterations=dilate_endpoints)
            rois.append(roi.ravel())
    first = _flat_index(_voxel_of(points[offsets]), shape) if n else np.zeros(0, np.int64)
    last = _flat_index(_voxel_of(points[offsets + lengths - 1]), shape) if n else first
    start_in = np.zeros((n, len(rois)), dtype=bool)
    end_in = np.zeros((n, len(rois)), dtype=bool)
    for r, roi in enumerate(rois):
        start_in[:, r] = (first >= 0) & roi[np.maximum(first, 0)]
        end_in[:, r] = (last >= 0) & roi[np.maximum(last, 0)]

    category = np.full(n, NC, dtype=np.int8)
    bundle_index = np.full(n, -1, dtype=np.int64)
    need_geometry = any(b.length_mm is not None or b.max_angle_deg is not None for b in defs)
    if need_geometry and n:
        length_mm, winding = _streamline_geometry(points, offsets, lengths, voxel_size_arr)
    owner = None
    flat_points = None

    for bi, b in enumerate(defs):
        h, t = 2 * bi, 2 * bi + 1
        cand = (start_in[:, h] & end_in[:, t]) | (start_in[:, t] & end_in[:, h])
        cand &= category != VS  # valid for an earlier bundle: taken (scilpy --unique)
        if not cand.any():
            continue
        ok = cand.copy()
        if b.length_mm is not None:
            ok &= (length_mm >= b.length_mm[0]) & (length_mm <= b.length_mm[1])
        if b.max_angle_deg is not None:
            ok &= winding <= b.max_angle_deg
        if b.all_mask is not None or b.any_mask is not None:
            if flat_points is None or owner is None:  # once, only when a bundle needs it
                flat_points = _flat_points(points, shape)
                owner = np.repeat(np.arange(n), lengths)
            if b.all_mask is not None:
                inside, total = _point_mask_reduce(b.all_mask, flat_points, owner, n)
                ok &= inside == total
            if b.any_mask is not None:
                inside, _ = _point_mask_reduce(b.any_mask, flat_points, owner, n)
                ok &= inside > 0
        category[ok] = VS  # valid wins over a wrong path for an earlier bundle
        bundle_index[ok] = bi
        wrong_path = cand & ~ok & (category == NC)
        category[wrong_path] = WPC
        bundle_index[wrong_path] = bi

    # invalid connections: two different ROIs at the ends, forming no bundle
    roi_pair = np.full((n, 2), -1, dtype=np.int64)
    rest = np.flatnonzero((category == NC) & start_in.any(axis=1) & end_in.any(axis=1))
    pairs, is_ic = _roi_pairs(start_in[rest], end_in[rest])
    category[rest[is_ic]] = IC
    roi_pair[rest[is_ic]] = pairs[is_ic]
    roi_names = [f"{b.name}_{side}" for b in defs for side in ("head", "tail")]
    invalid: dict[tuple[str, str], int] = {}
    if np.any(category == IC):
        pairs, counts = np.unique(roi_pair[category == IC], axis=0, return_counts=True)
        for (r1, r2), c in zip(pairs, counts, strict=True):
            invalid[(roi_names[r1], roi_names[r2])] = int(c)

    scores = _bundle_scores(points, offsets, lengths, category, bundle_index, defs, shape)
    return TractometerResult(
        n_streamlines=n,
        category=category,
        bundle_index=bundle_index,
        bundles=scores,
        invalid_bundles=invalid,
        roi_pair=roi_pair,
    )


def _roi_pairs(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROI pair of each streamline from its ends' ROI memberships (n, R), each row
    with at least one ROI: the lowest ROI at each end; when that is one ROI at both
    ends, the next ROI at either end (the smaller pair). Returns pairs (n, 2) sorted
    within rows and whether a pair of two different ROIs exists."""
    ls = np.argmax(start, axis=1)
    le = np.argmax(end, axis=1)
    pair = np.stack([np.minimum(ls, le), np.maximum(ls, le)], axis=1)
    ok = ls != le
    same = np.flatnonzero(~ok)
    if same.size:
        rows = np.arange(same.size)
        s_rest = start[same].copy()
        e_rest = end[same].copy()
        s_rest[rows, ls[same]] = False
        e_rest[rows, le[same]] = False
        big = start.shape[1]
        alt_s = np.where(s_rest.any(axis=1), np.argmax(s_rest, axis=1), big)
        alt_e = np.where(e_rest.any(axis=1), np.argmax(e_rest, axis=1), big)
        other = np.minimum(alt_s, alt_e)
        found = other < big
        sub = np.stack([np.minimum(ls[same], other), np.maximum(ls[same], other)], axis=1)
        pair[same] = np.where(found[:, None], sub, -1)
        ok[same] = found
    return pair, ok


def _bundle_scores(points, offsets, lengths, category, bundle_index, defs, shape):
    n_vox = int(np.prod(shape))
    shape_arr = np.asarray(shape, dtype=np.int64)
    counts_vs = np.bincount(bundle_index[category == VS], minlength=len(defs))
    counts_wpc = np.bincount(bundle_index[category == WPC], minlength=len(defs))
    covered = np.zeros(n_vox, dtype=bool)
    scores = []
    for bi, b in enumerate(defs):
        mine = (category == VS) & (bundle_index == bi)
        covered[:] = False
        _mark_streamlines(points, offsets, lengths, np.flatnonzero(mine), shape_arr, covered)
        n_b = int(covered.sum())
        if b.mask is None:
            nan = float("nan")
            scores.append(BundleScore(b.name, int(counts_vs[bi]), int(counts_wpc[bi]), 0, n_b,
                                      0, 0, 0, nan, nan, nan, nan))
            continue
        a = b.mask.ravel()
        n_a = int(a.sum())
        tp = int(np.count_nonzero(covered & a))
        fp = n_b - tp
        scores.append(
            BundleScore(
                name=b.name,
                vs=int(counts_vs[bi]),
                wpc=int(counts_wpc[bi]),
                n_voxels_gt=n_a,
                n_voxels_vs=n_b,
                tp=tp,
                fp=fp,
                fn=n_a - tp,
                ol=tp / n_a,
                or_gt=fp / n_a,
                or_vs=fp / n_b if n_b else 0.0,
                f1=2 * tp / (n_a + n_b),
            )
        )
    return scores


def streamline_field_angle(streamlines, field) -> np.ndarray:
    """Per streamline, the mean axial angle between its tangent and an orientation field.

    Each segment's direction is compared with the field in the voxel of its midpoint
    (nearest voxel); for a peak field the nearest (smallest-angle) non-zero peak is
    used. The mean over segments is weighted by segment length; segments outside the
    grid or over zero field vectors are skipped.

    Parameters
    ----------
    streamlines : sequence of (n_i, 3) arrays or ArraySequence
        Voxel coordinates, voxel centres at integers.
    field : ndarray of shape (X, Y, Z, 3) or (X, Y, Z, K, 3)
        Orientations (e.g. microscopy structure-tensor vectors) or peaks (zero rows
        absent), components along the array axes.

    Returns
    -------
    ndarray of shape (S,), float64
        Degrees in [0, 90]; NaN for streamlines with no scorable segment.
    """
    f = np.asarray(field)
    if f.ndim == 4 and f.shape[-1] == 3:
        f = f[..., None, :]
    if f.ndim != 5 or f.shape[-1] != 3:
        raise MetricInputError(
            f"field has shape {f.shape}; expected (X, Y, Z, 3) or (X, Y, Z, K, 3)"
        )
    if not np.all(np.isfinite(f)):
        raise MetricInputError("field contains NaN or infinite values")
    points, offsets, lengths = _flatten_streamlines(streamlines)
    points = points.astype(np.float64, copy=False)
    out = np.full(len(lengths), np.nan)
    _field_angles(points, offsets, lengths, np.ascontiguousarray(f, dtype=np.float64), out)
    return out


@numba.njit(parallel=True, cache=True)
def _field_angles(points, offsets, lengths, field, out):  # pragma: no cover - compiled
    nx, ny, nz, n_peaks = field.shape[0], field.shape[1], field.shape[2], field.shape[3]
    for s in numba.prange(len(offsets)):
        num = 0.0
        den = 0.0
        for p in range(offsets[s], offsets[s] + lengths[s] - 1):
            dx = points[p + 1, 0] - points[p, 0]
            dy = points[p + 1, 1] - points[p, 1]
            dz = points[p + 1, 2] - points[p, 2]
            seg_len = np.sqrt(dx * dx + dy * dy + dz * dz)
            if seg_len == 0.0:
                continue
            i = np.int64(np.floor(0.5 * (points[p, 0] + points[p + 1, 0]) + 0.5))
            j = np.int64(np.floor(0.5 * (points[p, 1] + points[p + 1, 1]) + 0.5))
            k = np.int64(np.floor(0.5 * (points[p, 2] + points[p + 1, 2]) + 0.5))
            if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
                continue
            best = -1.0
            for q in range(n_peaks):
                vx = field[i, j, k, q, 0]
                vy = field[i, j, k, q, 1]
                vz = field[i, j, k, q, 2]
                norm = np.sqrt(vx * vx + vy * vy + vz * vz)
                if norm > 0.0:
                    cos = abs(vx * dx + vy * dy + vz * dz) / (norm * seg_len)
                    best = max(best, min(cos, 1.0))
            if best < 0.0:
                continue
            num += seg_len * np.degrees(np.arccos(best))
            den += seg_len
        if den > 0.0:
            out[s] = num / den
