"""Import a Neuroglancer viewer state (OME-Zarr layers + transforms) into a dataset manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from validation.errors import UserError


def _voxel_size(text: str) -> tuple[str, list[float]]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=UM or NAME=UM,UM,UM")
    try:
        sizes = [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    if len(sizes) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 voxel sizes in um")
    return name, sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state", type=Path, metavar="STATE.json", help="Neuroglancer viewer state")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="manifest.toml",
                        help="manifest to write")
    parser.add_argument("--voxel-size", action="append", default=[], type=_voxel_size,
                        metavar="NAME=UM",
                        help="voxel size (um; 1 or 3 comma-separated values) of a layer whose "
                             "OME-Zarr is not reachable; overrides a size in its name "
                             "(repeatable)")
    parser.add_argument("--dwi", type=Path, default=None,
                        help="DWI NIfTI to put in [dmri] (bval/bvec beside it)")
    parser.add_argument("--mask", type=Path, default=None, help="brain mask on the DWI grid")
    parser.add_argument("--to-dmri", action="append", default=[], type=Path, metavar="TRANSFORM",
                        help="transform file from the Neuroglancer global space to dMRI world, "
                             "appended to every level's chain (repeatable, in order)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out levels without a voxel size instead of failing")
    parser.add_argument("--check", action="store_true",
                        help="load the dataset before writing (local sources only): any bad "
                             "input is an error and nothing is written")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")


def run(args: argparse.Namespace) -> int:
    import os

    from validation.manifest import write_manifest
    from validation.neuroglancer import import_neuroglancer_state

    output: Path = args.output
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: exists already; pass --overwrite to replace it")
    sizes = dict(args.voxel_size)
    imported = import_neuroglancer_state(args.state, voxel_sizes=sizes)
    out_dir = output.parent if str(output.parent) else Path(".")

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), out_dir.resolve())

    extra = [p for p in (args.dwi, args.mask) if p is not None]
    for path in [*args.to_dmri, *extra]:
        if not path.exists():
            raise UserError(f"{path}: file not found")
    if args.mask is not None and args.dwi is None:
        raise UserError("--mask needs --dwi")
    dmri = {"dwi": rel(args.dwi)} if args.dwi is not None else None
    if dmri is not None and args.mask is not None:
        dmri["mask"] = rel(args.mask)
    manifest = imported.to_manifest(
        manifest_dir=out_dir.resolve(), dmri=dmri, to_dmri=[rel(p) for p in args.to_dmri],
        skip_missing=args.skip_missing,
    )
    if args.check:
        import uuid

        from validation.manifest import load_dataset

        # the manifest's relative paths need its folder: check it there, then rename
        created = [d for d in (output.resolve(), *output.resolve().parents) if not d.exists()]
        tmp = output.with_name(f".{output.name}.check-{uuid.uuid4().hex[:8]}")
        ok = False
        try:
            write_manifest(tmp, manifest)
            load_dataset(tmp)
            if output.exists() and not args.overwrite:
                raise UserError(f"{output}: exists already; pass --overwrite to replace it")
            os.replace(tmp, output)
            ok = True
        finally:
            tmp.unlink(missing_ok=True)
            if not ok:
                for folder in created[1:]:  # remove the folders made for the check
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
    else:
        write_manifest(output, manifest, overwrite=args.overwrite)
    if not args.quiet:
        for level in imported.levels:
            size = (
                "no voxel size (skipped)" if level.voxel_size_um is None
                else f"{level.voxel_size_um[0]:g} um from {level.voxel_size_from}"
            )
            transform = "matrix" if level.matrix is not None else "no transform"
            print(f"{level.name}: {size}, {transform}", file=sys.stderr)
        for note in imported.skipped:
            print(f"skipped {note}", file=sys.stderr)
        print(f"wrote {output} ({len(manifest['microscopy'])} levels)", file=sys.stderr)
    return 0
