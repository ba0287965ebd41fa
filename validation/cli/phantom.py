"""Write phantom datasets: DIR/suite.toml plus one dataset folder per case."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)

#: uint16 microscopy: stored = round(clip((I - UINT16_OFFSET) / UINT16_RANGE, 0, 1) * 65535)
UINT16_OFFSET = -0.5
UINT16_RANGE = 2.0

_SH_SIDECAR = {
    "OrientationEncoding": {
        "Type": "sh",
        "SphericalHarmonicsBasis": "descoteaux07",
        "Legacy": False,
        "SphericalHarmonicsDegree": 8,
        "Reference": "ijk",
    },
    "sh_basis": "descoteaux07",
    "legacy": False,
    "sh_order_max": 8,
    "frame": "ijk",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SUITE|CONFIG",
                        help="a built-in suite name or a suite TOML ([[cases]] tables)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--cases", metavar="IDS", help="comma-separated case ids to write")
    parser.add_argument("--no-microscopy", action="store_true", help="skip microscopy")
    parser.add_argument("--microscopy-voxel-um", type=float, metavar="UM",
                        help="microscopy voxel size (default: each case's)")
    parser.add_argument("--contrast", choices=("hipct", "em"),
                        help="microscopy contrast (default: each case's)")
    parser.add_argument("--microscopy-dtype", choices=("float32", "uint16"), default="float32",
                        help="stored microscopy dtype (uint16: fixed linear map, in attrs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    parser.add_argument("--seed", type=int, default=0,
                        help="run seed; per-case seeds are derived as `xscale run` does "
                             "(default 0)")


def load_specs(source: str) -> tuple[str, list[Any]]:
    """(suite name, CaseSpecs) of a built-in suite name or a suite TOML file."""
    import phantoms

    path = Path(source)
    if source in phantoms.list_suites():
        return source, phantoms.get_suite(source)
    if not path.exists():
        raise UserError(
            f"{source}: neither a suite ({', '.join(phantoms.list_suites())}) nor a file"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"suite", "cases"})
    if unknown:
        raise UserError(f"{path}: unknown top-level keys {', '.join(unknown)}; use suite, cases")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise UserError(f"{path}: needs at least one [[cases]] table")
    specs = [phantoms.CaseSpec.from_dict(c) for c in cases]
    ids = [s.case_id for s in specs]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: case ids are not unique")
    name = data.get("suite", {}).get("name", path.stem) if isinstance(data.get("suite"), dict) \
        else path.stem
    return str(name), specs


def suite_toml(name: str, specs: list[Any]) -> str:
    """The text of DIR/suite.toml (readable back by `load_specs`)."""
    import tomli_w

    return tomli_w.dumps({"suite": {"name": name}, "cases": [s.to_dict() for s in specs]})


def _to_uint16(block: np.ndarray) -> np.ndarray:
    scaled = np.clip((block - UINT16_OFFSET) / UINT16_RANGE, 0.0, 1.0) * 65535.0
    return np.round(scaled).astype(np.uint16)


def write_case(
    phantom: Any,
    folder: str | os.PathLike,
    *,
    microscopy: bool = True,
    voxel_size_um: float | None = None,
    contrast: str | None = None,
    microscopy_dtype: str = "float32",
    rng: Any = None,
    microscopy_rng: Any = None,
) -> Path:
    """Write one phantom as a dataset folder in the manifest layout (design.md).

    ``folder`` must not exist; it is created. Returns the path of its manifest.toml.
    ``rng`` draws the dMRI noise, ``microscopy_rng`` the microscopy noise (default: ``rng``).
    """
    from validation.io.nifti import save_gradients, save_json, save_nifti, save_trk
    from validation.manifest import write_manifest

    out = Path(folder)
    out.mkdir(parents=True)
    spec = phantom.spec
    grid = phantom.grid
    affine = grid.affine
    truth = phantom.truth()
    signal = phantom.simulate_dmri(rng=rng)

    save_nifti(out / "dwi.nii.gz", signal.data.astype(np.float32), affine, {
        "S0": signal.s0, "SNR": signal.snr, "NoiseSigma": signal.sigma,
        "Noise": "rician" if signal.snr is not None else "none",
        "GradientScheme": spec.scheme, "bvec_convention": "fsl",
    })
    save_gradients(out / "dwi", signal.bvals, signal.bvecs, affine)
    tissue = truth.tissue_fraction
    save_nifti(out / "mask.nii.gz", (tissue > 0).astype(np.uint8), affine,
               {"Description": "voxels containing tissue (fibre or extra-axonal space)"})
    k = truth.peaks.shape[-2]
    frame = {"frame": "ijk", "Reference": "ijk", "unit_vectors": True}
    save_nifti(out / "truth_peaks.nii.gz",
               truth.peaks.reshape(grid.shape + (3 * k,)).astype(np.float32), affine, {
                   **frame, "Description": "geometric bundle directions, K x 3 volumes, "
                   "zero rows = absent, sorted by fraction", "n_peaks": k})
    save_nifti(out / "truth_fractions.nii.gz", truth.fractions.astype(np.float32), affine,
               {"Description": "fibre volume fraction of each peak (same order)"})
    save_nifti(out / "truth_nufo.nii.gz", truth.nufo.astype(np.int16), affine,
               {"Description": "number of fibre populations (fraction >= 0.1)"})
    save_nifti(out / "truth_mask.nii.gz", truth.mask.astype(np.uint8), affine,
               {"Description": "voxels with at least one fibre population"})
    save_nifti(out / "truth_fod.nii.gz", truth.fod_sh.astype(np.float32), affine,
               dict(_SH_SIDECAR, Description="fibre ODF from segment directions"))

    tdir = out / "truth"
    tdir.mkdir()
    bundles_cfg: dict[str, dict[str, str]] = {}
    all_lines = []
    for b in truth.bundles:
        save_trk(tdir / f"{b.name}.trk", b.streamlines, affine, grid.shape)
        all_lines.extend(b.streamlines)
        save_nifti(tdir / f"{b.name}_head.nii.gz", b.head_roi, affine)
        save_nifti(tdir / f"{b.name}_tail.nii.gz", b.tail_roi, affine)
        save_nifti(tdir / f"{b.name}_mask.nii.gz", b.mask, affine)
        bundles_cfg[b.name] = {
            "head": f"{b.name}_head.nii.gz",
            "tail": f"{b.name}_tail.nii.gz",
            "gt_mask": f"{b.name}_mask.nii.gz",
        }
    save_json(tdir / "bundles.json", bundles_cfg)
    save_trk(tdir / "bundles.trk", all_lines, affine, grid.shape)

    manifest: dict[str, Any] = {
        "dataset": {
            "name": spec.case_id,
            "description": f"XScale phantom ({spec.geometry})",
            "conditions": spec.conditions(),
        },
        "dmri": {"dwi": "dwi.nii.gz", "bval": "dwi.bval", "bvec": "dwi.bvec",
                 "mask": "mask.nii.gz"},
        "truth": {
            "peaks": "truth_peaks.nii.gz", "fractions": "truth_fractions.nii.gz",
            "nufo": "truth_nufo.nii.gz", "mask": "truth_mask.nii.gz",
            "fod_sh": "truth_fod.nii.gz", "bundles": "truth/bundles.json",
            "tractogram": "truth/bundles.trk",
        },
    }
    if microscopy:
        manifest["microscopy"] = [
            _write_microscopy(phantom, out, voxel_size_um, contrast, microscopy_dtype,
                              rng if microscopy_rng is None else microscopy_rng)
        ]
    return write_manifest(out / "manifest.toml", manifest)


def _write_microscopy(
    phantom: Any, out: Path, voxel_size_um: float | None, contrast: str | None,
    dtype: str, rng: Any,
) -> dict[str, Any]:
    import dask.array as da
    import zarr

    from validation.io.omezarr import create_ome_zarr_image

    mic = phantom.render_microscopy(voxel_size_um=voxel_size_um, contrast=contrast, rng=rng)
    spacing = [float(s) for s in mic.spacing_um]
    attrs: dict[str, Any] = {"xscale": {
        "contrast": mic.contrast, "phantom_case": phantom.spec.case_id,
        "voxel_to_dmri_world_mm": mic.affine.tolist(),
    }}
    volume = mic.volume
    if dtype == "uint16":
        volume = volume.map_blocks(_to_uint16, dtype=np.uint16)
        attrs["xscale"]["uint16_to_intensity"] = {
            "offset": UINT16_OFFSET, "scale": UINT16_RANGE / 65535.0,
        }
    mask = mic.mask.astype(np.uint8)
    chunks = tuple(int(c) for c in volume.chunksize)
    targets = []
    for name, arr, label, extra in (
        ("microscopy.ome.zarr", volume, "microscopy", attrs),
        ("microscopy_mask.ome.zarr", mask, "tissue-mask", None),
    ):
        group = zarr.open_group(str(out / name), mode="w", zarr_format=2)
        targets.append(create_ome_zarr_image(
            group, shape=tuple(arr.shape), dtype=arr.dtype, spacing=spacing,
            units="micrometer", chunks=chunks, name=label, attrs=extra,
        ))
    # one pass: each chunk is rendered once for both images (chunks align: no locks)
    da.store([volume, mask], targets, lock=False)  # type: ignore[arg-type]  # zarr arrays
    # microscopy world (x, y, z) mm = reversed array axes * spacing; to dMRI world mm
    v2w = np.zeros((4, 4))
    v2w[3, 3] = 1.0
    for axis, world in enumerate((2, 1, 0)):
        v2w[world, axis] = spacing[axis] / 1000.0
    to_dmri = mic.affine @ np.linalg.inv(v2w)
    np.savetxt(out / "microscopy_to_dmri.txt", to_dmri, fmt="%.10g")
    label = f"{mic.contrast}-{spacing[0]:g}um"
    return {
        "name": label, "path": "microscopy.ome.zarr", "level": 0,
        "voxel_size_um": spacing, "transform": ["microscopy_to_dmri.txt"],
        "mask": "microscopy_mask.ome.zarr",
        "description": "phantom microscopy and its tissue mask",
    }


def run(args: argparse.Namespace) -> int:
    import phantoms
    from validation.cases import derive_seed

    name, specs = load_specs(args.source)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        known = {s.case_id for s in specs}
        missing = [c for c in wanted if c not in known]
        if missing:
            raise UserError(f"--cases: unknown case ids {', '.join(missing)} in {name}")
        specs = [s for s in specs if s.case_id in wanted]
    target = Path(args.output)
    if target.exists() and not args.overwrite:
        raise UserError(f"{target}: exists already; pass --overwrite to replace it")
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        (tmp / "suite.toml").write_text(suite_toml(name, specs))
        for spec in specs:
            t0 = time.perf_counter()
            # the seeds `xscale run` derives for the same case: a written phantom run
            # through its manifest scores as the in-memory phantom does
            ph = phantoms.build_phantom(spec, rng=derive_seed(args.seed, spec.case_id, "phantom"))
            write_case(
                ph, tmp / spec.case_id, microscopy=not args.no_microscopy,
                voxel_size_um=args.microscopy_voxel_um, contrast=args.contrast,
                microscopy_dtype=args.microscopy_dtype,
                rng=derive_seed(args.seed, spec.case_id, "dmri"),
                microscopy_rng=derive_seed(args.seed, spec.case_id, "microscopy"),
            )
            log.info("phantom %s: %s written in %.1f s", name, spec.case_id,
                     time.perf_counter() - t0)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return 0
