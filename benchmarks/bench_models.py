"""Benchmark of model fitting: XScale's overhead around a model's own fit, and parallel speed-up.

Run: ``python benchmarks/bench_models.py [--size 24] [--model csd] [--repeats 3]``.
Prints a table; exits 1 when a target is missed:

- overhead (everything ``fit_case`` adds: worker process, chunking, peak finding and
  refinement, SH projection, checks) < 10 % of the time spent in the model's own code;
- ``jobs=2`` at least 1.6x faster than ``jobs=1`` (needs 2 idle cores).

Also printed, without targets, for busy machines: the workers' CPU seconds for jobs=1 and
jobs=2 (equal when parallel fitting duplicates no work; their ratio bounds the speed-up on
2 idle cores), and the speed-up for a model that sleeps 0.1 s per voxel chunk, which needs
no idle cores and so shows the parallel machinery's own efficiency.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

OVERHEAD_TARGET = 0.10
SPEEDUP_TARGET = 1.6


def _dipy_alone(name: str, ph) -> float:
    """Seconds for the same model with dipy directly (response + fit + ODF + peaks)."""
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction.peaks import peaks_from_model
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst

    from validation.models.builtins import response_voxels

    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    t0 = time.perf_counter()
    if name == "csd":
        response, _ = response_from_mask_ssst(gtab, ph.data, response_voxels(gtab, ph.data,
                                                                            ph.mask))
        model = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8)
    else:
        from validation.models import make_model

        model = make_model(name).build(gtab, ph.data, ph.mask)
    peaks_from_model(model, ph.data, default_sphere, 0.5, 25, mask=ph.mask, npeaks=5,
                     return_sh=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=24,
                        help="phantom edge, voxels (24: 13823 voxels, a few seconds of CSD)")
    parser.add_argument("--model", default="csd")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from validation.models import ModelSpec, fit_case
    from validation.models.conformance import tiny_phantom

    ph = tiny_phantom(shape=(args.size,) * 3, snr=30, rng=0)
    spec = ModelSpec(args.model, "bench", args.model, {})
    n_vox = int(ph.mask.sum())

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers and their pools
        return usage.ru_utime + usage.ru_stime

    def best(jobs: int):
        runs = []
        for _ in range(args.repeats):
            c0, t0 = cpu_seconds(), time.perf_counter()
            out = fit_case(spec, ph.data, ph.bvals, ph.bvecs, ph.mask, jobs=jobs)
            runs.append((time.perf_counter() - t0, out.details["model_seconds"],
                         cpu_seconds() - c0))
        return min(runs)

    fit_case(spec, ph.data[:2], ph.bvals, ph.bvecs, ph.mask[:2])  # warm imports
    wall1, model1, cpu1 = best(1)
    wall2, _, cpu2 = best(2)
    sleepy = ModelSpec("validation.models.testing:SleepingModel", "sleepy", "sleep",
                       {"seconds": 0.1})
    sleep_walls = []
    for jobs in (1, 2):
        t0 = time.perf_counter()
        fit_case(sleepy, ph.data, ph.bvals, ph.bvecs, ph.mask, jobs=jobs)
        sleep_walls.append(time.perf_counter() - t0)
    dipy_s = min(_dipy_alone(args.model, ph) for _ in range(args.repeats))
    overhead = (wall1 - model1) / model1
    speedup = wall1 / wall2
    rows = [
        ("voxels", f"{n_vox}", ""),
        ("cores", f"{os.cpu_count()}", ""),
        ("fit_case jobs=1 (s)", f"{wall1:.2f}", ""),
        ("  in the model's code (s)", f"{model1:.2f}", ""),
        ("  overhead", f"{100 * overhead:.1f} %", f"< {100 * OVERHEAD_TARGET:.0f} %"),
        ("dipy alone, peaks_from_model (s)", f"{dipy_s:.2f}", "(reference)"),
        ("fit_case jobs=2 (s)", f"{wall2:.2f}", ""),
        ("  speed-up", f"{speedup:.2f}x", f">= {SPEEDUP_TARGET}x"),
        ("worker CPU jobs=1 / jobs=2 (s)", f"{cpu1:.2f} / {cpu2:.2f}", ""),
        ("  projected speed-up, 2 idle cores", f"{cpu1 / (cpu2 / 2):.2f}x", "(cpu1 / (cpu2 / 2))"),
        ("sleeping model jobs=1 / jobs=2 (s)",
         f"{sleep_walls[0]:.2f} / {sleep_walls[1]:.2f}", ""),
        ("  speed-up", f"{sleep_walls[0] / sleep_walls[1]:.2f}x", "(no target)"),
    ]
    width = max(len(r[0]) for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_models: model {args.model}, phantom {args.size}^3, best of {args.repeats}, "
          f"load average {load:.1f}")
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>10}  {target}")
    failed = []
    if overhead >= OVERHEAD_TARGET:
        failed.append("overhead")
    if speedup < SPEEDUP_TARGET:
        failed.append("speed-up")
    if failed:
        print(f"missed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
