"""The dataset manifest (``manifest.toml``): read, validate, write, and load a dataset.

A manifest describes one dataset: the dMRI (NIfTI + bval/bvec, or a BIDS dwi file),
its mask and ROI labels, any number of microscopy levels, each with a transform chain
to dMRI space, and optional ground truth. Paths are relative to the manifest's folder.

.. code-block:: toml

    [dataset]                    # optional
    name = "brain1"
    description = "..."

    [dmri]
    dwi = "dwi.nii.gz"           # bval/bvec beside it (same stem) unless given
    bval = "dwi.bval"            # optional
    bvec = "dwi.bvec"            # optional (FSL convention, see validation.io.gradients)
    mask = "mask.nii.gz"         # optional, same grid as dwi
    labels = "labels.nii.gz"     # optional ROI labels (integers), same grid
    b0_threshold = 50.0          # optional, s/mm^2

    [[microscopy]]
    name = "hipct-4um"
    path = "hipct.ome.zarr"      # OME-Zarr, TIFF (file or folder of slices) or NIfTI
    level = 0                    # pyramid level (OME-Zarr)
    voxel_size_um = [4.257, 4.257, 4.257]   # per array axis; when the file has none
    transform = [                # microscopy world mm -> dMRI world mm, applied in order
        "micro_to_block.txt",                         # 4x4 text matrix (RAS mm)
        { path = "block_to_dmri.mat", invert = true }, # ITK/ANTs (fixed = dMRI)
        { matrix = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] },
        { neuroglancer = { matrix = [[...]], output_dimensions = { x = [1e-5, "m"], ... } } },
    ]

    [truth]                      # optional
    peaks = "truth_peaks.nii.gz"
    bundles = "bundles.json"

The microscopy *world* frame of a level (what its transform chain starts from) is
physical millimetres with components (x, y, z): for an OME-Zarr image the NGFF
``scale`` and ``translation`` of the level (voxel centres), its axes matched by name
(``x``, ``y``, ``z``; unnamed axes are taken in reverse array order, as for TIFF
(z, y, x) stacks); for NIfTI, the image affine. :attr:`MicroscopyLevel.voxel_to_world`
holds that map; :attr:`MicroscopyLevel.voxel_to_dmri` the whole affine when the chain
is affine (what ``validation.fod.microscopy_fod`` takes as ``microscopy_affine``).
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import ConfigError, UserError
from validation.io.gradients import (
    B0_THRESHOLD,
    Gradients,
    default_gradient_paths,
    read_bvals_bvecs,
)
from validation.transforms import (
    AffineTransform,
    CompositeTransform,
    Transform,
    TransformError,
    load_transform,
    neuroglancer_affine,
)

__all__ = [
    "Dataset",
    "MicroscopyLevel",
    "dumps_manifest",
    "load_dataset",
    "load_microscopy_level",
    "microscopy_overlap",
    "read_manifest",
    "transform_chain",
    "voxel_to_world",
    "write_manifest",
    "write_microscopy_level",
]

log = logging.getLogger(__name__)

_TOP = {"dataset", "dmri", "microscopy", "truth"}
_DATASET_KEYS: dict[str, type] = {"name": str, "description": str, "conditions": dict}
_DMRI_KEYS: dict[str, type] = {
    "dwi": str, "bval": str, "bvec": str, "mask": str, "labels": str, "b0_threshold": float,
}
_MICRO_KEYS: dict[str, Any] = {
    "name": str, "path": str, "level": int, "voxel_size_um": (list, float, int),
    "transform": list,
    "description": str, "source": str,
    "mask": str,  # tissue mask volume (non-zero = tissue), same shape as the level
    "landmarks": str,  # paired landmarks CSV (validation.landmarks), placement by fit
    "landmark_transform": str,  # "rigid", "similarity" or "affine"
}
_TRUTH_KEYS: dict[str, type] = {
    "peaks": str, "fractions": str, "nufo": str, "mask": str, "fod_sh": str, "bundles": str,
    "tractogram": str, "labels": str, "case": str,
}
_TRANSFORM_KEYS = {"path", "format", "invert", "matrix", "neuroglancer"}
_NG_KEYS = {"matrix", "output_dimensions", "input_dimensions"}


# --------------------------------------------------------------------------- schema


def _unknown(key: str, allowed: Any, where: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"{source}: unknown key '{key}' in {where}{hint}; allowed: {', '.join(sorted(allowed))}"
    )


def _check_table(table: Any, schema: Mapping[str, Any], where: str, source: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where} must be a table")
    out = {}
    for key, value in table.items():
        if key not in schema:
            raise _unknown(key, schema, where, source)
        kind = schema[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ConfigError(f"{source}: {where} {key} = {value!r} should be a {wanted}")
        out[key] = value
    return out


def _check_voxel_size(value: Any, where: str, source: str) -> list[float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * 3
    try:
        sizes = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {where} voxel_size_um = {value!r} is not 3 numbers") from None
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise ConfigError(
            f"{source}: {where} voxel_size_um = {value!r} must be 3 finite positive numbers"
        )
    return sizes


def _check_transform_entry(entry: Any, where: str, source: str) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"path": entry, "invert": False}
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: {where} must be a path or a table, not {entry!r}")
    for key in entry:
        if key not in _TRANSFORM_KEYS:
            raise _unknown(key, _TRANSFORM_KEYS, where, source)
    kinds = [k for k in ("path", "matrix", "neuroglancer") if k in entry]
    if len(kinds) != 1:
        raise ConfigError(f"{source}: {where} needs exactly one of path, matrix, neuroglancer")
    out = dict(entry)
    out["invert"] = entry.get("invert", False)
    if not isinstance(out["invert"], bool):
        raise ConfigError(f"{source}: {where} invert = {out['invert']!r} should be true or false")
    if "format" in entry and "path" not in entry:
        raise ConfigError(f"{source}: {where} format is only for a path")
    if "matrix" in entry:
        try:
            m = np.asarray(entry["matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {where} matrix is not a table of numbers") from None
        if m.shape not in ((4, 4), (3, 4)):
            raise ConfigError(f"{source}: {where} matrix of shape {m.shape} is not 4x4 or 3x4")
    if "neuroglancer" in entry:
        ng = entry["neuroglancer"]
        if not isinstance(ng, dict):
            raise ConfigError(f"{source}: {where} neuroglancer must be a table")
        for key in ng:
            if key not in _NG_KEYS:
                raise _unknown(key, _NG_KEYS, f"{where} neuroglancer", source)
        for key in ("matrix", "output_dimensions"):
            if key not in ng:
                raise ConfigError(f"{source}: {where} neuroglancer needs {key}")
    return out


def validate_manifest(data: Any, *, source: str = "manifest") -> dict[str, Any]:
    """Check a parsed manifest's structure (not its files) and return it normalised.

    Raises :class:`~validation.errors.ConfigError` naming ``source``, the key and the
    problem (unknown keys, wrong types, missing names, repeated level names).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a manifest must be a TOML table")
    for key in data:
        if key not in _TOP:
            raise _unknown(key, _TOP, "the top level", source)
    out: dict[str, Any] = {}
    if "dataset" in data:
        out["dataset"] = _check_table(data["dataset"], _DATASET_KEYS, "[dataset]", source)
    if "dmri" in data:
        dmri = _check_table(data["dmri"], _DMRI_KEYS, "[dmri]", source)
        if "dwi" not in dmri:
            raise ConfigError(f"{source}: [dmri] needs dwi (the diffusion-weighted NIfTI)")
        dmri.setdefault("b0_threshold", B0_THRESHOLD)
        if not dmri["b0_threshold"] >= 0:
            raise ConfigError(f"{source}: [dmri] b0_threshold must be >= 0")
        out["dmri"] = dmri
    levels = data.get("microscopy", [])
    if not isinstance(levels, list):
        raise ConfigError(f"{source}: microscopy must be an array of tables ([[microscopy]])")
    out_levels = []
    names: set[str] = set()
    for i, raw in enumerate(levels, start=1):
        where = f"[[microscopy]] entry {i}"
        level = _check_table(raw, _MICRO_KEYS, where, source)
        for key in ("name", "path"):
            if key not in level:
                raise ConfigError(f"{source}: {where} needs {key}")
        if level["name"] in names:
            raise ConfigError(f"{source}: microscopy name {level['name']!r} is repeated")
        names.add(level["name"])
        where = f"microscopy {level['name']!r}"
        level.setdefault("level", 0)
        if level["level"] < 0:
            raise ConfigError(f"{source}: {where} level = {level['level']} must be >= 0")
        if "voxel_size_um" in level:
            level["voxel_size_um"] = _check_voxel_size(level["voxel_size_um"], where, source)
        if "transform" not in level:
            raise ConfigError(
                f"{source}: {where} needs transform (a chain to dMRI space; [] if the "
                "microscopy world is the dMRI world)"
            )
        level["transform"] = [
            _check_transform_entry(t, f"{where} transform {j}", source)
            for j, t in enumerate(level["transform"], start=1)
        ]
        out_levels.append(level)
    out["microscopy"] = out_levels
    if "truth" in data:
        out["truth"] = _check_table(data["truth"], _TRUTH_KEYS, "[truth]", source)
    if "dmri" not in out and not out_levels:
        raise ConfigError(f"{source}: the manifest has neither [dmri] nor [[microscopy]]")
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``manifest.toml`` (structure only; see :func:`load_dataset`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.toml"
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate_manifest(data, source=str(path))


def _compact(manifest: dict[str, Any]) -> dict[str, Any]:
    """Drop defaults that need not be written (invert = false on path entries)."""
    out = {k: v for k, v in manifest.items() if k != "microscopy"}
    levels = []
    for level in manifest.get("microscopy", []):
        level = dict(level)
        chain = []
        for t in level["transform"]:
            if set(t) <= {"path", "invert"} and not t.get("invert", False):
                chain.append(t["path"])
            else:
                chain.append({k: v for k, v in t.items() if not (k == "invert" and not v)})
        level["transform"] = chain
        levels.append(level)
    if levels:
        out["microscopy"] = levels
    return out


def dumps_manifest(manifest: dict[str, Any]) -> str:
    """The TOML text of a (validated) manifest."""
    import tomli_w

    clean = _compact(validate_manifest(manifest))

    def _plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: _plain(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [_plain(v) for v in obj]
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return tomli_w.dumps(_plain(clean))


def write_manifest(
    path: str | os.PathLike, manifest: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Validate and write a manifest atomically (temporary sibling, then rename).

    Raises :class:`UserError` when ``path`` exists and ``overwrite`` is false, and
    :class:`ConfigError` for an invalid manifest (nothing is written then).
    """
    path = Path(path)
    text = dumps_manifest(manifest)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists already; pass overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------- dataset


@dataclass
class MicroscopyLevel:
    """One microscopy level of a dataset.

    Attributes
    ----------
    name : str
    path : str
        The volume's location.
    level : int
        Pyramid level.
    volume : dask.array.Array
        The image, array order as on disk ((Z, Y, X) for OME-Zarr/TIFF, (I, J, K) for
        NIfTI); integers are not rescaled.
    spacing_um : tuple of 3 float
        Voxel size per array axis, micrometres.
    voxel_to_world : ndarray (4, 4)
        Array index (voxel centre) -> microscopy world mm (x, y, z).
    transform : Transform
        Microscopy world mm -> dMRI world mm (the manifest chain).
    overlap_fraction : float or None
        Fraction of the volume inside the dMRI field of view (None without dMRI).
    axis_names : tuple of str
        Names of the array axes.
    """

    name: str
    path: str
    level: int
    volume: Any
    spacing_um: tuple[float, float, float]
    voxel_to_world: np.ndarray
    transform: Transform
    overlap_fraction: float | None = None
    axis_names: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.volume.shape)

    @property
    def voxel_to_dmri(self) -> np.ndarray | None:
        """Microscopy voxel -> dMRI world mm (4, 4) when the chain is affine, else None."""
        if not self.transform.is_affine:
            return None
        return self.transform.as_affine() @ self.voxel_to_world

    def local_voxel_to_dmri(self, ijk: Any) -> np.ndarray:
        """First-order voxel -> dMRI world affine (4, 4) around microscopy voxel ``ijk``.

        Equals :attr:`voxel_to_dmri` for affine chains; for a displacement field it is
        exact to first order near ``ijk``, so ``validation.fod.microscopy_fod`` can run
        chunk by chunk with the local affine of each chunk's centre (offset by the
        chunk's start index).
        """
        from validation.transforms import linearise

        centre = np.asarray(ijk, dtype=np.float64).reshape(3)
        world = self.voxel_to_world[:3, :3] @ centre + self.voxel_to_world[:3, 3]
        return linearise(self.transform, world).as_affine() @ self.voxel_to_world

    def voxels_to_dmri(self, ijk: Any) -> np.ndarray:
        """Map microscopy voxel coordinates (..., 3) to dMRI world mm (..., 3)."""
        pts = np.asarray(ijk, dtype=np.float64)
        world = pts @ self.voxel_to_world[:3, :3].T + self.voxel_to_world[:3, 3]
        return self.transform.apply_points(world)


@dataclass
class Dataset:
    """A loaded dataset (see :func:`load_dataset`).

    Attributes
    ----------
    path : Path
        The manifest file.
    manifest : dict
        The validated manifest.
    dwi : ndarray (X, Y, Z, N) float32 or None
    affine : ndarray (4, 4) or None
        dMRI voxel -> world mm (RAS+).
    gradients : Gradients or None
        b-values (s/mm^2) and b-vectors in the (i, j, k) frame of ``dwi``.
    mask : ndarray (X, Y, Z) bool or None
    labels : ndarray (X, Y, Z) int or None
    microscopy : list of MicroscopyLevel
    truth : dict of str -> Path
    """

    path: Path
    manifest: dict[str, Any]
    dwi: np.ndarray | None = None
    affine: np.ndarray | None = None
    gradients: Gradients | None = None
    mask: np.ndarray | None = None
    labels: np.ndarray | None = None
    microscopy: list[MicroscopyLevel] = field(default_factory=list)
    truth: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.manifest.get("dataset", {}).get("name", self.path.parent.name))

    @property
    def bvals(self) -> np.ndarray | None:
        """b-values (N,), s/mm^2."""
        return None if self.gradients is None else self.gradients.bvals

    @property
    def bvecs(self) -> np.ndarray | None:
        """Unit b-vectors (N, 3) along the dMRI array axes (zero rows for b0)."""
        return None if self.gradients is None else self.gradients.bvecs

    @property
    def grid_shape(self) -> tuple[int, int, int] | None:
        if self.dwi is None:
            return None
        return tuple(int(s) for s in self.dwi.shape[:3])  # type: ignore[return-value]

    def level(self, name: str) -> MicroscopyLevel:
        """The microscopy level called ``name``."""
        for lvl in self.microscopy:
            if lvl.name == name:
                return lvl
        names = ", ".join(lvl.name for lvl in self.microscopy) or "none"
        raise UserError(f"{self.path}: no microscopy level {name!r} (levels: {names})")


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def _check_grid_affine(affine: Any, where: str) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise UserError(f"{where}: affine is not a finite 4x4 matrix")
    det = float(np.linalg.det(a[:3, :3]))
    if abs(det) < 1e-12:
        raise UserError(f"{where}: affine is singular (det of its 3x3 part = {det:g})")
    return a


def _load_nifti(path: Path, where: str) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{where} {str(path)!r}: file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:
        raise UserError(f"{where} {str(path)!r}: cannot read NIfTI ({exc})") from None


def _load_aux(path: Path, shape: tuple[int, ...], affine: np.ndarray, where: str) -> np.ndarray:
    img = _load_nifti(path, where)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != shape:
        raise UserError(
            f"{where} {str(path)!r}: shape {data.shape} does not match the DWI grid {shape}"
        )
    aff = _check_grid_affine(img.affine, f"{where} {str(path)!r}")
    if not np.allclose(aff, affine, atol=1e-3):
        worst = float(np.abs(aff - affine).max())
        raise UserError(
            f"{where} {str(path)!r}: affine differs from the DWI's (max difference {worst:.3g})"
        )
    if not np.all(np.isfinite(data)):
        raise UserError(f"{where} {str(path)!r}: holds NaN or Inf values")
    return data


def _load_dmri(
    dmri: dict[str, Any], base: Path, source: str, *, check_data: bool
) -> tuple[np.ndarray, np.ndarray, Gradients, np.ndarray | None, np.ndarray | None]:
    dwi_path = _resolve(base, dmri["dwi"])
    img = _load_nifti(dwi_path, f"{source}: [dmri] dwi")
    where = f"{source}: [dmri] dwi {str(dwi_path)!r}"
    if len(img.shape) != 4:
        raise UserError(f"{where}: image of shape {img.shape} is not 4-D (X, Y, Z, N)")
    affine = _check_grid_affine(img.affine, where)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if check_data and not np.all(np.isfinite(data)):
        bad = np.argwhere(~np.isfinite(data))[0].tolist()
        raise UserError(f"{where}: holds NaN or Inf values (first at voxel/volume {bad})")
    default_bval, default_bvec = default_gradient_paths(dwi_path)
    bval = _resolve(base, dmri["bval"]) if "bval" in dmri else default_bval
    bvec = _resolve(base, dmri["bvec"]) if "bvec" in dmri else default_bvec
    gradients = read_bvals_bvecs(
        bval, bvec, affine=affine, n_volumes=int(img.shape[3]),
        b0_threshold=float(dmri["b0_threshold"]),
    )
    shape = tuple(int(s) for s in img.shape[:3])
    mask: np.ndarray | None = None
    labels: np.ndarray | None = None
    if "mask" in dmri:
        raw = _load_aux(_resolve(base, dmri["mask"]), shape, affine, f"{source}: [dmri] mask")
        mask = raw != 0
    if "labels" in dmri:
        raw = _load_aux(_resolve(base, dmri["labels"]), shape, affine, f"{source}: [dmri] labels")
        if not np.all(np.equal(np.mod(raw, 1), 0)):
            raise UserError(f"{source}: [dmri] labels {dmri['labels']!r}: holds non-integer values")
        labels = raw.astype(np.int32)
    return data, affine, gradients, mask, labels


def _spatial_axes(attrs: dict[str, Any]) -> tuple[list[str], bool]:
    """Names of the spatial axes (file order) and whether they all carry a unit."""
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    if not ms:
        return [], False
    axes = [{"name": a} if isinstance(a, str) else a for a in ms[0].get("axes", [])]
    spatial = [a for a in axes if a.get("type", "space") == "space"]
    return [str(a.get("name", "")) for a in spatial], all(a.get("unit") for a in spatial)


def voxel_to_world(volume: Any, axis_names: list[str] | tuple[str, ...] = ()) -> np.ndarray:
    """Array index -> microscopy world mm (x, y, z) of an opened volume, (4, 4).

    ``volume`` is an :class:`~validation.io.omezarr.OmeZarrVolume`. NIfTI volumes use
    their affine (columns rescaled to the voxel size when it was overridden); others
    place array axis ``a`` along world axis ``axis_names[a]`` (x, y or z), or, without
    such names, along world axis ``2 - a`` (so (z, y, x) arrays map to (x, y, z)).
    """
    from validation.io.omezarr import SPATIAL_UNITS_UM

    mm = SPATIAL_UNITS_UM[volume.units] * 1e-3
    spacing = np.asarray(volume.spacing, dtype=np.float64) * mm
    translation = np.asarray(volume.translation, dtype=np.float64) * mm
    m = np.eye(4)
    if "affine" in volume.attrs:
        a = np.asarray(volume.attrs["affine"], dtype=np.float64)
        dirs = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
        m[:3, :3] = dirs * spacing
        m[:3, 3] = a[:3, 3]  # NIfTI affines are in mm
        return m
    names = [n.lower() for n in axis_names]
    if sorted(names) == ["x", "y", "z"]:
        targets = ["xyz".index(n) for n in names]
    else:
        targets = [2, 1, 0]
    m[:3, :3] = 0.0
    for ax, k in enumerate(targets):
        m[k, ax] = spacing[ax]
        m[k, 3] = translation[ax]
    return m


def transform_chain(
    entries: list[dict[str, Any]],
    base: Path,
    *,
    source: str = "manifest",
    axis_names: list[str] | tuple[str, ...] = (),
    origin_mm: Any = (0.0, 0.0, 0.0),
) -> CompositeTransform:
    """Build a level's transform chain from its (validated) manifest entries.

    ``axis_names`` (the source's spatial axes in file order) and ``origin_mm`` (the
    world position of the level-0 NGFF translation) serve Neuroglancer entries, whose
    3x4 matrix acts on the source's physical coordinates *without* its OME-Zarr
    translation, columns in the source's axis order (Neuroglancer replaces the
    default transform, translation included, by the layer's matrix).
    """
    chain: list[Transform] = []
    for j, entry in enumerate(entries, start=1):
        where = f"{source} transform {j}"
        try:
            t: Transform
            if "path" in entry:
                t = load_transform(_resolve(base, entry["path"]), format=entry.get("format"))
            elif "matrix" in entry:
                t = AffineTransform(entry["matrix"], source=where)
            else:
                ng = entry["neuroglancer"]
                names = ng.get("input_dimensions")
                if names is None:
                    names = list(axis_names) if sorted(axis_names) == ["x", "y", "z"] else None
                to_local = np.eye(4)
                to_local[:3, 3] = -np.asarray(origin_mm, dtype=np.float64)
                t = CompositeTransform([
                    AffineTransform(to_local, source=f"{where} (source origin)"),
                    neuroglancer_affine(
                        ng["matrix"], ng["output_dimensions"], input_dimensions=names,
                        where=where,
                    ),
                ])
        except TransformError as exc:
            if str(exc).startswith(where) or source in str(exc):
                raise
            raise TransformError(f"{where}: {exc}") from None
        chain.append(t.inverse() if entry.get("invert", False) else t)
    return CompositeTransform(chain)


def _box_samples(shape: tuple[int, ...], n: int = 9) -> np.ndarray:
    """A regular n^3 grid of voxel coordinates spanning a volume (voxel edges included)."""
    axes = [np.linspace(-0.5, s - 0.5, n) for s in shape[:3]]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def microscopy_overlap(
    level: MicroscopyLevel, grid_shape: tuple[int, int, int], grid_affine: np.ndarray
) -> tuple[float, np.ndarray]:
    """Fraction of a microscopy volume inside a dMRI grid, and its extent there.

    Returns
    -------
    fraction : float
        Share of 9^3 sample points spread over the microscopy box that fall inside the
        dMRI field of view (voxel edges).
    extent : ndarray (3, 2)
        Min and max dMRI voxel coordinate of the mapped microscopy box, per axis.
    """
    world = level.voxels_to_dmri(_box_samples(level.shape))
    inv = np.linalg.inv(grid_affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    eps = 1e-6  # voxel edges that coincide must not fall outside by round-off
    inside = np.all((vox >= -0.5 - eps) & (vox <= np.asarray(grid_shape) - 0.5 + eps), axis=1)
    extent = np.stack([vox.min(axis=0), vox.max(axis=0)], axis=1)
    return float(inside.mean()), extent


def load_microscopy_level(
    entry: dict[str, Any], base: Path, *, source: str = "manifest"
) -> MicroscopyLevel:
    """Open one (validated) ``[[microscopy]]`` entry lazily and build its transform."""
    from validation.io.volumes import open_volume

    where = f"{source}: microscopy {entry['name']!r}"
    raw_path = entry["path"]
    if "://" in raw_path and not raw_path.startswith("file://"):
        raise UserError(
            f"{where}: path {raw_path!r} is not a local path; download it and point path at "
            "the local copy"
        )
    path = _resolve(base, raw_path.removeprefix("file://"))
    if not path.exists():
        raise UserError(f"{where}: {str(path)!r} not found")
    voxel_size = entry.get("voxel_size_um")
    try:
        vol = open_volume(path, level=int(entry["level"]), voxel_size_um=voxel_size)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    names, have_units = _spatial_axes(vol.attrs)
    is_zarr = bool(names) or path.name.lower().endswith(".zarr")
    if is_zarr and voxel_size is None and not have_units:
        raise UserError(
            f"{where}: {str(path)!r} has no units on its spatial axes; give voxel_size_um"
        )
    to_world = voxel_to_world(vol, names)
    origin = np.zeros(3)
    if names:
        # Neuroglancer measures from the level-0 translation (the pyramid's origin)
        from validation.io.omezarr import open_ome_zarr

        try:
            base_vol = vol if int(entry["level"]) == 0 else open_ome_zarr(path, level=0)
            origin = voxel_to_world(base_vol, names)[:3, 3]
        except UserError:
            origin = np.zeros(3)
    chain = transform_chain(
        entry["transform"], base, source=where, axis_names=names, origin_mm=origin
    )
    return MicroscopyLevel(
        name=entry["name"],
        path=str(path),
        level=int(entry["level"]),
        volume=vol.array,
        spacing_um=tuple(vol.spacing_um),  # type: ignore[arg-type]
        voxel_to_world=to_world,
        transform=chain,
        axis_names=tuple(names),
    )


def load_dataset(path: str | os.PathLike, *, check_data: bool = True) -> Dataset:
    """Load the dataset a manifest describes, checking every input.

    Parameters
    ----------
    path : path-like
        ``manifest.toml`` or the folder holding it.
    check_data : bool
        Scan the DWI for NaN/Inf (reads it whole; dMRI volumes are small).

    Returns
    -------
    Dataset
        DWI (float32, in memory), affine, gradients (b-vectors in the (i, j, k) frame
        of the DWI), mask, labels, microscopy levels (lazy dask volumes with their
        transforms to dMRI world mm), truth paths.

    Raises
    ------
    UserError
        One line naming the file and the problem: missing files, bval/bvec counts not
        matching the volumes, zero/NaN/non-unit b-vectors at b > 50, NaN/Inf in the DWI,
        mask or labels on another grid, singular or non-finite affines, microscopy
        outside the dMRI field of view (with its extent), missing voxel size or units,
        OME-Zarr without multiscales metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.toml"
    manifest = read_manifest(path)
    base = path.parent
    source = str(path)
    ds = Dataset(path=path, manifest=manifest)
    if "dmri" in manifest:
        ds.dwi, ds.affine, ds.gradients, ds.mask, ds.labels = _load_dmri(
            manifest["dmri"], base, source, check_data=check_data
        )
    for entry in manifest["microscopy"]:
        level = load_microscopy_level(entry, base, source=source)
        if ds.dwi is not None and ds.affine is not None:
            grid = ds.grid_shape
            assert grid is not None
            fraction, extent = microscopy_overlap(level, grid, ds.affine)
            if fraction == 0.0:
                span = ", ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in extent)
                raise UserError(
                    f"{source}: microscopy {level.name!r} does not overlap the dMRI field of "
                    f"view: it maps to dMRI voxels {span}, the grid is "
                    f"{' x '.join(map(str, grid))} (overlap 0%)"
                )
            if fraction < 1.0:
                log.warning(
                    "%s: microscopy %r lies %.0f%% inside the dMRI field of view",
                    source, level.name, 100 * fraction,
                )
            level.overlap_fraction = fraction
        ds.microscopy.append(level)
    for key, value in manifest.get("truth", {}).items():
        p = _resolve(base, value)
        if not p.exists():
            raise UserError(f"{source}: [truth] {key} {str(p)!r}: file not found")
        ds.truth[key] = p
    return ds


def write_microscopy_level(
    folder: str | os.PathLike,
    name: str,
    volume: Any,
    *,
    spacing_um: Any,
    voxel_to_dmri: Any,
    chunks: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a microscopy volume with its placement, and return its manifest entry.

    For writers of datasets (``xscale phantom``, examples): the volume becomes
    ``folder/<name>.ome.zarr`` (NGFF 0.4, axes named z, y, x for array axes 0, 1, 2)
    and its placement ``folder/<name>_to_dmri.txt``, the 4x4 microscopy world -> dMRI
    world matrix for which the loaded level's ``voxel_to_dmri`` equals
    ``voxel_to_dmri``.

    Parameters
    ----------
    folder : path-like
        Dataset folder (the manifest's).
    name : str
        Level name; also the file stem (letters, digits, ``-``, ``_``, ``.``).
    volume : ndarray or dask array of shape (I, J, K)
        The image, any dtype.
    spacing_um : sequence of 3 float
        Voxel size per array axis, micrometres.
    voxel_to_dmri : array-like (4, 4)
        Microscopy voxel index -> dMRI world mm.
    chunks : sequence of 3 int, optional
        On-disk chunks.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    dict
        ``{"name", "path", "level", "transform"}`` for ``[[microscopy]]``.
    """
    import re

    from validation.io.omezarr import OmeZarrVolume, write_ome_zarr
    from validation.transforms import write_matrix_txt

    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"microscopy level name {name!r} must be letters, digits, '-', '_', '.'")
    folder = Path(folder)
    target = _check_grid_affine(voxel_to_dmri, f"microscopy {name!r} voxel_to_dmri")
    spacing = tuple(float(s) for s in spacing_um)
    zarr_path = folder / f"{name}.ome.zarr"
    write_ome_zarr(zarr_path, volume, spacing=spacing, units="micrometer", chunks=chunks,
                   name=name, overwrite=overwrite)
    geometry = OmeZarrVolume(array=np.empty((0, 0, 0)), spacing=spacing,  # type: ignore[arg-type]
                             units="micrometer")
    to_world = voxel_to_world(geometry, ["z", "y", "x"])
    txt = folder / f"{name}_to_dmri.txt"
    if txt.exists() and not overwrite:
        raise UserError(f"{txt}: exists already; pass overwrite to replace it")
    write_matrix_txt(txt, target @ np.linalg.inv(to_world))
    return {"name": name, "path": zarr_path.name, "level": 0, "transform": [txt.name]}
