"""Tractograms (TRK, TCK, TRX, via dipy's StatefulTractogram) and ground-truth bundle
definitions (scilpy-style JSON configs or a phantom truth folder) for score-tractogram.

Streamlines come back in voxel coordinates of the truth grid with voxel centres at
integers (dipy ``Space.VOX``, ``Origin.NIFTI``), the coordinates
:func:`metrics.tractometer` expects.

A scilpy-style config (``scil_tractogram_segment_with_ROI_and_score``) maps bundle
names to entries with the keys ``gt_mask``, ``head`` and ``tail`` (or one
``endpoints`` file split into two ROIs), optional ``all_mask`` (also ``limits_mask``),
``any_mask``, ``length`` ``[min, max]`` in mm and ``angle`` (maximal winding angle in
degrees); ``std`` (a scilpy clustering option) is accepted and ignored. Relative paths
are resolved against ``gt_dir`` or else the config's folder. A phantom truth folder
(``xscale phantom``) holds ``bundles.json`` in that format (also found as
``truth/bundles.json`` below the given folder).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["TruthBundles", "load_streamlines", "read_truth_bundles", "split_endpoints"]

_KNOWN_KEYS = {"gt_mask", "head", "tail", "endpoints", "all_mask", "limits_mask", "any_mask",
               "length", "angle", "std"}


@dataclass(frozen=True)
class TruthBundles:
    """Ground-truth bundles on one grid.

    Attributes
    ----------
    bundles : list of metrics.BundleDefinition
    affine : ndarray (4, 4)
        Voxel -> world (RAS+ mm) of the truth grid.
    shape : tuple of 3 int
    voxel_size : ndarray (3,)
        mm.
    reference : Path
        A NIfTI file on that grid (for tractograms without a header, TCK).
    """

    bundles: list
    affine: np.ndarray
    shape: tuple[int, int, int]
    voxel_size: np.ndarray
    reference: Path


def split_endpoints(mask: np.ndarray, *, rng: Any = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split one endpoint mask into two ROIs (head, tail).

    Two connected components (26-connectivity) are the two ROIs (the one containing the
    lowest voxel index first); otherwise the voxels are split by 2-means on their
    coordinates (seeded, as scilpy splits heads and tails).
    """
    from scipy import ndimage
    from scipy.cluster.vq import kmeans2

    m = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    if n == 2:
        return labels == 1, labels == 2
    coords = np.argwhere(m).astype(np.float64)
    if len(coords) < 2:
        raise UserError("endpoints mask has fewer than two voxels; cannot split head and tail")
    _, assign = kmeans2(coords, 2, minit="++", seed=np.random.default_rng(rng))
    head = np.zeros_like(m)
    tail = np.zeros_like(m)
    first = assign[0]
    head[tuple(coords[assign == first].astype(int).T)] = True
    tail[tuple(coords[assign != first].astype(int).T)] = True
    if not tail.any():
        raise UserError("endpoints mask could not be split into two ROIs")
    return head, tail


def _find_config(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "bundles.json", path / "truth" / "bundles.json"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path}: no bundles.json (or truth/bundles.json) in this folder")
    raise FileNotFoundError(f"{path}: no such file or folder")


def read_truth_bundles(path: str | os.PathLike, *, gt_dir: str | os.PathLike | None = None,
                       ) -> TruthBundles:
    """Read ground-truth bundles from a scilpy-style JSON config or a phantom truth folder.

    Parameters
    ----------
    path : path-like
        The JSON config, or a folder holding ``bundles.json`` / ``truth/bundles.json``.
    gt_dir : path-like, optional
        Folder that relative paths in the config are relative to (scilpy's
        ``--gt_dir``); default the config's folder.

    Returns
    -------
    TruthBundles

    Raises
    ------
    UserError
        Unknown keys, missing ROIs, masks on different grids, malformed limits.
    """
    from metrics import BundleDefinition
    from validation.io.nifti import load_nifti

    config_path = _find_config(Path(path))
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not config:
        raise UserError(f"{config_path}: expected an object of bundle name -> definition")
    base = Path(gt_dir) if gt_dir is not None else config_path.parent
    grid: dict[str, Any] = {}

    def volume(entry_name: str, key: str, value: Any) -> np.ndarray:
        if not isinstance(value, str):
            raise UserError(f"{config_path}: bundle {entry_name!r} {key} must be a file path")
        file = Path(value) if Path(value).is_absolute() else base / value
        img = load_nifti(file)
        if img.data.ndim != 3:
            raise UserError(f"{file}: {key} mask must be 3-D, got shape {img.data.shape}")
        if not grid:
            grid.update(affine=img.affine, shape=img.data.shape, voxel_size=img.voxel_size,
                        reference=file)
        elif img.data.shape != grid["shape"] or not np.allclose(img.affine, grid["affine"],
                                                                atol=1e-4):
            raise UserError(f"{file}: {key} mask is on another grid than {grid['reference']}")
        return np.asarray(img.data) != 0

    bundles = []
    for name, entry in config.items():
        if not isinstance(entry, dict):
            raise UserError(f"{config_path}: bundle {name!r} must be an object")
        unknown = sorted(set(entry) - _KNOWN_KEYS)
        if unknown:
            raise UserError(f"{config_path}: bundle {name!r} has unknown key(s) "
                            f"{', '.join(unknown)}")
        if "endpoints" in entry:
            if "head" in entry or "tail" in entry:
                raise UserError(f"{config_path}: bundle {name!r} gives both endpoints and "
                                "head/tail")
            head, tail = split_endpoints(volume(name, "endpoints", entry["endpoints"]))
        elif "head" in entry and "tail" in entry:
            head = volume(name, "head", entry["head"])
            tail = volume(name, "tail", entry["tail"])
        else:
            raise UserError(f"{config_path}: bundle {name!r} needs head and tail (or endpoints)")
        if "all_mask" in entry and "limits_mask" in entry:
            raise UserError(f"{config_path}: bundle {name!r} gives both all_mask and limits_mask")
        all_key = "all_mask" if "all_mask" in entry else "limits_mask"
        length = entry.get("length")
        if length is not None:
            if (not isinstance(length, list) or len(length) != 2
                    or not all(isinstance(v, int | float) for v in length)
                    or length[0] > length[1]):
                raise UserError(f"{config_path}: bundle {name!r} length must be [min, max] mm")
        angle = entry.get("angle")
        if angle is not None and (not isinstance(angle, int | float) or angle <= 0):
            raise UserError(f"{config_path}: bundle {name!r} angle must be a positive number")
        bundles.append(
            BundleDefinition(
                name=str(name),
                head=head,
                tail=tail,
                mask=volume(name, "gt_mask", entry["gt_mask"]) if "gt_mask" in entry else None,
                all_mask=volume(name, all_key, entry[all_key]) if all_key in entry else None,
                any_mask=volume(name, "any_mask", entry["any_mask"]) if "any_mask" in entry
                else None,
                length_mm=None if length is None else (float(length[0]), float(length[1])),
                max_angle_deg=None if angle is None else float(angle),
            )
        )
    nx, ny, nz = (int(s) for s in grid["shape"])
    return TruthBundles(bundles, grid["affine"], (nx, ny, nz),
                        np.asarray(grid["voxel_size"], float), Path(grid["reference"]))


def load_streamlines(path: str | os.PathLike, reference: str | os.PathLike | None, *,
                     remove_invalid: bool = False):
    """Load a TRK, TCK or TRX tractogram in voxel coordinates of ``reference``'s grid.

    Parameters
    ----------
    path : path-like
        ``.trk``, ``.tck``, ``.trx`` (or other formats dipy's ``load_tractogram`` reads).
    reference : path-like or None
        NIfTI image defining the scoring grid (voxel centres at integers). Required for
        TCK (which has no grid); None for TRK / TRX uses the file's own header.
    remove_invalid : bool
        Drop streamlines with points outside the reference's field of view (logged with
        their number; scilpy's ``--remove_invalid``) instead of refusing the file.

    Returns
    -------
    nibabel ArraySequence
        Streamlines as (n_i, 3) voxel coordinates.

    Raises
    ------
    FileNotFoundError
        No such file.
    UserError
        A TCK without reference, an unreadable file, a tractogram without streamlines,
        streamlines outside the field of view (how many; unless ``remove_invalid``).
    """
    from dipy.io.stateful_tractogram import Origin, Space
    from dipy.io.streamline import load_tractogram

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if reference is None:
        if p.suffix.lower() == ".tck":
            raise UserError(f"{p}: a TCK file has no image grid; give a reference image on "
                            "the scoring grid (--reference NIFTI)")
        reference = "same"
    try:
        sft = load_tractogram(str(p), str(reference), to_space=Space.VOX,
                              to_origin=Origin.NIFTI, bbox_valid_check=False,
                              trk_header_check=False)
    except Exception as exc:  # dipy / nibabel raise many types for unreadable files
        raise UserError(f"{p}: not a readable tractogram ({type(exc).__name__}: {exc})") from None
    streamlines = sft.streamlines
    n = len(streamlines)
    if n == 0:
        raise UserError(f"{p}: the tractogram has no streamlines")
    inside = _inside_field_of_view(streamlines, np.asarray(sft.dimensions, dtype=np.float64))
    n_out = int(n - inside.sum())
    if n_out:
        where = "its header" if str(reference) == "same" else Path(reference).name
        dims = "x".join(str(int(d)) for d in sft.dimensions)
        if not remove_invalid:
            raise UserError(
                f"{p}: {n_out} of {n} streamlines lie (partly) outside the field of view of "
                f"{where} ({dims} voxels); check --reference, or drop them with "
                "--remove-invalid")
        log.warning("%s: removed %d of %d streamlines outside the field of view of %s",
                    p, n_out, n, where)
        if n_out == n:
            raise UserError(f"{p}: all {n} streamlines lie outside the field of view of "
                            f"{where} ({dims} voxels)")
        sft = sft[np.flatnonzero(inside)]
    return sft.streamlines


def _inside_field_of_view(streamlines, dimensions: np.ndarray) -> np.ndarray:
    """Per streamline (voxel coordinates, centres at integers): True when every point
    lies in the grid's field of view, ``-0.5 <= p < dim - 0.5`` on each axis (dipy's
    bounding-box check). Streamlines without points count as outside."""
    lengths = np.asarray(streamlines._lengths, dtype=np.int64)
    offsets = np.asarray(streamlines._offsets, dtype=np.int64)
    data = np.asarray(streamlines._data)  # no copy (ArraySequence.get_data() copies)
    bad_point = np.zeros(len(data), dtype=bool)
    upper = dimensions - 0.5
    chunk = 1 << 20
    for start in range(0, len(data), chunk):
        block = data[start:start + chunk].astype(np.float64)
        bad_point[start:start + chunk] = np.any((block < -0.5) | (block >= upper), axis=1)
    nonempty = lengths > 0
    inside = np.zeros(len(lengths), dtype=bool)
    if not nonempty.any():
        return inside
    starts = offsets[nonempty]
    ends = starts + lengths[nonempty]
    if np.array_equal(starts[1:], ends[:-1]) and ends[-1] == len(data):  # compact
        inside[nonempty] = ~np.logical_or.reduceat(bad_point, starts)
    else:
        inside[nonempty] = [not bad_point[o:e].any() for o, e in zip(starts, ends, strict=True)]
    return inside
