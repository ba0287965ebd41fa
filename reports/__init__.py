"""Reports from a run directory: HTML, figures, tables, diffs, gates. A leaf package
that reads files only and never recomputes a score."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


class ReportError(ValueError):
    """A run directory that cannot be reported on (missing files, other schema)."""


__all__ = [
    "SCHEMA_VERSION",
    "ReportError",
    "build_report",
    "diff_runs",
    "RunDiff",
    "check_gates",
    "Gate",
    "GateResult",
    "parse_gate",
    "load_run_dir",
]

_LAZY = {
    "build_report": "reports.build",
    "diff_runs": "reports.diff",
    "RunDiff": "reports.diff",
    "check_gates": "reports.gates",
    "Gate": "reports.gates",
    "GateResult": "reports.gates",
    "parse_gate": "reports.gates",
    "load_run_dir": "reports.rundir",
}


def __getattr__(name: str) -> Any:
    # keep `import reports` light (the CLI imports ReportError on every call):
    # matplotlib and pandas load only when a report is built
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
