"""Structure-tensor orientations of a microscopy volume into an OME-Zarr (chunked, resumable)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from validation.errors import UserError

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("volume", metavar="VOLUME",
                        help="OME-Zarr image, TIFF stack (file or folder of slices) or NIfTI")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ome.zarr",
                        help="output OME-Zarr (written as OUT.partial, renamed when complete)")
    parser.add_argument("--sigma-um", type=_floats, required=True, metavar="UM[,UM...]",
                        help="noise scale(s) in micrometres (several: one per pair)")
    parser.add_argument("--rho-um", type=_floats, required=True, metavar="UM[,UM...]",
                        help="integration scale(s) in micrometres, paired with --sigma-um")
    parser.add_argument("--level", type=int, default=0, help="OME-Zarr pyramid level (0)")
    parser.add_argument("--voxel-size-um", type=_floats, metavar="Z,Y,X",
                        help="voxel size when the file has none (TIFF), or to override it")
    parser.add_argument("--chunks", type=_floats, default=[128.0], metavar="N[,N,N]",
                        help="output chunk shape in voxels (default 128)")
    parser.add_argument("--truncate", type=float, default=4.0,
                        help="Gaussian truncation in standard deviations (4)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="dask.distributed scheduler address (default: local threads)")
    parser.add_argument("--mask-threshold", type=float, metavar="T",
                        help="tissue = intensity > T (stored as the `mask` image)")
    parser.add_argument("--mask-labels", metavar="LABELS",
                        help="label volume of the same shape; tissue = its non-zero voxels")
    parser.add_argument("--keep-labels", metavar="L[,L...]",
                        help="label values that are tissue (with --mask-labels)")
    parser.add_argument("--exclude", metavar="VOLUME",
                        help="volume whose non-zero voxels (vessels) are excluded from the mask")
    parser.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4",
                        help="NGFF version of the output: 0.4 (zarr v2) or 0.5 (zarr v3)")
    parser.add_argument("--max-chunks", type=int, metavar="N",
                        help="stop after N chunks (rerun to resume)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output written with other parameters")


def run(args: argparse.Namespace) -> int:
    from validation.io.omezarr import SPATIAL_UNITS_UM, OmeZarrVolume
    from validation.io.volumes import open_volume
    from validation.orientation import MaskSpec, orient_to_ome_zarr

    sigmas, rhos = args.sigma_um, args.rho_um
    if len(sigmas) != len(rhos):
        if len(sigmas) == 1:
            sigmas = sigmas * len(rhos)
        elif len(rhos) == 1:
            rhos = rhos * len(sigmas)
        else:
            raise UserError(
                f"--sigma-um has {len(sigmas)} values and --rho-um {len(rhos)}; give equal "
                "counts or one of them once"
            )
    chunks = [int(c) for c in args.chunks]
    if len(chunks) not in (1, 3) or min(chunks) <= 0:
        raise UserError(f"--chunks {args.chunks!r} must be one or three positive integers")
    vol = open_volume(args.volume, level=args.level, voxel_size_um=args.voxel_size_um)
    # the CLI speaks micrometres: express the volume in micrometres
    factor = SPATIAL_UNITS_UM[vol.units]
    vol_um = OmeZarrVolume(
        array=vol.array,
        spacing=tuple(s * factor for s in vol.spacing),  # type: ignore[arg-type]
        units="micrometer",
        attrs=vol.attrs,
        translation=tuple(t * factor for t in vol.translation),  # type: ignore[arg-type]
        path=vol.path,
        level=vol.level,
    )
    keep = None
    if args.keep_labels:
        try:
            keep = tuple(int(v) for v in args.keep_labels.split(","))
        except ValueError as exc:
            raise UserError(f"--keep-labels {args.keep_labels!r} must be integers") from exc
    mask = MaskSpec(threshold=args.mask_threshold, labels=args.mask_labels, keep_labels=keep,
                    exclude=args.exclude)
    start = time.perf_counter()
    quiet = getattr(args, "quiet", False)
    tty = sys.stderr.isatty()
    last_logged = [0.0]

    def progress(done: int, total: int) -> None:
        if quiet:
            return
        if tty:
            print(f"\rxscale orient: {done}/{total} chunks", end="", file=sys.stderr,
                  flush=True)
        elif done == total or done / total >= last_logged[0] + 0.1:
            last_logged[0] = done / total
            log.info("xscale orient: %d/%d chunks", done, total)

    result = orient_to_ome_zarr(
        vol_um,
        args.output,
        scales=list(zip(sigmas, rhos, strict=True)),
        chunks=chunks[0] if len(chunks) == 1 else tuple(chunks),
        truncate=args.truncate,
        mask=mask,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        max_chunks=args.max_chunks,
        version=args.ngff,
        progress=progress,
    )
    if not quiet and tty:
        print(file=sys.stderr)
    seconds = time.perf_counter() - start
    n_vox = 1
    for s in vol.array.shape:
        n_vox *= int(s)
    state = "complete" if result.complete else "partial (rerun to resume)"
    log.info(
        "xscale orient: %s: computed %d, reused %d of %d chunks in %.1f s (%.3g voxels/s); %s",
        result.path, result.computed, result.skipped, result.total, seconds,
        n_vox * result.computed / max(result.total, 1) / max(seconds, 1e-9), state,
    )
    return 0
