"""Budget: the built-in default benchmark (`xscale run`) finishes in under 3 minutes on
2 cores, report included. Prints the wall time of each stage from provenance.json."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 180.0


def main() -> int:
    from validation.cli import main as xscale

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "default"
        start = time.perf_counter()
        code = xscale(["run", "-o", str(out), "--quiet", "--jobs", "2"])
        wall = time.perf_counter() - start
        if code != 0:
            print(f"xscale run failed with exit code {code}")
            return 1
        timings = json.loads((out / "provenance.json").read_text())["timings_s"]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages: dict[str, float] = {}
    for key, seconds in timings.items():
        stage = key.split("/", 1)[-1]
        stages[stage] = stages.get(stage, 0.0) + seconds
    print(f"{'stage':<28}{'seconds':>10}")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<28}{seconds:>10.2f}")
    print(f"{'total wall (incl. imports)':<28}{wall:>10.2f}   budget {BUDGET_S:.0f} s")
    print(f"peak RSS {rss_mib:.0f} MiB")
    return 0 if wall < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
