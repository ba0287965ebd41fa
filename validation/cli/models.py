"""List the dMRI models (built-in and plug-ins) and their capabilities."""

from __future__ import annotations

import argparse
import json

_FLAGS = (
    ("gives_odf", "odf"),
    ("gives_sh", "sh"),
    ("gives_peaks", "peaks"),
    ("multi_shell_only", "multi-shell"),
    ("needs_truth", "truth"),
    ("voxelwise", "voxelwise"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from validation.models import list_models

    infos = list_models()
    if args.json:
        rows = [
            {
                "name": i.name,
                "source": i.source,
                "target": i.target,
                "description": i.description,
                "capabilities": i.capabilities.to_dict() if i.capabilities else None,
                "params": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None)))
                           else v for k, v in i.params.items()},
                "error": i.error,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(i.name) for i in infos)
    print(f"{'name':<{width}}  {'source':<11}  capabilities / description")
    for i in infos:
        if i.capabilities is None:
            print(f"{i.name:<{width}}  {i.source:<11}  cannot be loaded: {i.error}")
            continue
        caps = i.capabilities.to_dict()
        flags = ",".join(short for key, short in _FLAGS if caps[key])
        print(f"{i.name:<{width}}  {i.source:<11}  [{flags}] {i.description}")
    return 0
