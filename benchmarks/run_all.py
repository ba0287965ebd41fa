"""Run every benchmark script in this folder (``tox -e bench``).

Each ``bench_*.py`` is a plain script that prints its table and exits non-zero when a
target is missed. Pass names to run a subset: ``tox -e bench -- structure_tensor``.
Scripts whose reference implementation or data are unavailable say so and exit 0.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)])
        print(f"=== {script.stem}: exit {code} after {time.perf_counter() - start:.1f} s",
              flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print(f"\ntargets missed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(scripts)} benchmarks met their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
