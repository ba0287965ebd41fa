"""Throughput of mapping microscopy orientations into dMRI space (validation.transforms).

Times ``to_dmri_space`` (positions + reoriented vectors) for an affine chain and for a
chain holding a 64^3 displacement field, and the fixed-point inverse of that field.
Exits non-zero when a target is missed. Run: ``python benchmarks/bench_transforms.py``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from validation.transforms import (
    AffineTransform,
    DisplacementFieldTransform,
    compose,
    rotation_matrix,
    to_dmri_space,
)

N_POINTS = 1_000_000
#: (name, seconds allowed for N_POINTS points / for the inverse's points)
TARGETS = {"affine chain": 2.0, "affine + field": 15.0, "field inverse (100k points)": 10.0}


def _field() -> DisplacementFieldTransform:
    shape = (64, 64, 64)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = -16.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x = ijk * 0.5 - 16.0
    u = 0.5 * np.sin(x[..., [1, 2, 0]] / 4.0)
    return DisplacementFieldTransform(u, affine)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-12, 12, size=(N_POINTS, 3))
    vec = rng.normal(size=(N_POINTS, 3))
    rot = AffineTransform(rotation_matrix([1, 1, 0], 30.0))
    shear = np.eye(4)
    shear[0, 1] = 0.2
    affine_chain = compose(rot, AffineTransform(shear))
    field = _field()
    field_chain = compose(rot, field)
    results = {
        "affine chain": _time(lambda: to_dmri_space(vec, pts, affine_chain)),
        "affine + field": _time(lambda: to_dmri_space(vec, pts, field_chain)),
        "field inverse (100k points)": _time(lambda: field.inverse().apply_points(pts[:100_000])),
    }
    failed = False
    print(f"{'case':32s} {'seconds':>8s} {'target':>8s}  points/s")
    for name, seconds in results.items():
        n = 100_000 if "inverse" in name else N_POINTS
        ok = seconds <= TARGETS[name]
        failed |= not ok
        print(f"{name:32s} {seconds:8.2f} {TARGETS[name]:8.1f}  {n / seconds:10.3g}"
              f"{'' if ok else '  MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
