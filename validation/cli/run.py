"""Run the whole benchmark (no config: the built-in default suite) and write a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from validation.cli import EXIT_FAILED_CHECK, EXIT_INTERNAL_ERROR, EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path, metavar="CONFIG.toml",
                        help="run config (default: the built-in default benchmark)")
    parser.add_argument("-o", "--output", type=Path, metavar="RUN_DIR",
                        help="run directory (default: ./xscale-runs/<run name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory once the new run is complete")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="processes for model fitting and chunked steps (default 1)")
    parser.add_argument("--gate", action="append", default=[], metavar="COND",
                        help="condition that must hold, e.g. 'csd:peak_f1.median>=0.8' "
                             "(repeatable; adds to [gates] of the config)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="content-hash cache of model fits and microscopy FODs "
                        "(default: no cache)")
    parser.add_argument("--no-report", action="store_true", help="skip building the report")


def run(args: argparse.Namespace) -> int:
    from validation.config import resolve_config
    from validation.errors import user_error_types
    from validation.runner import run as run_benchmark

    cfg = resolve_config(args.config)
    # config gates are {"label:metric.statistic": "<= 15"}; --gate gives the whole condition
    gates = [f"{key}{cond}" for key, cond in cfg["gates"].items()] + list(args.gate)
    if gates:
        from validation.gates import parse_gate

        for text in gates:
            parse_gate(text)  # a malformed gate is a user error before any work is done
    try:
        result = run_benchmark(
            cfg if args.config is None else args.config,
            output=args.output,
            overwrite=args.overwrite,
            jobs=args.jobs,
            progress=not args.quiet and sys.stderr.isatty(),
            cache_dir=args.cache_dir,
            build_report=not args.no_report,
        )
    except user_error_types():
        raise
    except Exception as exc:
        failed = getattr(exc, "xscale_failed_run", None)
        where = f"; traceback in {failed / 'run.log'}" if failed else ""
        print(f"xscale run: internal error: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        if args.debug:
            raise
        return EXIT_INTERNAL_ERROR

    n_fail = len(result.failures)
    if not args.quiet:
        print(f"xscale run: {len(result.cases)} cases, "
              f"{result.scores['model'].nunique() if len(result.scores) else 0} sources scored, "
              f"{n_fail} failure(s)", file=sys.stderr)
    print(f"Run directory: {result.path.resolve()}")
    report = result.path / "report" / "index.html"
    if report.is_file():
        print(f"Report: {report.resolve()}")
    if gates:
        from validation.gates import evaluate

        ok, messages = evaluate(result.path, gates)
        for line in messages:
            print(line, file=sys.stderr if not ok else sys.stdout)
        if not ok:
            return EXIT_FAILED_CHECK
    return EXIT_OK
