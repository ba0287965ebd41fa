"""Tractography scores (Tractometer: VS, IS, IC, NC, WPC, VB, IB, OL, OR, F1) of a tractogram."""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tractogram", metavar="TRACTOGRAM", help="TRK, TCK or TRX file")
    parser.add_argument("--truth", required=True, metavar="PATH",
                        help="phantom truth folder (with bundles.json) or a scilpy-style "
                        "JSON bundle config")
    parser.add_argument("--gt-dir", metavar="DIR",
                        help="folder the config's relative paths refer to (default: the "
                        "config's folder)")
    parser.add_argument("--reference", metavar="NIFTI",
                        help="image defining the tractogram's space when it has no header "
                        "(TCK); default: the first truth mask")
    parser.add_argument("--remove-invalid", action="store_true",
                        help="drop streamlines outside the reference's field of view (they are "
                        "an error otherwise)")
    parser.add_argument("--dilate-endpoints", type=int, default=0, metavar="N",
                        help="dilate head/tail ROIs by N voxels (0)")
    parser.add_argument("--field", metavar="NIFTI",
                        help="orientation field (peaks (X,Y,Z,K,3) or (X,Y,Z,3K), or vectors "
                        "(X,Y,Z,3)) for streamline_angle_deg")
    parser.add_argument("-o", "--output", metavar="SCORES",
                        help="write the scores as .json (XScale + scilpy keys) or .csv (tidy "
                        "rows: bundle, metric, value)")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _table(rows: list[dict]) -> str:
    """Plain aligned text table of dict rows with the same keys (no pandas: it alone
    would add ~40 MB to the peak memory of a scoring run)."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [keys] + [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in cells)


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["bundle", "metric", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    import metrics
    from validation.io.nifti import load_nifti
    from validation.io.tractograms import load_streamlines, read_truth_bundles

    out_path = Path(args.output) if args.output else None
    if out_path is not None and out_path.suffix not in (".json", ".csv"):
        raise UserError(f"{out_path}: the scores file must end in .json or .csv")
    if args.dilate_endpoints < 0:
        raise UserError(f"--dilate-endpoints {args.dilate_endpoints} must be >= 0")
    truth = read_truth_bundles(args.truth, gt_dir=args.gt_dir)
    reference = Path(args.reference) if args.reference else truth.reference
    if args.reference:
        ref_img = load_nifti(reference)
        if ref_img.data.shape[:3] != truth.shape or not np.allclose(ref_img.affine,
                                                                   truth.affine, atol=1e-4):
            raise UserError(f"{reference}: not on the truth grid of {truth.reference}")
    streamlines = load_streamlines(args.tractogram, reference,
                                   remove_invalid=args.remove_invalid)
    log.info("scoring %d streamlines against %d bundles", len(streamlines), len(truth.bundles))
    voxel_size = tuple(float(v) for v in truth.voxel_size)
    result = metrics.tractometer(streamlines, truth.bundles, voxel_size=voxel_size,
                                 dilate_endpoints=args.dilate_endpoints)
    scores = result.to_dict()
    angles = None
    if args.field:
        field_img = load_nifti(args.field)
        field = np.asarray(field_img.data, dtype=np.float64)
        if field.shape[:3] != truth.shape:
            raise UserError(f"{args.field}: field grid {field.shape[:3]} differs from the truth "
                            f"grid {truth.shape}")
        if field.ndim == 4 and field.shape[3] % 3 == 0 and field.shape[3] > 3:
            field = field.reshape(field.shape[:3] + (field.shape[3] // 3, 3))
        angles = metrics.streamline_field_angle(streamlines, field)
        finite = angles[np.isfinite(angles)]
        scores["streamline_angle_deg"] = float(np.mean(finite)) if finite.size else float("nan")
        scores["streamline_angle_deg_n_undefined"] = int(angles.size - finite.size)

    rows = [{"bundle": "all", "metric": k, "value": v} for k, v in scores.items()]
    for b in result.bundle_rows():
        rows += [{"bundle": b["bundle"], "metric": k, "value": v}
                 for k, v in b.items() if k != "bundle"]
    for key, value in scores.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:>34}  {shown}")
    print(_table(result.bundle_rows()))
    if out_path is not None:
        if out_path.suffix == ".json":
            payload = {
                "tractogram": str(args.tractogram),
                "truth": str(args.truth),
                "scores": scores,
                "bundles": result.bundle_rows(),
                "invalid_bundles": [{"roi_a": a, "roi_b": b, "ic_count": n}
                                    for (a, b), n in result.invalid_bundles.items()],
                "scilpy": result.to_scilpy_dict(),
            }
            _atomic_write_text(out_path, json.dumps(_jsonable(payload), indent=2) + "\n")
        else:
            _atomic_write_text(out_path, _csv(rows))
        log.info("wrote %s", out_path)
    return 0
