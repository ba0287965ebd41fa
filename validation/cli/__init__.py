"""The ``xscale`` command line: one program, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and
has a one-line module docstring used as its help. Exit codes (design.md): 0 success,
1 a gate / check / regression failed, 2 user error (one line), 70 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 70

#: subcommand name -> module under validation.cli
SUBCOMMANDS: dict[str, str] = {
    "run": "run",
    "phantom": "phantom",
    "orient": "orient",
    "fod": "fod",
    "compare": "compare",
    "score-tractogram": "score_tractogram",
    "models": "models",
    "check-model": "check_model",
    "report": "report",
    "diff": "diff",
    "import-neuroglancer": "import_neuroglancer",
}


def _load(module_name: str):
    try:
        return importlib.import_module(f"validation.cli.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"validation.cli.{module_name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from validation import __version__

    parser = argparse.ArgumentParser(
        prog="xscale",
        description="Validate diffusion MRI against microscopy across scales.",
    )
    parser.add_argument("--version", action="version", version=f"xscale {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        helptext = doc[0] if doc else ""
        p = sub.add_parser(name, help=helptext, description=helptext, parents=[common])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from validation.errors import user_error_types

    parser = build_parser()
    args = parser.parse_args(argv)
    # progress messages on stderr; the run's own log file gets everything (rundir.py)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    from validation.rundir import LOGGER_NAMES

    for name in LOGGER_NAMES:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        code = args._module.run(args)
    except user_error_types() as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"xscale {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"xscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: exit 70, traceback on --debug / run.log
        if args.debug:
            traceback.print_exc()
        print(
            f"xscale {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
    finally:
        for name in LOGGER_NAMES:
            logging.getLogger(name).removeHandler(handler)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
