"""Benchmark of ``xscale score-tractogram`` against scilpy's
``scil_tractogram_segment_with_ROI_and_score`` (scilpy 2.3.0, ``--compute_ic --unique``).

Data (generated, not timed): 10 straight bundles on a 96^3 grid of 1 mm voxels, each
with head / tail ROIs (4-voxel slabs at the two ends), a ground-truth mask, length
limits and an angle limit, written as NIfTI files with a scilpy-style JSON config; a TRK
of ``--n`` streamlines (default 10^5) of ``--points`` points (50): 70 % along a bundle
(valid), 15 % from one bundle's head to another bundle's tail (invalid connections) and
15 % short streamlines in the middle (no connection).

Both programs run as separate processes on the same files; wall time and peak resident
memory (the child's ``ru_maxrss``) are measured. scilpy runs in its own environment (it
pins numpy 1.26): give the path of its script in ``XSCALE_SCILPY_SCRIPT`` (e.g.
``/tmp/scilpy-venv/bin/scil_tractogram_segment_with_ROI_and_score``). Without it the
benchmark says so and checks XScale against the scilpy figures measured for issue 10
(24 s wall, 490 MB RSS).

Targets: XScale at least 2x faster than scilpy with less peak memory. The counts
(VS, IC, NC, VB, IB) of the two are printed side by side. Exit status 1 when a target is
missed or XScale fails.

    python benchmarks/bench_score_tractogram.py [--n 100000] [--points 50] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: scilpy 2.3.0 on this task's issue (10^5 x 50 points, 10 bundles), used without scilpy
ISSUE_SCILPY_WALL_S = 24.0
ISSUE_SCILPY_RSS_MB = 490.0
SHAPE = (96, 96, 96)
N_BUNDLES = 10

# runs a command; prints "<wall s> <peak RSS of its process tree, kB> <exit> <CPU s>"
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,"
    " text=True)\n"
    "wall = time.perf_counter() - t\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.write(p.stderr[-2000:] if p.returncode else '')\n"
    "print(wall, ru.ru_maxrss, p.returncode, ru.ru_utime + ru.ru_stime)\n"
)


def make_data(folder: Path, n: int, n_points: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the bundles, the config and the tractogram; returns (trk, config)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    config = {}
    ys = 8 + 8 * np.arange(N_BUNDLES)
    for b, y in enumerate(ys):
        head = np.zeros(SHAPE, np.uint8)
        head[0:4, y - 3:y + 3, 40:56] = 1
        tail = np.zeros(SHAPE, np.uint8)
        tail[92:96, y - 3:y + 3, 40:56] = 1
        mask = np.zeros(SHAPE, np.uint8)
        mask[:, y - 3:y + 3, 40:56] = 1
        for name, vol in (("head", head), ("tail", tail), ("mask", mask)):
            nib.save(nib.Nifti1Image(vol, affine), str(folder / f"b{b}_{name}.nii.gz"))
        config[f"b{b}"] = {"head": f"b{b}_head.nii.gz", "tail": f"b{b}_tail.nii.gz",
                           "gt_mask": f"b{b}_mask.nii.gz", "length": [50, 200], "angle": 300}
    (folder / "config.json").write_text(json.dumps(config, indent=1))

    t = np.linspace(0.0, 1.0, n_points)
    kind = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])  # valid, invalid connection, none
    start_b = rng.integers(0, N_BUNDLES, n)
    end_b = np.where(kind == 1, (start_b + rng.integers(1, N_BUNDLES, n)) % N_BUNDLES,
                     start_b)
    y0 = ys[start_b] + rng.normal(0, 1.2, n)
    y1 = ys[end_b] + rng.normal(0, 1.2, n)
    pts = np.empty((n, n_points, 3))
    pts[:, :, 0] = t * 95
    pts[:, :, 1] = y0[:, None] + (y1 - y0)[:, None] * t
    pts[:, :, 1] += 0.1 * rng.normal(0, 0.3, (n, n_points)).cumsum(axis=1)
    pts[:, :, 2] = rng.uniform(41, 55, n)[:, None]
    short = kind == 2
    pts[short, :, 0] = 30 + t * 30  # from x = 30 to 60: no ROI at either end
    np.clip(pts, 0.0, np.array(SHAPE) - 1.0, out=pts)
    header = {
        nib.streamlines.Field.VOXEL_TO_RASMM: affine,
        nib.streamlines.Field.DIMENSIONS: np.array(SHAPE, np.int16),
        nib.streamlines.Field.VOXEL_SIZES: np.ones(3, np.float32),
        nib.streamlines.Field.VOXEL_ORDER: "RAS",
    }
    tractogram = nib.streamlines.Tractogram(list(pts.astype(np.float32)),
                                            affine_to_rasmm=np.eye(4))
    trk = folder / "tractogram.trk"
    nib.streamlines.TrkFile(tractogram, header=header).save(str(trk))
    return trk, folder / "config.json"


def measure(cmd: list[str]) -> tuple[float, float, int, str, float]:
    """Wall seconds, peak RSS in MB, exit status, stderr tail and CPU seconds (user +
    system) of one command."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True,
                          text=True, check=False)
    fields = proc.stdout.split()
    if len(fields) != 4:
        return float("nan"), float("nan"), 1, proc.stderr[-2000:], float("nan")
    return (float(fields[0]), float(fields[1]) / 1024.0, int(fields[2]), proc.stderr,
            float(fields[3]))


def xscale_command(trk: Path, config: Path, out: Path) -> list[str]:
    exe = shutil.which("xscale") or str(Path(sys.executable).with_name("xscale"))
    return [exe, "score-tractogram", str(trk), "--truth", str(config), "-o", str(out)]


def scilpy_command(script: str, trk: Path, config: Path, out_dir: Path) -> list[str]:
    return [script, str(trk), str(config), str(out_dir), "--gt_dir", str(config.parent),
            "--compute_ic", "--unique", "-f"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="streamlines (100000)")
    parser.add_argument("--points", type=int, default=50, help="points per streamline (50)")
    parser.add_argument("--keep", metavar="DIR", help="write the data here and keep it")
    args = parser.parse_args(argv)

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-score-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        trk, config = make_data(folder, args.n, args.points)
        # warm-up on a tiny tractogram: numba's on-disk cache, Python's bytecode
        small = folder / "small"
        small.mkdir(exist_ok=True)
        small_trk, small_cfg = make_data(small, 100, args.points)
        measure(xscale_command(small_trk, small_cfg, small / "scores.json"))
        x_wall, x_rss, x_rc, x_err, x_cpu = measure(
            xscale_command(trk, config, folder / "xscale.json"))
        if x_rc != 0:
            print(f"xscale score-tractogram failed:\n{x_err}", file=sys.stderr)
            return 1
        ours = json.loads((folder / "xscale.json").read_text())["scilpy"]

        script = os.environ.get("XSCALE_SCILPY_SCRIPT")
        theirs = None
        if script:
            s_dir = folder / "scilpy_out"
            s_wall, s_rss, s_rc, s_err, s_cpu = measure(
                scilpy_command(script, trk, config, s_dir))
            if s_rc != 0:
                print(f"scilpy failed (exit {s_rc}):\n{s_err}", file=sys.stderr)
                return 1
            theirs = json.loads((s_dir / "results.json").read_text())
            label = "scilpy 2.3.0 (measured here)"
        else:
            print("XSCALE_SCILPY_SCRIPT is not set: scilpy is not run; XScale is compared "
                  f"with the scilpy figures of issue 10 ({ISSUE_SCILPY_WALL_S:g} s, "
                  f"{ISSUE_SCILPY_RSS_MB:g} MB), measured on another machine.")
            s_wall, s_rss, s_cpu = ISSUE_SCILPY_WALL_S, ISSUE_SCILPY_RSS_MB, float("nan")
            label = "scilpy 2.3.0 (issue 10)"

        print(f"\n{args.n} streamlines x {args.points} points, {N_BUNDLES} bundles, "
              f"{SHAPE[0]}^3 grid\n")
        print(f"{'program':32s} {'wall (s)':>9s} {'CPU (s)':>9s} {'peak RSS (MB)':>14s}")
        print(f"{'xscale score-tractogram':32s} {x_wall:9.2f} {x_cpu:9.2f} {x_rss:14.0f}")
        print(f"{label:32s} {s_wall:9.2f} {s_cpu:9.2f} {s_rss:14.0f}")
        speedup = s_wall / x_wall
        print(f"\nspeed-up {speedup:.2f}x wall, {s_cpu / x_cpu:.2f}x CPU (target >= 2 wall), "
              f"memory ratio {x_rss / s_rss:.2f} (target < 1)")
        keys = ("total_streamlines", "VS", "IC", "NC", "WPC", "VB", "IB", "mean_OL",
                "mean_OR_gt", "mean_OR_vs", "mean_f1")
        print(f"\n{'key':18s} {'xscale':>12s} {'scilpy':>12s}")
        for key in keys:
            a = ours.get(key, float("nan"))
            b = theirs.get(key, float("nan")) if theirs else float("nan")
            print(f"{key:18s} {a:12.6g} {b:12.6g}")
        ok = speedup >= 2.0 and x_rss < s_rss
        print("\ntargets " + ("met" if ok else "MISSED"))
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
