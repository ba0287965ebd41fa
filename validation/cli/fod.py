"""Microscopy FOD on a dMRI grid from an orientation OME-Zarr (+ _peaks, _odi beside it)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("orientations", metavar="ORIENTATIONS",
                        help="orientation OME-Zarr written by `xscale orient`")
    parser.add_argument("--grid", required=True, metavar="DWI.nii.gz",
                        help="NIfTI whose grid (shape, affine) the FOD is computed on")
    parser.add_argument("--transform", action="append", default=[], metavar="FILE",
                        help="microscopy world -> dMRI world transform (affine: 4x4 text, "
                        "ITK, LTA, Neuroglancer JSON); repeat to chain, applied in order")
    parser.add_argument("--invert", action="store_true",
                        help="invert the (composed) transform")
    parser.add_argument("-o", "--output", required=True, metavar="FOD.nii.gz",
                        help="SH output; FOD_peaks.nii.gz, FOD_odi.nii.gz, FOD_count.nii.gz "
                        "are written beside it, each with a JSON sidecar")
    parser.add_argument("--scale", type=int, default=0,
                        help="which (sigma, rho) pair of the orientation file (0)")
    parser.add_argument("--sh-order", type=int, default=8, help="even maximum SH order (8)")
    parser.add_argument("--npeaks", type=int, default=3, help="peaks per voxel (3)")
    parser.add_argument("--relative-peak-threshold", type=float, default=0.25,
                        help="peaks below this fraction of the largest are dropped (0.25)")
    parser.add_argument("--min-separation-angle", type=float, default=25.0)
    parser.add_argument("--min-anisotropy", type=float, default=0.0,
                        help="ignore voxels with (l2 - l3) / l1 below this (0)")
    parser.add_argument("--no-mask", action="store_true",
                        help="ignore the orientation file's tissue mask")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="dask.distributed scheduler address (default: local threads)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _sibling(path: Path, suffix: str) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + suffix + ext)
    raise UserError(f"output {str(path)!r} must end in .nii or .nii.gz")


def microscopy_world_affine(
    spacing_um: tuple[float, ...], translation_um: tuple[float, ...]
) -> np.ndarray:
    """Microscopy voxel (z, y, x) index -> microscopy world (x, y, z) mm.

    The world axes are the reversed array axes (NGFF x, y, z; as Neuroglancer shows
    them), scaled by the voxel size, shifted by the NGFF translation.
    """
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    for axis, world in enumerate((2, 1, 0)):
        a[world, axis] = spacing_um[axis] / 1000.0
        a[world, 3] = translation_um[axis] / 1000.0
    return a


def _load_grid(path: str) -> tuple[tuple[int, int, int], np.ndarray]:
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path!r} does not exist")
    try:
        img: Any = nib.load(str(p))
    except Exception as exc:
        raise UserError(f"--grid {path!r}: cannot read NIfTI ({exc})") from exc
    if len(img.shape) < 3:
        raise UserError(f"--grid {path!r}: image of shape {img.shape} is not 3-D or 4-D")
    shape = (int(img.shape[0]), int(img.shape[1]), int(img.shape[2]))
    return shape, np.asarray(img.affine, dtype=np.float64)


def _world_transform(paths: list[str], invert: bool) -> np.ndarray:
    from validation.transforms import load_transform

    matrix = np.eye(4)
    for path in paths:
        t = load_transform(path)
        if not t.is_affine:
            raise UserError(f"--transform {path!r} is not affine; fod supports affine only")
        matrix = t.as_affine() @ matrix
    return np.linalg.inv(matrix) if invert else matrix


def run(args: argparse.Namespace) -> int:
    from validation.fod import microscopy_fod, sh_basis_metadata
    from validation.io.nifti import save_nifti
    from validation.io.omezarr import SPATIAL_UNITS_UM
    from validation.orientation import open_orientations

    out = Path(args.output)
    siblings = {k: _sibling(out, f"_{k}") for k in ("peaks", "odi", "count")}
    if not args.overwrite:
        for p in (out, *siblings.values()):
            if p.exists():
                raise UserError(f"output {str(p)!r} exists already; pass --overwrite")
    field = open_orientations(args.orientations, scale=args.scale)
    grid_shape, grid_affine = _load_grid(args.grid)
    factor = SPATIAL_UNITS_UM[field.units]
    spacing_um = tuple(s * factor for s in field.spacing)
    translation_um = tuple(t * factor for t in field.translation)
    to_world = microscopy_world_affine(spacing_um, translation_um)
    micro_affine = _world_transform(args.transform, args.invert) @ to_world
    weights = field.anisotropy
    if args.min_anisotropy > 0:
        weights = weights * (weights >= args.min_anisotropy)
    mask = None if args.no_mask else field.mask
    start = time.perf_counter()
    fod = microscopy_fod(
        field.vectors,
        weights,
        microscopy_affine=micro_affine,
        grid_shape=grid_shape,
        grid_affine=grid_affine,
        sh_order_max=args.sh_order,
        mask=mask,
        spacing=np.asarray(spacing_um) / 1000.0,
        npeaks=args.npeaks,
        relative_peak_threshold=args.relative_peak_threshold,
        min_separation_angle=args.min_separation_angle,
        scheduler=_scheduler(args.scheduler),
        progress=not getattr(args, "quiet", False),
    )
    seconds = time.perf_counter() - start
    provenance: dict[str, Any] = {
        "Sources": [str(args.orientations)],
        "sigma_um": field.sigma * factor,
        "rho_um": field.rho * factor,
        "transform": list(args.transform),
        "transform_inverted": bool(args.invert),
        "weights": "anisotropy (l2 - l3) / l1" + (
            f" >= {args.min_anisotropy}" if args.min_anisotropy > 0 else ""),
        "mask": None if mask is None else "tissue mask of the orientation file",
    }
    save_nifti(out, fod.sh, grid_affine, {
        **sh_basis_metadata(args.sh_order), **provenance,
        "Description": "microscopy FOD: SH of the anisotropy-weighted structure-tensor "
                       "orientation distribution per voxel; integrates to 1",
    })
    k = fod.peaks.shape[-2]
    save_nifti(siblings["peaks"], fod.peaks.reshape(grid_shape + (3 * k,)), grid_affine, {
        "frame": "ijk", "Reference": "ijk", "unit_vectors": True, "n_peaks": k,
        "Description": "microscopy FOD peaks, K x 3 volumes, zero rows = absent", **provenance,
    })
    save_nifti(siblings["odi"], fod.odi, grid_affine, {
        "Description": "orientation dispersion index (NODDI/Watson, metrics.odi_from_sh); "
                       "NaN where no microscopy voxel contributed", **provenance,
    })
    save_nifti(siblings["count"], fod.count.astype(np.int32), grid_affine, {
        "Description": "microscopy voxels per dMRI voxel (masked, weight > 0)", **provenance,
    })
    n = int(np.prod(field.vectors.shape[:3]))
    log.info("xscale fod: %s: %d microscopy voxels in %.1f s (%.3g voxels/s); %d dMRI voxels "
             "with data", out, n, seconds, n / max(seconds, 1e-9), int((fod.count > 0).sum()))
    return 0


def _scheduler(address: str | None) -> Any:
    if address is None:
        return "threads"
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover
        raise UserError("--scheduler needs the `distributed` package") from exc
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot connect to the dask scheduler at {address!r}") from exc
