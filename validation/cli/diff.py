"""Compare the main scores of two runs; flag regressions (worse, CIs not overlapping)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from validation.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", type=Path, help="baseline run directory")
    parser.add_argument("run_b", metavar="RUN_B", type=Path, help="run directory to compare")
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when a score regressed (worse, 95%% CIs not overlapping)",
    )
    parser.add_argument("--html", type=Path, default=None, metavar="OUT",
                        help="also write the comparison as a self-contained HTML page")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also list the scores that changed within their CIs")


def _write_atomic(path: Path, text: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--html {path}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(args: argparse.Namespace) -> int:
    from reports import diff_runs

    result = diff_runs(args.run_a, args.run_b)
    sys.stdout.write(result.to_text(verbose=args.verbose))
    if args.html is not None:
        _write_atomic(args.html, result.to_html())
    if args.fail_on_regression and result.has_regression:
        n = len(result.regressions)
        print(f"xscale diff: {n} regression{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    return 0
