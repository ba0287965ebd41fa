"""Phantom budgets (issue 4): the default suite and a large HiP-CT-like render.

Usage::

    python benchmarks/bench_phantoms.py            # default suite (target < 20 s)
    python benchmarks/bench_phantoms.py --large    # + 1024^3 at 2 um to uint16 OME-Zarr
                                                   #   (targets < 15 min, peak RSS < 2 GiB)

Prints a small table; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import phantoms  # noqa: E402

DEFAULT_TARGET_S = 20.0
LARGE_TARGET_S = 15 * 60.0
LARGE_RSS_GIB = 2.0


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_default() -> tuple[list[tuple[str, float, str]], bool]:
    rows = []
    t_all = time.perf_counter()
    cpu_all = time.process_time()
    for spec in phantoms.get_suite("default"):
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        ph = phantoms.build_phantom(spec)
        truth = ph.truth()
        signal = ph.simulate_dmri()
        mic = ph.render_microscopy()
        import dask.array as da

        vol, mask = da.compute(mic.volume, mic.mask)
        dt = time.perf_counter() - t0
        rows.append((f"default/{spec.case_id}", dt,
                     f"cpu {time.process_time() - cpu0:.1f} s; "
                     f"dwi {signal.data.shape}, microscopy {vol.shape}, "
                     f"{int(truth.mask.sum())} fibre voxels, {int(mask.sum())} tissue vox"))
    total = time.perf_counter() - t_all
    rows.append(("default suite total", total, f"cpu {time.process_time() - cpu_all:.1f} s; "
                 f"target < {DEFAULT_TARGET_S:.0f} s (wall)"))
    return rows, total < DEFAULT_TARGET_S


def large_spec() -> phantoms.CaseSpec:
    """1024^3 microscopy voxels of 2 um (2048 um field of view), packing 0.45."""
    return phantoms.CaseSpec(
        "large", geometry="single", grid_size=16, voxel_size_mm=0.128,
        bundle_diameter_um=2400.0, packing=0.45, radius_mean_um=2.0,
        microscopy_voxel_um=2.0, contrast="hipct", rotation_deg=(0.0, 8.0, 12.0),
    )


def bench_large(out_dir: Path) -> tuple[list[tuple[str, float, str]], bool]:
    import dask

    from validation.io.omezarr import write_ome_zarr

    rows = []
    t0 = time.perf_counter()
    ph = phantoms.build_phantom(large_spec())
    t_geom = time.perf_counter() - t0
    g = ph.geometry
    rows.append(("large: geometry", t_geom,
                 f"{len(g.tube_radius)} axons, {g.p0.shape[0]} segments, packing "
                 f"{float(g.bundle_packing[0]):.3f}"))
    mic = ph.render_microscopy(chunks=128)
    lo, span = -0.5, 2.0
    vol = mic.volume.map_blocks(
        lambda b: np.round(np.clip((b - lo) / span, 0, 1) * 65535).astype(np.uint16),
        dtype=np.uint16,
    )
    t1 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count() or 2):
        write_ome_zarr(out_dir / "large.ome.zarr", vol, spacing=mic.spacing_um.tolist(),
                       units="micrometer", chunks=(128, 128, 128), overwrite=True)
    t_render = time.perf_counter() - t1
    total = time.perf_counter() - t0
    rss = _rss_gib()
    rows.append(("large: render + write uint16", t_render, f"shape {vol.shape}"))
    rows.append(("large: total", total, f"target < {LARGE_TARGET_S / 60:.0f} min"))
    rows.append(("large: peak RSS (GiB)", rss, f"target < {LARGE_RSS_GIB:.0f} GiB"))
    return rows, total < LARGE_TARGET_S and rss < LARGE_RSS_GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also run the 1024^3 render")
    parser.add_argument("--only-large", action="store_true", help="only the 1024^3 render")
    parser.add_argument("--out", type=Path, help="folder for the large OME-Zarr (temp)")
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    ok = True
    if not args.only_large:
        r, good = bench_default()
        rows += r
        ok &= good
    if args.large or args.only_large:
        out = args.out or Path(tempfile.mkdtemp(prefix="xscale-bench-"))
        try:
            r, good = bench_large(out)
            rows += r
            ok &= good
        finally:
            if args.out is None:
                shutil.rmtree(out, ignore_errors=True)
    print(f"{'benchmark':32s} {'value':>10s}  notes")
    for name, value, note in rows:
        print(f"{name:32s} {value:10.2f}  {note}")
    print("all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
