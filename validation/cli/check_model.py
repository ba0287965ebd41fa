"""Check a dMRI model against the plug-in contract on a tiny phantom (exit 1 on problems)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="NAME|DOTTED",
                        help="registry name or 'package.module:factory'")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="hyper-parameter (VALUE parsed as JSON, else a string); repeatable")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="limit for each fit, seconds (default 120)")
    parser.add_argument("--jobs", type=int, default=1, help="processes for the fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom's noise")


def _params(items: list[str]) -> dict:
    from validation.errors import UserError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param {item!r} is not of the form KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def run(args: argparse.Namespace) -> int:
    from validation.errors import UserError
    from validation.models import check_params
    from validation.models.conformance import check_model

    if args.timeout_s <= 0:
        raise UserError(f"--timeout-s must be positive, got {args.timeout_s}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    params = _params(args.param)
    check_params(args.model, params)
    report = check_model(args.model, params, timeout_s=args.timeout_s, jobs=args.jobs,
                         seed=args.seed)
    print(report.to_text())
    return 0 if report.ok else 1
