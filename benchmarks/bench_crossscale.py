"""Benchmark of cross-scale comparison and registration perturbations.

1. ``compare_sources`` on N voxels (default 2 x 10^5) of two SH order-8 sources with 3
   peaks each (ACC, JSD on 724 directions, one-to-one peak matching). Target: >= 10,000
   voxels/s.
2. One registration perturbation of a 2 um microscopy level (a 120^3 phantom volume):
   re-projecting the kept structure-tensor orientations through a perturbed affine
   (what a run does per perturbation) against recomputing structure tensor + projection.
   Target: the re-projection takes <= 50% of the full recomputation.

Exit status 1 when a target is missed.

    python benchmarks/bench_crossscale.py [--n 200000]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _bench_compare(n: int) -> tuple[float, float]:
    from validation.crossscale import OrientationSource, compare_sources

    rng = np.random.default_rng(0)
    sh_a = rng.normal(size=(n, 1, 1, 45))
    sh_b = sh_a + rng.normal(scale=0.3, size=sh_a.shape)
    peaks_a = rng.normal(size=(n, 1, 1, 3, 3))
    peaks_a /= np.linalg.norm(peaks_a, axis=-1, keepdims=True)
    peaks_b = peaks_a + rng.normal(scale=0.1, size=peaks_a.shape)
    peaks_b /= np.linalg.norm(peaks_b, axis=-1, keepdims=True)
    a = OrientationSource("a", peaks_a, sh_a)
    b = OrientationSource("b", peaks_b, sh_b)
    compare_sources(OrientationSource("a", peaks_a[:100], sh_a[:100]),
                    OrientationSource("b", peaks_b[:100], sh_b[:100]))  # warm-up (numba)
    start = time.perf_counter()
    result = compare_sources(a, b)
    elapsed = time.perf_counter() - start
    assert len(result.voxels) == n
    return elapsed, n / elapsed


def _bench_perturbation() -> tuple[float, float]:
    import phantoms
    from validation.fod import microscopy_fod
    from validation.orientation import structure_tensor_orientation
    from validation.uncertainty import perturbed_affines

    spec = phantoms.CaseSpec("bench", geometry="single", grid_size=3, voxel_size_mm=0.08,
                             snr=None, rotation_deg=(0.0, 30.0, 20.0))
    phantom = phantoms.build_phantom(spec, rng=0)
    micro = phantom.render_microscopy(voxel_size_um=2.0, rng=1)
    volume = np.asarray(micro.volume.compute(), np.float32)
    mask = np.asarray(micro.mask.compute(), bool)
    grid = phantom.grid
    spacing = tuple(float(s) for s in micro.spacing_um)

    def project(st, affine):
        return microscopy_fod(st.vectors, st.anisotropy, microscopy_affine=affine,
                              spacing=np.asarray(spacing) / 1000.0, grid_shape=grid.shape,
                              grid_affine=grid.affine, mask=mask)

    start = time.perf_counter()
    st = structure_tensor_orientation(volume, sigma=3.0, rho=8.0, spacing=spacing)
    project(st, micro.affine)
    full = time.perf_counter() - start
    (moved,) = perturbed_affines(micro.affine, volume.shape, n=1, rotation_deg=1.0,
                                 translation_mm=0.01, rng=0)
    start = time.perf_counter()
    project(st, moved)
    return full, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args(argv)
    ok = True
    elapsed, rate = _bench_compare(args.n)
    hit = rate >= 10_000
    ok &= hit
    print(f"{'benchmark':<44} {'measured':>22} {'target':>14} ok")
    print(f"{'compare_sources, ' + str(args.n) + ' voxels':<44} "
          f"{f'{rate:,.0f} vox/s ({elapsed:.2f} s)':>22} {'>= 10,000/s':>14} {hit}")
    full, reproject = _bench_perturbation()
    share = reproject / full
    hit = share <= 0.5
    ok &= hit
    print(f"{'perturbation of a 120^3 level (2 um)':<44} "
          f"{f'{reproject:.2f} s vs {full:.2f} s':>22} {'<= 50%':>14} {hit}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
