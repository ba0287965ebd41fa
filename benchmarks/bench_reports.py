"""Budget: ``reports.build_report`` on a 5-case x 4-model run directory (with glyphs,
colour maps, tractography projections and per-voxel tables) takes under 60 s on 2 cores,
rebuilds byte-identically, and index.html stays under 5 MB; ``diff_runs`` and
``check_gates`` on it take under 5 s. The run directory is written by the test fixture
(tests/reports/conftest.py), so the numbers do not depend on the pipeline."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

BUILD_BUDGET_S = 60.0
DIFF_BUDGET_S = 5.0
HTML_BUDGET_MB = 5.0

HERE = Path(__file__).resolve().parent


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def main() -> int:
    sys.path.insert(0, str(HERE.parent / "tests" / "reports"))
    from conftest import DEFAULT_MODELS, write_run  # the tests' run-directory writer

    from reports import build_report, check_gates, diff_runs

    models = [dict(m) for m in DEFAULT_MODELS] + [{
        "label": "gqi", "name": "gqi", "display_name": "GQI",
        "params": {"noise_deg": 6.0}, "capabilities": {"odf": True},
    }]
    cases = [{"case": f"angle-{a}", "crossing_angle_deg": float(a), "snr": 30.0}
             for a in (30, 45, 60, 75, 90)]
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run", models=models, cases=cases,
                        with_tractography=True)
        start = time.perf_counter()
        index = build_report(run)
        build_s = time.perf_counter() - start
        first = _files(index.parent)
        start = time.perf_counter()
        build_report(run)
        rebuild_s = time.perf_counter() - start
        identical = first == _files(index.parent)
        html_mb = index.stat().st_size / 1e6
        n_figures = len(list((index.parent / "figures").glob("*.png")))
        start = time.perf_counter()
        diff = diff_runs(run, run)
        check_gates(run, {"csd8:peak_f1.median": ">= 0.5", "gqi:acc.rank": "<= 4"})
        diff_s = time.perf_counter() - start
    rows.append(("build_report (s)", f"{build_s:.1f}", f"< {BUILD_BUDGET_S:.0f}",
                 build_s < BUILD_BUDGET_S))
    rows.append(("rebuild (s)", f"{rebuild_s:.1f}", f"< {BUILD_BUDGET_S:.0f}",
                 rebuild_s < BUILD_BUDGET_S))
    rows.append(("rebuild byte-identical", str(identical), "True", identical))
    rows.append(("index.html (MB)", f"{html_mb:.2f}", f"< {HTML_BUDGET_MB:.0f}",
                 html_mb < HTML_BUDGET_MB))
    rows.append(("figures", str(n_figures), ">= 18", n_figures >= 18))
    rows.append(("diff + gates (s)", f"{diff_s:.2f}", f"< {DIFF_BUDGET_S:.0f}",
                 diff_s < DIFF_BUDGET_S and not diff.has_regression))
    print(f"{'measure':<26}{'value':>10}  {'target':<8}")
    for name, value, target, met in rows:
        print(f"{name:<26}{value:>10}  {target:<8}{'' if met else '  MISSED'}")
        ok = ok and met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
