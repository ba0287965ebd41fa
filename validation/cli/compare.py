"""Per-voxel orientation agreement of two FOD / peak maps (ACC, JSD, peaks, dispersion)."""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)

_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="reference map: FOD SH or peaks (NIfTI)")
    parser.add_argument("b", metavar="B", help="map to score against A, on the same grid")
    parser.add_argument("--mask", metavar="MASK", help="NIfTI mask of the voxels to compare "
                        "(default: voxels where A or B is non-zero)")
    parser.add_argument("-o", "--output", metavar="TABLE",
                        help="per-voxel table (.csv, .csv.gz, .tsv); a summary is printed "
                        "either way")
    parser.add_argument("--threshold-deg", type=float, default=25.0,
                        help="peak matching threshold in degrees (25)")
    parser.add_argument("--kind-a", choices=("sh", "peaks"),
                        help="what A holds, when its sidecar does not say")
    parser.add_argument("--kind-b", choices=("sh", "peaks"),
                        help="what B holds, when its sidecar does not say")
    parser.add_argument("--npeaks", type=int, default=5,
                        help="peaks extracted from an SH map compared with a peak map (5)")
    parser.add_argument("--relative-peak-threshold", type=float, default=0.25,
                        help="peak extraction: keep maxima above this fraction of the "
                        "largest (0.25)")
    parser.add_argument("--min-separation-deg", type=float, default=25.0,
                        help="peak extraction: minimal angle between peaks (25)")


def sh_to_peaks(sh: np.ndarray, voxels: np.ndarray, *, npeaks: int,
                relative_peak_threshold: float, min_separation_deg: float) -> np.ndarray:
    """Peaks (n, npeaks, 3) of SH FODs (n, n_coeffs) with dipy's ``peak_directions``."""
    from dipy.data import default_sphere
    from dipy.direction.peaks import peak_directions
    from dipy.reconst.shm import sh_to_sf_matrix

    from metrics import sh_order_from_ncoeffs

    order = sh_order_from_ncoeffs(sh.shape[-1])
    basis = sh_to_sf_matrix(default_sphere, sh_order_max=order, basis_type="descoteaux07",
                            legacy=False, return_inv=False)
    out = np.zeros((len(voxels), npeaks, 3))
    odfs = sh[voxels] @ basis
    for n, odf in enumerate(odfs):  # dipy's peak finder works one voxel at a time
        if not np.any(odf > 0):
            continue
        dirs, _, _ = peak_directions(odf, default_sphere,
                                     relative_peak_threshold=relative_peak_threshold,
                                     min_separation_angle=min_separation_deg)
        k = min(len(dirs), npeaks)
        out[n, :k] = dirs[:k]
    return out


def compare_maps(map_a, map_b, voxels: np.ndarray, *, threshold_deg: float = 25.0,
                 npeaks: int = 5, relative_peak_threshold: float = 0.25,
                 min_separation_deg: float = 25.0) -> dict[str, np.ndarray]:
    """Per-voxel metrics of two OrientationMaps over ``voxels`` ((n, 3) int indices).

    SH vs SH: acc, jsd (default sphere), dispersion_error and peak metrics from
    extracted peaks; any pair involving a peak map: the peak metrics
    (peak_angular_error_deg, peak_precision, peak_recall, peak_f1, nufo_correct).
    """
    from dipy.data import default_sphere
    from dipy.reconst.shm import sh_to_sf_matrix

    import metrics

    idx = tuple(voxels.T)
    out: dict[str, np.ndarray] = {}
    if map_a.kind == "sh" and map_b.kind == "sh":
        sh_a, sh_b = map_a.data[idx], map_b.data[idx]
        out["acc"] = metrics.acc(sh_a, sh_b)
        order = metrics.sh_order_from_ncoeffs(sh_a.shape[-1])
        basis = sh_to_sf_matrix(default_sphere, sh_order_max=order, basis_type="descoteaux07",
                                legacy=False, return_inv=False)
        out["jsd"] = metrics.jsd(sh_a @ basis, sh_b @ basis, default_sphere)
        out["dispersion_error"] = metrics.dispersion_error(sh_a, sh_b)
    peaks = []
    for m in (map_a, map_b):
        if m.kind == "peaks":
            peaks.append(m.data[idx])
        else:
            peaks.append(sh_to_peaks(m.data.reshape(-1, m.data.shape[-1]),
                                     np.ravel_multi_index(idx, m.shape), npeaks=npeaks,
                                     relative_peak_threshold=relative_peak_threshold,
                                     min_separation_deg=min_separation_deg))
    out.update(metrics.peak_voxel_metrics(peaks[0], peaks[1], threshold_deg=threshold_deg))
    return out


def _write_table(table, path: Path) -> None:
    name = path.name
    if not name.endswith(_TABLE_SUFFIXES):
        raise UserError(f"{path}: the table must end in {', '.join(_TABLE_SUFFIXES)}")
    sep = "\t" if ".tsv" in name else ","
    tmp = path.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    compression = "gzip" if name.endswith(".gz") else None
    try:
        table.to_csv(tmp, sep=sep, index=False, compression=compression, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from validation.io.maps import read_orientation_map
    from validation.io.nifti import load_nifti

    if args.output and not Path(args.output).name.endswith(_TABLE_SUFFIXES):
        raise UserError(f"{args.output}: the table must end in {', '.join(_TABLE_SUFFIXES)}")
    if not 0 <= args.threshold_deg <= 90:
        raise UserError(f"--threshold-deg {args.threshold_deg} is outside [0, 90]")
    map_a = read_orientation_map(args.a, kind=args.kind_a)
    map_b = read_orientation_map(args.b, kind=args.kind_b)
    if map_a.shape != map_b.shape:
        raise UserError(f"{args.b}: grid {map_b.shape} differs from {args.a}'s {map_a.shape}")
    if not np.allclose(map_a.affine, map_b.affine, atol=1e-4):
        raise UserError(f"{args.b}: affine differs from {args.a}'s; resample onto one grid first")
    if args.mask:
        mask_img = load_nifti(args.mask)
        if mask_img.data.shape[:3] != map_a.shape:
            raise UserError(f"{args.mask}: mask shape {mask_img.data.shape} differs from the "
                            f"maps' grid {map_a.shape}")
        mask = np.asarray(mask_img.data).reshape(map_a.shape) != 0
    else:
        def nonzero(m):
            axes = tuple(range(3, m.data.ndim))
            return np.any(m.data != 0, axis=axes)

        mask = nonzero(map_a) | nonzero(map_b)
    voxels = np.argwhere(mask)
    if len(voxels) == 0:
        raise UserError("no voxels to compare (empty mask, or both maps are all zero)")
    log.info("comparing %d voxels (%s %s vs %s %s)", len(voxels), map_a.kind, args.a,
             map_b.kind, args.b)
    scores = compare_maps(map_a, map_b, voxels, threshold_deg=args.threshold_deg,
                          npeaks=args.npeaks, relative_peak_threshold=args.relative_peak_threshold,
                          min_separation_deg=args.min_separation_deg)
    table = pd.DataFrame({"i": voxels[:, 0], "j": voxels[:, 1], "k": voxels[:, 2], **scores})
    rows = []
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        rows.append({
            "metric": name,
            "median": float(np.median(finite)) if finite.size else float("nan"),
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "n": int(finite.size),
            "n_undefined": int(values.size - finite.size),
        })
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.output:
        _write_table(table, Path(args.output))
        log.info("wrote %s", args.output)
    return 0
