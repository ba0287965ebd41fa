"""Import a Neuroglancer viewer state into a dataset manifest.

Image layers with OME-Zarr sources become microscopy levels. A layer's
``source.transform`` (a 3x4 ``matrix`` with ``outputDimensions``) becomes a
``neuroglancer`` transform entry; Neuroglancer's semantics (``coordinate_transform.ts``)
are that the 3x3 part is unit-less and acts on the source's physical coordinates, and
the translation column is in output units, so a level maps its physical millimetres
into the physical millimetres of the state's global space. Layers without a transform
sit in the global space with their own OME-Zarr geometry (identity).

Voxel sizes come, in this order, from the OME-Zarr metadata when the source is a
reachable local path, from the user (``voxel_sizes``), or from the layer name when it
states one (``..._4.257um_...``). Levels without one are listed in
:attr:`NeuroglancerImport.missing_voxel_size`.

The matrix columns follow the source's axes in the order the OME-Zarr lists them; for
an unreachable source that order is unknown and is taken to be the output dimension
order (x, y, z); :func:`validation.manifest.load_dataset` re-reads it from the file
once the data are local.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.errors import UserError
from validation.transforms import (
    AffineTransform,
    TransformError,
    neuroglancer_affine,
    unit_to_mm,
)

__all__ = [
    "NeuroglancerImport",
    "NeuroglancerLevel",
    "import_neuroglancer_state",
    "parse_source_url",
    "voxel_size_from_name",
]

_NAME_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(um|µm|nm|mm)(?![A-Za-z])")
_UNIT_UM = {"um": 1.0, "µm": 1.0, "nm": 1e-3, "mm": 1e3}


def voxel_size_from_name(name: str) -> float | None:
    """Isotropic voxel size (um) stated in a layer name (``"VOI-1_4.257um_bm18"``), or None.

    Examples
    --------
    >>> voxel_size_from_name("Hb1_brain_left_hemisphere_VOI-1_4.257um_bm18")
    4.257
    >>> voxel_size_from_name("sub-I74_sample-blockIC1trim9_acq-80kV_desc-preproc_uCT") is None
    True
    """
    matches = _NAME_SIZE.findall(name)
    if len(matches) != 1:
        return None
    value, unit = matches[0]
    return float(value) * _UNIT_UM[unit]


def parse_source_url(url: str) -> tuple[str, str | None]:
    """Split a Neuroglancer source URL into (location, zarr driver or None).

    Handles the pipeline form ``gs://b/x.ome.zarr/|zarr3:`` and the older
    ``zarr://``, ``zarr2://``, ``zarr3://`` prefixes.
    """
    driver = None
    text = url.strip()
    for prefix in ("zarr2://", "zarr3://", "zarr://"):
        if text.startswith(prefix):
            driver = prefix[:-3]
            text = text[len(prefix):]
    if "|" in text:
        parts = text.split("|")
        text = parts[0]
        for part in parts[1:]:
            kind = part.split(":", 1)[0].strip()
            if kind.startswith("zarr"):
                driver = kind
    text = text.rstrip("/")
    if driver is None and text.lower().endswith(".zarr"):
        driver = "zarr"
    return text, driver


@dataclass(frozen=True)
class NeuroglancerLevel:
    """One image layer of a Neuroglancer state, as a microscopy level.

    Attributes
    ----------
    name : str
        The layer name.
    source : str
        The data location (URL or path, pipeline suffixes removed).
    driver : str or None
        ``"zarr2"``, ``"zarr3"`` or ``"zarr"``; None when the source is not Zarr.
    local_path : Path or None
        The source when it is a reachable local OME-Zarr.
    matrix : ndarray (3, 4) or None
        ``source.transform.matrix``; None for layers without a transform.
    output_dimensions : dict or None
        ``source.transform.outputDimensions``.
    input_dimensions : list of str or None
        The source's spatial axes in file order, when the OME-Zarr was read.
    voxel_size_um : tuple of 3 float or None
        Per source array axis.
    voxel_size_from : str or None
        ``"ome-zarr"``, ``"user"`` or ``"layer name"``.
    transform : AffineTransform
        Source physical mm (x, y, z) -> global physical mm.
    """

    name: str
    source: str
    driver: str | None
    local_path: Path | None
    matrix: np.ndarray | None
    output_dimensions: dict[str, Any] | None
    input_dimensions: list[str] | None
    voxel_size_um: tuple[float, float, float] | None
    voxel_size_from: str | None
    transform: AffineTransform

    def voxel_to_global(self) -> np.ndarray:
        """Source voxel index -> global physical mm (4, 4), voxel centres.

        Array axes are taken in ``input_dimensions`` order (x, y, z when unknown); the
        OME-Zarr translation is not included (Neuroglancer's matrix replaces it).
        """
        if self.voxel_size_um is None:
            raise UserError(f"layer {self.name!r} has no voxel size")
        names = self.input_dimensions or ["x", "y", "z"]
        scale = np.zeros((4, 4))
        scale[3, 3] = 1.0
        for axis, name in enumerate(names):
            scale["xyz".index(name), axis] = self.voxel_size_um[axis] * 1e-3
        return self.transform.as_affine() @ scale


@dataclass
class NeuroglancerImport:
    """The result of :func:`import_neuroglancer_state`.

    Attributes
    ----------
    title : str
    global_dimensions : dict
        The state's ``dimensions`` (``{"x": [scale, unit], ...}``).
    levels : list of NeuroglancerLevel
        Image layers with Zarr sources, in state order.
    skipped : list of str
        Layers that are not imported, each with the reason.
    """

    title: str
    global_dimensions: dict[str, Any]
    levels: list[NeuroglancerLevel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def missing_voxel_size(self) -> list[str]:
        """Names of the levels without a voxel size."""
        return [lvl.name for lvl in self.levels if lvl.voxel_size_um is None]

    def global_unit_mm(self) -> np.ndarray:
        """Size of one global coordinate unit per dimension (x, y, z), mm."""
        return np.array([
            float(self.global_dimensions[n][0]) * unit_to_mm(self.global_dimensions[n][1])
            for n in ("x", "y", "z")
        ])

    def to_manifest(
        self,
        *,
        manifest_dir: str | os.PathLike = ".",
        dmri: dict[str, Any] | None = None,
        to_dmri: list[Any] | None = None,
        skip_missing: bool = False,
    ) -> dict[str, Any]:
        """A manifest dict with one ``[[microscopy]]`` entry per level.

        Parameters
        ----------
        manifest_dir : path-like
            Where the manifest will live; local sources are written relative to it.
        dmri : dict, optional
            A ``[dmri]`` table to include.
        to_dmri : list, optional
            Transform entries appended to every level's chain (global space -> dMRI);
            without it the chains end in the Neuroglancer global space.
        skip_missing : bool
            Leave out levels without a voxel size instead of raising.

        Raises
        ------
        UserError
            Levels without a voxel size (listed), unless ``skip_missing``.
        """
        missing = self.missing_voxel_size
        if missing and not skip_missing:
            raise UserError(
                f"{len(missing)} level(s) have no voxel size: {', '.join(missing)}; give "
                "--voxel-size NAME=UM (or skip them)"
            )
        base = Path(manifest_dir)
        levels = []
        for lvl in self.levels:
            if lvl.voxel_size_um is None:
                continue
            if lvl.local_path is not None:
                try:
                    path = os.path.relpath(lvl.local_path, base)
                except ValueError:
                    path = str(lvl.local_path)
            else:
                path = lvl.source
            chain: list[Any] = []
            if lvl.matrix is not None:
                ng: dict[str, Any] = {
                    "matrix": lvl.matrix.tolist(),
                    "output_dimensions": {
                        k: list(v) for k, v in (lvl.output_dimensions or {}).items()
                    },
                }
                if lvl.input_dimensions is not None:
                    ng["input_dimensions"] = list(lvl.input_dimensions)
                chain.append({"neuroglancer": ng})
            chain.extend(to_dmri or [])
            entry: dict[str, Any] = {
                "name": lvl.name,
                "path": path,
                "level": 0,
                "transform": chain,
                "source": lvl.source,
            }
            if lvl.voxel_size_from != "ome-zarr":
                entry["voxel_size_um"] = list(lvl.voxel_size_um)
            levels.append(entry)
        manifest: dict[str, Any] = {"dataset": {"name": self.title or "neuroglancer import"}}
        if dmri is not None:
            manifest["dmri"] = dmri
        manifest["microscopy"] = levels
        return manifest


def _load_state(state: Any) -> tuple[dict[str, Any], Path | None, str]:
    if isinstance(state, dict):
        return state, None, "Neuroglancer state"
    path = Path(state)
    if not path.is_file():
        raise UserError(f"{path}: Neuroglancer state file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a Neuroglancer state must be a JSON object")
    return data, path.parent, str(path)


def _layer_source(layer: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    src = layer.get("source")
    if isinstance(src, list):
        src = next((s for s in src if s), None)
    if isinstance(src, str):
        return src, None
    if isinstance(src, dict):
        url = src.get("url")
        return (url if isinstance(url, str) else None), src.get("transform")
    return None, None


def _local_zarr(location: str, base_dir: Path | None) -> Path | None:
    if "://" in location and not location.startswith("file://"):
        return None
    path = Path(location.removeprefix("file://"))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path if path.exists() else None


def _check_voxel_size(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        value = (value,) * 3
    elif isinstance(value, list | tuple) and len(value) == 1:
        value = tuple(value) * 3
    try:
        sizes = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"voxel size {value!r} for {name!r} is not a number") from None
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise UserError(f"voxel size {value!r} for {name!r} must be 1 or 3 positive numbers (um)")
    return sizes  # type: ignore[return-value]


def import_neuroglancer_state(
    state: Any,
    *,
    voxel_sizes: dict[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> NeuroglancerImport:
    """Read a Neuroglancer state (a dict or a JSON file) into microscopy levels.

    Parameters
    ----------
    state : dict or path-like
        The viewer state.
    voxel_sizes : dict, optional
        Layer name -> voxel size in um (a number or 3 numbers, per source array axis),
        for layers whose size is not in the OME-Zarr metadata. It takes precedence over
        a size stated in the layer name.
    base_dir : path-like, optional
        Folder for relative local sources (default: the state file's folder).

    Returns
    -------
    NeuroglancerImport

    Raises
    ------
    UserError
        Unreadable state, malformed transforms, unknown layer names in ``voxel_sizes``.
    """
    data, state_dir, where = _load_state(state)
    base = Path(base_dir) if base_dir is not None else state_dir
    dims = data.get("dimensions")
    if not isinstance(dims, dict):
        raise UserError(f"{where}: no global 'dimensions' in the state")
    layers = data.get("layers", [])
    if isinstance(layers, dict):  # very old states: name -> layer
        layers = [dict(v, name=k) for k, v in layers.items()]
    if not isinstance(layers, list):
        raise UserError(f"{where}: 'layers' is not a list")
    user = dict(voxel_sizes or {})
    names = [str(layer.get("name", "")) for layer in layers if isinstance(layer, dict)]
    unknown = [n for n in user if n not in names]
    if unknown:
        raise UserError(f"{where}: --voxel-size names unknown layers: {', '.join(unknown)}")
    result = NeuroglancerImport(title=str(data.get("title", "")), global_dimensions=dims)
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            continue
        name = str(layer.get("name", f"layer{index}"))
        if layer.get("type") != "image":
            result.skipped.append(f"{name}: layer type {layer.get('type')!r} is not image")
            continue
        url, transform = _layer_source(layer)
        if url is None:
            result.skipped.append(f"{name}: no data source")
            continue
        location, driver = parse_source_url(url)
        if driver is None:
            result.skipped.append(f"{name}: source {url!r} is not Zarr")
            continue
        lw = f"{where}: layer {name!r}"
        matrix = out_dims = None
        if transform is not None:
            if "matrix" not in transform or "outputDimensions" not in transform:
                raise UserError(f"{lw}: source.transform needs matrix and outputDimensions")
            matrix = np.asarray(transform["matrix"], dtype=np.float64)
            out_dims = dict(transform["outputDimensions"])
        local = _local_zarr(location, base)
        input_dims = None
        size: tuple[float, float, float] | None = None
        size_from = None
        if local is not None:
            from validation.io.omezarr import open_ome_zarr
            from validation.manifest import _spatial_axes

            vol = open_ome_zarr(local, level=0)
            axes, have_units = _spatial_axes(vol.attrs)
            if sorted(a.lower() for a in axes) == ["x", "y", "z"]:
                input_dims = [a.lower() for a in axes]
            if have_units:
                size, size_from = vol.spacing_um, "ome-zarr"
        if size is None and name in user:
            size, size_from = _check_voxel_size(user[name], name), "user"
        if size is None:
            stated = voxel_size_from_name(name)
            if stated is not None:
                size, size_from = (stated, stated, stated), "layer name"
        try:
            if matrix is not None:
                ng = neuroglancer_affine(
                    matrix, out_dims or {}, input_dimensions=input_dims, where=lw
                )
            else:
                ng = AffineTransform(np.eye(4), source=f"{lw} (no transform)")
        except TransformError as exc:
            raise UserError(str(exc)) from None
        result.levels.append(
            NeuroglancerLevel(
                name=name,
                source=location,
                driver=driver,
                local_path=local,
                matrix=None if matrix is None else matrix[:3],
                output_dimensions=out_dims,
                input_dimensions=input_dims,
                voxel_size_um=size,
                voxel_size_from=size_from,
                transform=ng,
            )
        )
    return result
