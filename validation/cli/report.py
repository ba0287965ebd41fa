"""Rebuild the report of a run directory from its files (never recomputing a score)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="run directory")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="report folder (default: RUN/report, replaced when it exists)",
    )


def run(args: argparse.Namespace) -> int:
    from reports import build_report

    index = build_report(args.run_dir, output=args.output)
    if not getattr(args, "quiet", False):
        print(index, file=sys.stdout)
    return 0
