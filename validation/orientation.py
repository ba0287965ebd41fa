"""Structure-tensor fibre orientations in physical units, in memory or chunked.

:func:`structure_tensor_orientation` is the public entry point (shared/design.md, "The
structure tensor output"). Gradients are Gaussian derivatives at scale ``sigma`` and the
tensor is integrated at scale ``rho``, both in the unit of ``spacing`` (per axis), so
anisotropic voxels give the same orientations as isotropic ones. Edges are handled as
``mode="nearest"``. The numba kernels live in :mod:`validation._st_kernels`.

A dask input is processed chunk by chunk (an overlap of ``ceil``-rounded Gaussian radii
per axis; no seams: chunked equals in-memory to the last bit), and the result holds
dask arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from validation import _st_kernels as kern
from validation.errors import UserError

__all__ = [
    "StructureTensorResult",
    "MaskSpec",
    "OrientRunResult",
    "OrientationField",
    "clear_workspace",
    "halo_voxels",
    "open_orientations",
    "orient_to_ome_zarr",
    "structure_tensor_orientation",
    "structure_tensor_orientations",
]

#: number of float32 values per voxel in the packed output: vectors (3), eigenvalues (3),
#: anisotropy (1)
PACKED_COMPONENTS = 7


@dataclass(frozen=True)
class StructureTensorResult:
    """Orientations of a structure-tensor analysis.

    Attributes
    ----------
    vectors : ndarray of shape (Z, Y, X, 3), float32
        Fibre axis (eigenvector of the smallest eigenvalue), a unit vector in physical
        space with components along the array axes (0, 1, 2); the zero vector where the
        tensor is zero or isotropic. Axial: the sign is fixed so that the largest
        component is positive.
    eigenvalues : ndarray of shape (Z, Y, X, 3), float32
        ``l1 >= l2 >= l3`` in (intensity / unit of spacing) squared.
    anisotropy : ndarray of shape (Z, Y, X), float32
        ``(l2 - l3) / l1`` in [0, 1] (0 where ``l1 = 0``).
    sigma, rho : float
        Scales used, in the unit of ``spacing``.
    spacing : tuple of 3 float
        Voxel size per array axis.
    truncate : float
        Gaussian kernels truncated at this many standard deviations.

    The arrays are numpy arrays for a numpy input and dask arrays for a dask input.
    """

    vectors: Any
    eigenvalues: Any
    anisotropy: Any
    sigma: float
    rho: float
    spacing: tuple[float, float, float]
    truncate: float


def _check_params(
    shape: tuple[int, ...],
    sigma: float,
    rho: float,
    spacing: Sequence[float],
    truncate: float,
) -> tuple[float, float, tuple[float, float, float], float]:
    if len(shape) != 3:
        raise UserError(f"volume of shape {tuple(shape)} is not 3-D")
    if any(s == 0 for s in shape):
        raise UserError(f"volume of shape {tuple(shape)} is empty")
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise UserError(f"spacing {spacing!r} must be 3 numbers") from exc
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise UserError(f"spacing {spacing!r} must be 3 finite positive numbers")
    for name, value in (("sigma", sigma), ("rho", rho), ("truncate", truncate)):
        if not (np.isfinite(value) and value > 0):
            raise UserError(f"{name} {value!r} must be finite and positive")
    small = [i for i, s in enumerate(sp) if float(sigma) / s < 0.5]
    if small:
        warnings.warn(
            f"sigma {sigma} is below half a voxel along axes {small} (spacing {sp}); "
            "gradients there are poorly sampled",
            UserWarning,
            stacklevel=3,
        )
    return float(sigma), float(rho), sp, float(truncate)  # type: ignore[return-value]


def halo_voxels(
    sigma: float, rho: float, spacing: Sequence[float], truncate: float = 4.0
) -> tuple[int, int, int]:
    """Voxels of context needed per axis: gradient radius + integration radius.

    With this halo a chunk's interior equals the in-memory result exactly.
    """
    return tuple(  # type: ignore[return-value]
        int(truncate * sigma / s + 0.5) + int(truncate * rho / s + 0.5) for s in spacing
    )


_WORKSPACE: dict[str, np.ndarray] = {}


def _workspace(n_voxels: int) -> np.ndarray:
    """Nine float32 volumes of scratch space, kept between calls (page faults on fresh
    memory cost as much as a filter pass)."""
    need = 9 * n_voxels
    buf = _WORKSPACE.get("buf")
    if buf is None or buf.size < need:
        _WORKSPACE.pop("buf", None)
        buf = np.empty(need, dtype=np.float32)
        _WORKSPACE["buf"] = buf
    return buf[:need]


def clear_workspace() -> None:
    """Release the scratch memory kept between calls of the in-memory kernels."""
    _WORKSPACE.clear()


def _orientation_arrays(
    volume: np.ndarray,
    sigma: float,
    rho: float,
    spacing: tuple[float, float, float],
    truncate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-memory kernel: (Z, Y, X) -> vectors, eigenvalues (Z, Y, X, 3), anisotropy.

    The three are views of one packed (Z, Y, X, 7) float32 array.
    """
    packed = _orientation_packed(volume, sigma, rho, spacing, truncate)
    return packed[..., 0:3], packed[..., 3:6], packed[..., 6]


def _orientation_packed(
    volume: np.ndarray,
    sigma: float,
    rho: float,
    spacing: tuple[float, float, float],
    truncate: float,
) -> np.ndarray:
    """In-memory kernel: (Z, Y, X) -> packed (Z, Y, X, 7) float32: vector (3),
    eigenvalues (3), anisotropy (1)."""
    vol = np.ascontiguousarray(volume, dtype=np.float32)
    nz, ny, nx = vol.shape
    n = vol.size
    kernels = [kern.gaussian_half_kernels(sigma / s, truncate) for s in spacing]
    rkernels = [kern.gaussian_half_kernels(rho / s, truncate)[0] for s in spacing]
    inv_spacing = np.array([1.0 / s for s in spacing], dtype=np.float32)
    packed = np.empty((nz, ny, nx, PACKED_COMPONENTS), dtype=np.float32)
    with kern.KERNEL_LOCK:
        work = _workspace(n)
        p = work[: 6 * n].reshape(6, nz, ny * nx)
        a, b, c = (work[(6 + i) * n : (7 + i) * n].reshape(nz, ny, nx) for i in range(3))
        # x-pass outputs live in the (not yet used) tensor slots
        sx = work[:n].reshape(nz, ny, nx)
        dx = work[n : 2 * n].reshape(nz, ny, nx)
        kern.grad_pass_x(vol, kernels[2][0], kernels[2][1], sx, dx)
        kern.grad_pass_y(sx, dx, kernels[1][0], kernels[1][1], a, b, c)
        kern.grad_pass_z_products_xy(
            a.reshape(nz, ny * nx),
            b.reshape(nz, ny * nx),
            c.reshape(nz, ny * nx),
            ny,
            nx,
            kernels[0][0],
            kernels[0][1],
            rkernels[2],
            rkernels[1],
            inv_spacing,
            p,
        )
        kern.smooth_pass_z_eigen(p, rkernels[0], packed.reshape(nz, ny * nx * PACKED_COMPONENTS))
    return packed


def _as_float32(volume: Any) -> Any:
    dtype = np.dtype(volume.dtype)
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise UserError(f"volume of dtype {dtype} is not numeric (integer or float)")
    return volume.astype(np.float32) if dtype != np.float32 else volume


def _unpack(packed: Any, sigma, rho, spacing, truncate) -> StructureTensorResult:
    return StructureTensorResult(
        vectors=packed[..., 0:3],
        eigenvalues=packed[..., 3:6],
        anisotropy=packed[..., 6],
        sigma=sigma,
        rho=rho,
        spacing=spacing,
        truncate=truncate,
    )


def _trim_block(block: np.ndarray, depth, loc, nchunks) -> np.ndarray:
    sl = tuple(
        slice(
            depth[a] if loc[a] > 0 else 0,
            block.shape[a] - (depth[a] if loc[a] < nchunks[a] - 1 else 0),
        )
        for a in range(3)
    )
    return block[sl]


def _overlap_plan(darr: Any, halo: Sequence[int]) -> tuple[Any, dict[int, int]]:
    """Rechunk so every chunk is at least the halo (an axis shorter than its halo becomes
    one chunk with no overlap: the whole axis is then present) and return the depths."""
    import dask.array as da

    depth: dict[int, int] = {}
    chunks = []
    for a, c in enumerate(darr.chunks):
        size = int(sum(c))
        if halo[a] >= size:
            depth[a] = 0
            chunks.append((size,))
        else:
            depth[a] = int(halo[a])
            chunks.append(da.overlap.ensure_minimum_chunksize(max(depth[a], 1), c))
    return darr.rechunk(tuple(chunks)), depth


def _dask_packed(darr: Any, sigma, rho, spacing, truncate) -> Any:
    import dask.array as da

    darr, depth = _overlap_plan(darr, halo_voxels(sigma, rho, spacing, truncate))
    padded = da.overlap.overlap(darr, depth=depth, boundary="none")

    def block_fn(block: np.ndarray, block_info=None) -> np.ndarray:
        info = block_info[0]
        full = _orientation_packed(block, sigma, rho, spacing, truncate)
        # a copy, so the halo of the full block is freed now rather than with the result
        return np.ascontiguousarray(
            _trim_block(full, depth, info["chunk-location"], info["num-chunks"])
        )

    return padded.map_blocks(
        block_fn,
        new_axis=3,
        chunks=darr.chunks + ((PACKED_COMPONENTS,),),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
    )


def structure_tensor_orientation(
    volume: Any,
    *,
    sigma: float,
    rho: float,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    truncate: float = 4.0,
) -> StructureTensorResult:
    """Fibre orientations from the 3-D structure tensor, in physical units.

    Parameters
    ----------
    volume : ndarray or dask.array.Array of shape (Z, Y, X)
        Intensities (any integer or float dtype; computed in float32, never rescaled).
        A dask array is processed chunk by chunk and gives a lazy result.
    sigma : float
        Noise scale: standard deviation of the Gaussian derivative filters, in the unit
        of ``spacing`` (> 0). A warning is issued when it is below half a voxel.
    rho : float
        Integration scale: standard deviation of the Gaussian that averages the gradient
        outer products, in the unit of ``spacing`` (> 0).
    spacing : sequence of 3 float
        Voxel size along the array axes (default 1: ``sigma`` and ``rho`` in voxels).
    truncate : float
        Kernels are cut at ``truncate`` standard deviations (radius
        ``int(truncate * sigma / spacing + 0.5)`` voxels per axis, as scipy.ndimage).

    Returns
    -------
    StructureTensorResult
        ``.vectors`` (Z, Y, X, 3) unit fibre axes (components along the array axes),
        ``.eigenvalues`` (Z, Y, X, 3) descending, ``.anisotropy`` (Z, Y, X)
        ``(l2 - l3) / l1``; float32, finite everywhere.

    Raises
    ------
    UserError
        Non-3-D or non-numeric input, non-finite values, non-positive ``sigma``, ``rho``,
        ``truncate`` or ``spacing``.

    Notes
    -----
    Edges follow ``mode="nearest"``, like the ``structure-tensor`` package. Unlike that
    package, components are in array-axis order (not reversed), and the eigenvector is
    the largest cross product of two rows of ``T - l3 I``, which stays defined where the
    off-diagonal terms vanish (the centre of a noise-free tube along an array axis).

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:24, :24, :24]
    >>> tube = np.exp(-((y - 11.5) ** 2 + (x - 11.5) ** 2) / 8.0)   # along axis 0
    >>> st = structure_tensor_orientation(tube, sigma=1.0, rho=2.0)
    >>> np.round(st.vectors[12, 11, 11], 3).tolist()
    [1.0, 0.0, 0.0]
    """
    sigma, rho, sp, truncate = _check_params(tuple(volume.shape), sigma, rho, spacing, truncate)
    volume = _as_float32(volume)
    if _is_dask(volume):
        packed = _dask_packed(volume, sigma, rho, sp, truncate)
        return _unpack(packed, sigma, rho, sp, truncate)
    vol = np.asarray(volume)
    if not np.isfinite(vol).all():
        raise UserError("volume contains NaN or infinite values")
    vectors, eigenvalues, anisotropy = _orientation_arrays(vol, sigma, rho, sp, truncate)
    return StructureTensorResult(vectors, eigenvalues, anisotropy, sigma, rho, sp, truncate)


def structure_tensor_orientations(
    volume: Any,
    *,
    scales: Sequence[tuple[float, float]],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    truncate: float = 4.0,
) -> list[StructureTensorResult]:
    """Orientations for several ``(sigma, rho)`` pairs (sensitivity analysis).

    Each pair gives the same result as :func:`structure_tensor_orientation`; for a dask
    input the volume is read once per chunk (with the largest halo) for all pairs.
    """
    if not scales:
        raise UserError("scales is empty; give at least one (sigma, rho) pair")
    pairs = [(float(s), float(r)) for s, r in scales]
    for s, r in pairs:
        _check_params(tuple(volume.shape), s, r, spacing, truncate)
    if not _is_dask(volume):
        return [
            structure_tensor_orientation(volume, sigma=s, rho=r, spacing=spacing, truncate=truncate)
            for s, r in pairs
        ]
    import dask.array as da

    sp = tuple(float(v) for v in spacing)
    volume = _as_float32(volume)
    halos = [halo_voxels(s, r, sp, truncate) for s, r in pairs]
    darr, depth = _overlap_plan(volume, [max(h[a] for h in halos) for a in range(3)])
    padded = da.overlap.overlap(darr, depth=depth, boundary="none")
    n = len(pairs)

    def block_fn(block: np.ndarray, block_info=None) -> np.ndarray:
        info = block_info[0]
        outs = []
        for s, r in pairs:
            full = _orientation_packed(block, s, r, sp, truncate)  # type: ignore[arg-type]
            outs.append(_trim_block(full, depth, info["chunk-location"], info["num-chunks"]))
        return np.concatenate(outs, axis=-1)

    packed = padded.map_blocks(
        block_fn,
        new_axis=3,
        chunks=darr.chunks + ((PACKED_COMPONENTS * n,),),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
    )
    return [
        _unpack(
            packed[..., PACKED_COMPONENTS * i : PACKED_COMPONENTS * (i + 1)],
            s,
            r,
            sp,
            truncate,
        )
        for i, (s, r) in enumerate(pairs)
    ]


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.")


# ---------------------------------------------------------------------------------------
# Chunked, resumable orientation fields on disk (``xscale orient``)
# ---------------------------------------------------------------------------------------

#: group attribute holding the parameters of an orientation field
ATTRS_KEY = "xscale_orientation"
_DONE_DIR = ".xscale_done"


@dataclass(frozen=True)
class MaskSpec:
    """Which voxels count as tissue (stored as the ``mask`` image of the output).

    Attributes
    ----------
    threshold : float, optional
        Tissue where the intensity is > ``threshold``.
    labels : str, optional
        Path of a label volume of the same shape (OME-Zarr, TIFF or NIfTI).
    keep_labels : tuple of int, optional
        Label values that are tissue (default: every non-zero label).
    exclude : str, optional
        Path of a volume whose non-zero voxels are excluded (the vessel masking hook).
    """

    threshold: float | None = None
    labels: str | None = None
    keep_labels: tuple[int, ...] | None = None
    exclude: str | None = None

    @property
    def active(self) -> bool:
        return self.threshold is not None or self.labels is not None or self.exclude is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "labels": self.labels,
            "keep_labels": None if self.keep_labels is None else list(self.keep_labels),
            "exclude": self.exclude,
        }


@dataclass(frozen=True)
class OrientRunResult:
    """Outcome of :func:`orient_to_ome_zarr`.

    ``computed`` chunks were computed by this call, ``skipped`` were already on disk,
    ``total`` is the number of chunks; ``complete`` tells whether the output is final
    (renamed into place) or still partial (``max_chunks`` reached).
    """

    path: Any
    computed: int
    skipped: int
    total: int
    complete: bool


def _partial_path(path: Any) -> Any:
    return path.with_name(path.name + ".partial")


def _chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[int, int, int]]:
    import itertools

    counts = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    return list(itertools.product(*(range(n) for n in counts)))  # type: ignore[arg-type]


def _load_mask_volume(path: str, shape: tuple[int, ...], what: str) -> Any:
    from validation.io.volumes import open_volume

    vol = open_volume(path, voxel_size_um=(1.0, 1.0, 1.0) if _needs_spacing(path) else None)
    if tuple(vol.array.shape) != tuple(shape):
        raise UserError(
            f"{what} {path!r} has shape {tuple(vol.array.shape)}, the volume {tuple(shape)}"
        )
    return vol.array


def _needs_spacing(path: str) -> bool:
    return str(path).lower().endswith((".tif", ".tiff"))


def _process_chunk(
    slab: np.ndarray,
    labels: np.ndarray | None,
    exclude: np.ndarray | None,
    *,
    out_path: str,
    index: tuple[int, int, int],
    inner: tuple[tuple[int, int], ...],
    crop: tuple[tuple[int, int], ...],
    scales: list[tuple[float, float, str]],
    spacing: tuple[float, float, float],
    truncate: float,
    mask: dict[str, Any] | None,
) -> tuple[int, int, int]:
    """Compute one output chunk for every scale pair, write it, then mark it done."""
    import os
    from pathlib import Path

    import zarr

    slab = np.asarray(slab)
    if not np.isfinite(slab).all():
        raise UserError(f"volume chunk {index} contains NaN or infinite values")
    root: Any = zarr.open_group(out_path, mode="r+")
    sel = tuple(slice(a, b) for a, b in inner)
    crop_sel = tuple(slice(a, b) for a, b in crop)
    for sigma, rho, prefix in scales:
        vec, val, aniso = _orientation_arrays(slab, sigma, rho, spacing, truncate)
        base = f"{prefix}/" if prefix else ""
        root[f"{base}vectors/0"][(slice(None),) + sel] = np.moveaxis(vec[crop_sel], -1, 0)
        root[f"{base}eigenvalues/0"][(slice(None),) + sel] = np.moveaxis(val[crop_sel], -1, 0)
        root[f"{base}anisotropy/0"][sel] = aniso[crop_sel]
    if mask is not None:
        core = slab[crop_sel]
        tissue = np.ones(core.shape, dtype=bool)
        if mask.get("threshold") is not None:
            tissue &= core > float(mask["threshold"])
        if labels is not None:
            lab = np.asarray(labels)
            keep = mask.get("keep_labels")
            tissue &= np.isin(lab, keep) if keep else lab != 0
        if exclude is not None:
            tissue &= np.asarray(exclude) == 0
        root["mask/0"][sel] = tissue.astype(np.uint8)
    marker = Path(out_path) / _DONE_DIR / ".".join(str(i) for i in index)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text("")
    os.replace(tmp, marker)
    return index


def orient_to_ome_zarr(
    volume: Any,
    output: Any,
    *,
    scales: Any,
    chunks: Any = 128,
    truncate: float = 4.0,
    mask: MaskSpec | None = None,
    scheduler: Any = None,
    overwrite: bool = False,
    max_chunks: int | None = None,
    version: str = "0.4",
    progress: Any = None,
) -> OrientRunResult:
    """Structure-tensor orientations of a volume into an OME-Zarr, chunk by chunk.

    Parameters
    ----------
    volume : OmeZarrVolume
        The input (from :func:`validation.io.volumes.open_volume`); ``sigma``/``rho`` are
        in its units (``volume.units``, e.g. micrometres).
    output : path-like
        Output ``*.ome.zarr``. Written as ``<output>.partial`` and renamed when complete.
    scales : sequence of (sigma, rho)
        One or more scale pairs, in ``volume.units``. One pair: images ``vectors``,
        ``eigenvalues``, ``anisotropy`` at the root; several: under ``scale<i>/``.
    chunks : int or 3 ints
        Output chunk shape (z, y, x) in voxels; also the unit of work and of resuming.
    truncate : float
        Gaussian truncation in standard deviations.
    mask : MaskSpec, optional
        Tissue mask, written as the ``mask`` image (uint8 0/1).
    scheduler : None, str, or distributed.Client
        None: dask's local threads; an address (``tcp://host:8786``): that cluster; a
        Client: use it.
    overwrite : bool
        Replace a complete output with other parameters.
    max_chunks : int, optional
        Stop after computing this many chunks (the partial output resumes later).
    version : {"0.4", "0.5"}
        NGFF version of a new output (zarr v2 / v3).
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch of chunks.

    Returns
    -------
    OrientRunResult

    Raises
    ------
    UserError
        Bad parameters, or an existing (partial) output written with other parameters.

    Notes
    -----
    Resuming: each finished chunk leaves a marker in ``.xscale_done/``; a rerun checks
    that the stored parameters equal the requested ones and computes only the chunks
    without a marker. Chunk values do not depend on the chunking or on the order of work
    (each chunk reads its own halo of ``halo_voxels`` voxels).
    """
    import json
    import shutil
    from pathlib import Path

    import dask
    import zarr

    from validation.io.omezarr import create_ome_zarr_image, normalise_unit

    output = Path(output)
    arr = volume.array
    shape = tuple(int(s) for s in arr.shape)
    pairs = [(float(s), float(r)) for s, r in scales]
    if not pairs:
        raise UserError("scales is empty; give at least one (sigma, rho) pair")
    for s, r in pairs:
        _check_params(shape, s, r, volume.spacing, truncate)
    _as_float32(np.empty(0, dtype=arr.dtype))
    spacing = tuple(float(s) for s in volume.spacing)
    units = normalise_unit(volume.units)
    chunk3 = (int(chunks),) * 3 if isinstance(chunks, int | np.integer) else tuple(
        int(c) for c in chunks
    )
    if len(chunk3) != 3 or min(chunk3) <= 0:
        raise UserError(f"chunks {chunks!r} must be one or three positive integers")
    chunk3 = tuple(min(c, s) for c, s in zip(chunk3, shape, strict=True))
    halos = [halo_voxels(s, r, spacing, truncate) for s, r in pairs]
    halo = tuple(max(h[a] for h in halos) for a in range(3))
    prefixes = [""] if len(pairs) == 1 else [f"scale{i}" for i in range(len(pairs))]
    mask = mask if (mask is not None and mask.active) else None
    params: dict[str, Any] = {
        "kind": "structure_tensor_orientation",
        "format_version": 1,
        "scales": [
            {"sigma": s, "rho": r, "path": p} for (s, r), p in zip(pairs, prefixes, strict=True)
        ],
        "truncate": float(truncate),
        "spacing": list(spacing),
        "units": units,
        "chunks": list(chunk3),
        "source": {
            "path": str(getattr(volume, "path", "")),
            "level": int(getattr(volume, "level", 0)),
            "shape": list(shape),
            "dtype": str(np.dtype(arr.dtype)),
        },
        "mask": None if mask is None else mask.to_dict(),
        "translation": [float(t) for t in getattr(volume, "translation", (0.0, 0.0, 0.0))],
    }
    partial = _partial_path(output)
    if output.exists():
        existing = _read_params(output)
        if existing == params:
            total = len(_chunk_grid(shape, chunk3))
            return OrientRunResult(output, 0, total, total, True)
        if not overwrite:
            raise UserError(
                f"output {str(output)!r} exists with other parameters; pass --overwrite"
            )
    if partial.exists():
        existing = _read_params(partial)
        if existing != params:
            if not overwrite:
                raise UserError(
                    f"partial output {str(partial)!r} was written with other parameters "
                    f"({_param_diff(existing, params)}); remove it or pass --overwrite"
                )
            shutil.rmtree(partial)
    if not partial.exists():
        root = zarr.open_group(str(partial), mode="w", zarr_format=2 if version == "0.4" else 3)
        for prefix, (s, r) in zip(prefixes, pairs, strict=True):
            where = root.require_group(prefix) if prefix else root
            for name, nch in (("vectors", 3), ("eigenvalues", 3), ("anisotropy", None)):
                create_ome_zarr_image(
                    where.require_group(name),
                    shape=shape,  # type: ignore[arg-type]
                    dtype=np.float32,
                    spacing=spacing,
                    units=units,
                    chunks=chunk3,
                    n_channels=nch,
                    name=name,
                    translation=params["translation"],
                    attrs={ATTRS_KEY: {"sigma": s, "rho": r, "quantity": name}},
                )
        if mask is not None:
            create_ome_zarr_image(
                root.require_group("mask"),
                shape=shape,  # type: ignore[arg-type]
                dtype=np.uint8,
                spacing=spacing,
                units=units,
                chunks=chunk3,
                name="mask",
                translation=params["translation"],
            )
        (partial / _DONE_DIR).mkdir()
        # parameters last: a partial output without them is not resumable (recreated)
        root.attrs[ATTRS_KEY] = json.loads(json.dumps(params))
    done = {p.name for p in (partial / _DONE_DIR).iterdir() if not p.name.endswith(".tmp")}
    grid = _chunk_grid(shape, chunk3)
    todo = [idx for idx in grid if ".".join(map(str, idx)) not in done]
    if max_chunks is not None:
        todo = todo[: max(0, int(max_chunks))]

    labels_arr = None
    exclude_arr = None
    if mask is not None and mask.labels is not None:
        labels_arr = _load_mask_volume(mask.labels, shape, "label volume")
    if mask is not None and mask.exclude is not None:
        exclude_arr = _load_mask_volume(mask.exclude, shape, "exclusion volume")
    scale_list = [(s, r, p) for (s, r), p in zip(pairs, prefixes, strict=True)]
    tasks = []
    for idx in todo:
        start = [i * c for i, c in zip(idx, chunk3, strict=True)]
        stop = [min(st_ + c, n) for st_, c, n in zip(start, chunk3, shape, strict=True)]
        lo = [max(0, a - h) for a, h in zip(start, halo, strict=True)]
        hi = [min(n, b + h) for b, h, n in zip(stop, halo, shape, strict=True)]
        slab = arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        core = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        tasks.append(
            dask.delayed(_process_chunk)(
                slab,
                None if labels_arr is None else labels_arr[core],
                None if exclude_arr is None else exclude_arr[core],
                out_path=str(partial),
                index=tuple(idx),
                inner=tuple(zip(start, stop, strict=True)),
                crop=tuple((a - b, c - b) for a, c, b in zip(start, stop, lo, strict=True)),
                scales=scale_list,
                spacing=spacing,
                truncate=float(truncate),
                mask=None if mask is None else mask.to_dict(),
            )
        )
    client, own_client = _get_client(scheduler)
    try:
        batch = max(1, 4 * (_n_workers(client) if client is not None else 2))
        for first in range(0, len(tasks), batch):
            part = tasks[first : first + batch]
            if client is not None:
                client.compute(part, sync=True)
            else:
                dask.compute(*part, scheduler="threads")
            if progress is not None:
                progress(len(done) + first + len(part), len(grid))
    finally:
        if own_client:
            client.close()
    remaining = len(grid) - len(done) - len(todo)
    if remaining == 0:
        shutil.rmtree(partial / _DONE_DIR, ignore_errors=True)
        root = zarr.open_group(str(partial), mode="r+")
        meta: dict[str, Any] = dict(root.attrs[ATTRS_KEY])  # type: ignore[arg-type]
        meta["complete"] = True
        root.attrs[ATTRS_KEY] = meta
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
        return OrientRunResult(output, len(todo), len(done), len(grid), True)
    return OrientRunResult(partial, len(todo), len(done), len(grid), False)


def _read_params(path: Any) -> dict[str, Any] | None:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception:  # not a zarr group: treat as foreign
        return None
    meta = root.attrs.get(ATTRS_KEY)
    if not isinstance(meta, dict):
        return None
    meta = dict(meta)
    meta.pop("complete", None)
    return meta


def _param_diff(a: dict[str, Any] | None, b: dict[str, Any]) -> str:
    if a is None:
        return "no parameters stored"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys[:2])


#: seconds to wait for a dask.distributed scheduler given by address
CONNECT_TIMEOUT_S = 10.0


def _get_client(scheduler: Any) -> tuple[Any, bool]:
    if scheduler is None or scheduler in ("threads", "local"):
        return None, False
    if isinstance(scheduler, str):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - distributed is a test dependency
            raise UserError("--scheduler needs the `distributed` package") from exc
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), True
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot connect to the dask scheduler at {scheduler!r}") from exc
    return scheduler, False


def _n_workers(client: Any) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # pragma: no cover
        return 2


@dataclass(frozen=True)
class OrientationField:
    """An orientation field read lazily from an ``xscale orient`` OME-Zarr.

    ``vectors`` and ``eigenvalues`` dask (Z, Y, X, 3), ``anisotropy`` dask (Z, Y, X),
    ``mask`` dask (Z, Y, X) bool or None, ``spacing`` per axis in ``units``,
    ``translation`` of voxel (0, 0, 0) in ``units``, ``params`` the stored parameters.
    """

    vectors: Any
    eigenvalues: Any
    anisotropy: Any
    mask: Any
    spacing: tuple[float, float, float]
    units: str
    translation: tuple[float, float, float]
    sigma: float
    rho: float
    params: dict[str, Any]


def open_orientations(path: Any, *, scale: int = 0) -> OrientationField:
    """Open the orientation field of one scale pair written by :func:`orient_to_ome_zarr`.

    Raises :class:`UserError` when ``path`` is not a complete orientation OME-Zarr.
    """
    from pathlib import Path

    import zarr

    from validation.io.omezarr import open_ome_zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise UserError(f"{str(path)!r} is not a zarr group") from exc
    meta = root.attrs.get(ATTRS_KEY)
    if not isinstance(meta, dict):
        raise UserError(f"{str(path)!r} is not an orientation field written by xscale orient")
    if not meta.get("complete"):
        raise UserError(f"{str(path)!r} is incomplete; rerun xscale orient to finish it")
    scales = meta["scales"]
    if not 0 <= scale < len(scales):
        raise UserError(f"{str(path)!r}: scale {scale} does not exist; it has {len(scales)}")
    prefix = scales[scale]["path"]
    base = f"{prefix}/" if prefix else ""
    vec = open_ome_zarr(path, component=f"{base}vectors")
    val = open_ome_zarr(path, component=f"{base}eigenvalues")
    an = open_ome_zarr(path, component=f"{base}anisotropy")
    mask = None
    if "mask" in root:
        mask = open_ome_zarr(path, component="mask").array.astype(bool)
    return OrientationField(
        vectors=vec.array,
        eigenvalues=val.array,
        anisotropy=an.array,
        mask=mask,
        spacing=vec.spacing,
        units=vec.units,
        translation=vec.translation,
        sigma=float(scales[scale]["sigma"]),
        rho=float(scales[scale]["rho"]),
        params=dict(meta),
    )
