"""OME-Zarr (NGFF 0.4 on zarr v2, NGFF 0.5 on zarr v3) reading and writing.

Array order is kept as on disk: (z, y, x) for a volume, (c, z, y, x) on disk for a
vector field, which :func:`open_ome_zarr` returns as (z, y, x, c) (components last, our
convention). Spacing is reported per array axis in the unit of the axes metadata.
Writes stream chunk by chunk and are atomic: the image is written into a temporary
sibling and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from validation.errors import UserError

__all__ = [
    "SPATIAL_UNITS_UM",
    "OmeZarrVolume",
    "create_ome_zarr_image",
    "ngff_multiscales",
    "open_ome_zarr",
    "read_multiscales",
    "spacing_to_um",
    "write_ome_zarr",
]

#: NGFF spatial units and their size in micrometres.
SPATIAL_UNITS_UM: dict[str, float] = {
    "angstrom": 1e-4,
    "picometer": 1e-6,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "meter": 1e6,
}
_UNIT_ALIASES = {
    "um": "micrometer",
    "µm": "micrometer",
    "micron": "micrometer",
    "micrometre": "micrometer",
    "nm": "nanometer",
    "nanometre": "nanometer",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "m": "meter",
    "metre": "meter",
}


@dataclass(frozen=True)
class OmeZarrVolume:
    """A lazily read 3-D volume with its physical geometry.

    Attributes
    ----------
    array : dask.array.Array
        Shape (Z, Y, X) for a scalar volume or (Z, Y, X, C) for a vector field
        (components last), in the on-disk dtype (integers are never rescaled).
    spacing : tuple of 3 float
        Voxel size along the three spatial array axes, in ``units``.
    units : str
        NGFF unit name of ``spacing`` and ``translation`` (e.g. ``"micrometer"``).
    attrs : dict
        The group's attributes (NGFF metadata included).
    translation : tuple of 3 float
        Physical coordinate of the centre of voxel (0, 0, 0), in ``units``.
    path : str
        Where it was read from ("" for in-memory volumes).
    level : int
        Pyramid level read.
    """

    array: Any
    spacing: tuple[float, float, float]
    units: str = "micrometer"
    attrs: dict[str, Any] = field(default_factory=dict)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str = ""
    level: int = 0

    @property
    def spacing_um(self) -> tuple[float, float, float]:
        """Voxel size per spatial axis in micrometres."""
        return spacing_to_um(self.spacing, self.units)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def normalise_unit(units: str, *, what: str = "units") -> str:
    """Return the NGFF name of a spatial unit, or raise :class:`UserError`."""
    key = str(units).strip()
    key = _UNIT_ALIASES.get(key.lower(), key.lower())
    if key not in SPATIAL_UNITS_UM:
        raise UserError(
            f"{what} {units!r} is not a known spatial unit; use one of "
            f"{', '.join(SPATIAL_UNITS_UM)}"
        )
    return key


def spacing_to_um(spacing: Sequence[float], units: str) -> tuple[float, float, float]:
    """Convert a per-axis spacing in ``units`` to micrometres."""
    factor = SPATIAL_UNITS_UM[normalise_unit(units)]
    return tuple(float(s) * factor for s in spacing)  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float], ndim: int = 3) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise UserError(f"spacing {spacing!r} must be a sequence of {ndim} numbers") from exc
    if len(values) != ndim:
        raise UserError(f"spacing {spacing!r} must have {ndim} values, one per spatial axis")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise UserError(f"spacing {spacing!r} must be finite and positive")
    return values


def ngff_multiscales(
    *,
    spacing: Sequence[float],
    units: str,
    n_channels: int | None = None,
    name: str | None = None,
    translation: Sequence[float] | None = None,
    version: str = "0.4",
    levels: Sequence[Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """NGFF ``multiscales`` metadata for one (z, y, x) or (c, z, y, x) image.

    ``levels`` gives the spacing of each pyramid level (default: one level, ``spacing``).
    """
    units = normalise_unit(units)
    axes: list[dict[str, Any]] = []
    if n_channels is not None:
        axes.append({"name": "c", "type": "channel"})
    axes += [{"name": ax, "type": "space", "unit": units} for ax in ("z", "y", "x")]
    level_spacings = [tuple(spacing)] if levels is None else [tuple(s) for s in levels]
    datasets = []
    for i, sp in enumerate(level_spacings):
        scale = ([1.0] if n_channels is not None else []) + [float(s) for s in sp]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if translation is not None and any(float(t) != 0.0 for t in translation):
            # voxel centres of a coarser level shift by half the size change
            shift = [
                float(t) + 0.5 * (float(s) - float(s0))
                for t, s, s0 in zip(translation, sp, spacing, strict=True)
            ]
            transforms.append(
                {
                    "type": "translation",
                    "translation": ([0.0] if n_channels is not None else []) + shift,
                }
            )
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    ms: dict[str, Any] = {"axes": axes, "datasets": datasets, "name": name or "image"}
    if version == "0.4":
        ms["version"] = "0.4"
    return [ms]


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _replace_dir(tmp: Path, path: Path, *, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"output {str(path)!r} exists already; pass overwrite=True")
        old = _temp_sibling(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _default_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    # about 4 MiB per chunk, cubic-ish
    side = max(16, int(round((4 * 2**20 / max(itemsize, 1)) ** (1 / 3))))
    return tuple(min(s, side) for s in shape)


def create_ome_zarr_image(
    group: zarr.Group,
    *,
    shape: tuple[int, int, int],
    dtype: Any,
    spacing: Sequence[float],
    units: str = "micrometer",
    chunks: Sequence[int] | None = None,
    n_channels: int | None = None,
    name: str | None = None,
    translation: Sequence[float] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Create an empty single-level NGFF image in ``group`` and return its level-0 array.

    The array is (Z, Y, X) or (C, Z, Y, X) when ``n_channels`` is given (NGFF order);
    ``chunks`` is given in (Z, Y, X) and the channel axis is one chunk. The NGFF version
    follows the group's zarr format (v2 -> 0.4, v3 -> 0.5). Empty chunks are written
    (a chunk's presence on disk means it was computed).
    """
    zarr_format = group.metadata.zarr_format
    spacing = _check_spacing(spacing)
    spatial_chunks = tuple(int(c) for c in (chunks or _default_chunks(shape, 4)))
    full_shape = ((n_channels,) if n_channels is not None else ()) + tuple(shape)
    full_chunks = ((n_channels,) if n_channels is not None else ()) + tuple(
        min(c, s) for c, s in zip(spatial_chunks, shape, strict=True)
    )
    kwargs: dict[str, Any] = {}
    if zarr_format == 3:
        kwargs["dimension_names"] = (["c"] if n_channels is not None else []) + ["z", "y", "x"]
    else:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    arr = group.create_array(
        "0",
        shape=full_shape,
        chunks=full_chunks,
        dtype=dtype,
        fill_value=0,
        config={"write_empty_chunks": True},
        **kwargs,
    )
    ms = ngff_multiscales(
        spacing=spacing,
        units=units,
        n_channels=n_channels,
        name=name,
        translation=translation,
        version="0.4" if zarr_format == 2 else "0.5",
    )
    meta: dict[str, Any] = dict(attrs or {})
    if zarr_format == 2:
        meta["multiscales"] = ms
    else:
        meta["ome"] = {"version": "0.5", "multiscales": ms}
    group.attrs.update(meta)
    return arr


def write_ome_zarr(
    path: str | os.PathLike,
    array: Any,
    *,
    spacing: Sequence[float],
    units: str = "micrometer",
    chunks: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
    translation: Sequence[float] | None = None,
    version: str = "0.4",
    overwrite: bool = False,
) -> Path:
    """Write a 3-D volume (or a vector field) as a single-level OME-Zarr image.

    Parameters
    ----------
    path : path-like
        Output directory, conventionally ``*.ome.zarr``.
    array : ndarray or dask.array.Array
        Shape (Z, Y, X), or (Z, Y, X, C) for a vector field (stored NGFF-style as
        (C, Z, Y, X)). Any dtype; values are stored unchanged.
    spacing : sequence of 3 float
        Voxel size along (z, y, x), in ``units``; finite and positive.
    units : str
        NGFF spatial unit (``"micrometer"``, ``"nanometer"``, ``"millimeter"``, ...).
    chunks : sequence of 3 int, optional
        On-disk chunk shape along (z, y, x); default about 4 MiB chunks.
    attrs : mapping, optional
        Extra JSON-serialisable group attributes.
    name : str, optional
        Image name in the multiscales metadata.
    translation : sequence of 3 float, optional
        Physical coordinate of the centre of voxel (0, 0, 0), in ``units``.
    version : {"0.4", "0.5"}
        NGFF version: 0.4 writes zarr v2, 0.5 writes zarr v3.
    overwrite : bool
        Replace an existing output (default: raise :class:`UserError`).

    Returns
    -------
    pathlib.Path
        ``path``, written completely (a temporary sibling renamed into place).

    Notes
    -----
    Streams chunk by chunk: a dask array is rechunked to the on-disk chunks and stored
    block by block, so it is never held in memory as a whole.
    """
    path = Path(path)
    if version not in ("0.4", "0.5"):
        raise UserError(f"NGFF version {version!r} is not supported; use '0.4' or '0.5'")
    if array.ndim not in (3, 4):
        raise UserError(
            f"array of shape {tuple(array.shape)} is not 3-D (z, y, x) or 4-D (z, y, x, c)"
        )
    if path.exists() and not overwrite:
        raise UserError(f"output {str(path)!r} exists already; pass overwrite=True")
    units = normalise_unit(units)
    shape3 = tuple(int(s) for s in array.shape[:3])
    n_channels = int(array.shape[3]) if array.ndim == 4 else None
    itemsize = np.dtype(array.dtype).itemsize * (n_channels or 1)
    chunks3 = tuple(int(c) for c in (chunks or _default_chunks(shape3, itemsize)))
    if len(chunks3) != 3 or any(c <= 0 for c in chunks3):
        raise UserError(f"chunks {chunks!r} must be three positive integers")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2 if version == "0.4" else 3)
        target = create_ome_zarr_image(
            group,
            shape=shape3,  # type: ignore[arg-type]
            dtype=array.dtype,
            spacing=spacing,
            units=units,
            chunks=chunks3,
            n_channels=n_channels,
            name=name,
            translation=translation,
            attrs=attrs,
        )
        source = da.asarray(array)
        if n_channels is not None:
            source = da.moveaxis(source, 3, 0)
        source = source.rechunk(target.chunks)
        da.store(source, target, lock=False)  # type: ignore[arg-type]
        _replace_dir(tmp, path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_multiscales(group: zarr.Group, *, where: str = "") -> dict[str, Any]:
    """Return the first NGFF ``multiscales`` entry of a group (0.4 or 0.5 layout)."""
    attrs: dict[str, Any] = dict(group.attrs)
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise UserError(f"{where or 'OME-Zarr'}: no NGFF multiscales metadata in the group")
    return ms[0]


def _level_geometry(
    ms: Mapping[str, Any], level: int, where: str
) -> tuple[str, list[dict[str, Any]], list[float], list[float]]:
    datasets = ms.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise UserError(f"{where}: level {level} does not exist; it has {len(datasets)} levels")
    axes = ms.get("axes")
    if not axes:
        raise UserError(f"{where}: the multiscales metadata has no axes")
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]  # NGFF 0.3 strings
    n = len(axes)
    scale = [1.0] * n
    translation = [0.0] * n
    transform_lists = [datasets[level].get("coordinateTransformations") or []]
    transform_lists.append(ms.get("coordinateTransformations") or [])  # global, applied after
    for transforms in transform_lists:
        for t in transforms:
            if t.get("type") == "scale":
                s = [float(v) for v in t["scale"]]
                translation = [tr * si for tr, si in zip(translation, s, strict=True)]
                scale = [a * b for a, b in zip(scale, s, strict=True)]
            elif t.get("type") == "translation":
                translation = [
                    a + float(b) for a, b in zip(translation, t["translation"], strict=True)
                ]
    return str(datasets[level]["path"]), axes, scale, translation


def open_ome_zarr(
    path: str | os.PathLike, *, level: int = 0, component: str | None = None
) -> OmeZarrVolume:
    """Open one pyramid level of an OME-Zarr image lazily.

    Parameters
    ----------
    path : path-like
        The image group (NGFF 0.4 on zarr v2 or 0.5 on zarr v3).
    level : int
        Pyramid level (index into ``datasets``), 0 = full resolution.
    component : str, optional
        Sub-group holding the image inside ``path`` (e.g. ``"vectors"``).

    Returns
    -------
    OmeZarrVolume
        ``.array`` is a dask array (Z, Y, X), or (Z, Y, X, C) when the image has a
        channel axis of size > 1 (moved last); singleton ``t``/``c`` axes are dropped.

    Raises
    ------
    UserError
        Missing multiscales metadata, a level that does not exist, spatial axes that are
        not exactly three, unknown units, non-positive spacing.
    """
    path = Path(path)
    where = str(path if component is None else path / component)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        group = zarr.open_group(str(path), mode="r", path=component)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise UserError(f"{where}: not a zarr group ({type(exc).__name__}: {exc})") from exc
    ms = read_multiscales(group, where=where)
    ds_path, axes, scale, translation = _level_geometry(ms, level, where)
    try:
        arr: Any = group[ds_path]
    except KeyError as exc:
        raise UserError(f"{where}: dataset {ds_path!r} of level {level} is missing") from exc
    if arr.ndim != len(axes):
        raise UserError(f"{where}: array has {arr.ndim} axes but the metadata lists {len(axes)}")
    spatial = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
    if len(spatial) != 3:
        raise UserError(
            f"{where}: image has {len(spatial)} spatial axes "
            f"({[a.get('name') for a in axes]}); a 3-D volume is needed"
        )
    units_found = {axes[i].get("unit") for i in spatial}
    if len(units_found) != 1:
        raise UserError(
            f"{where}: spatial axes have different units {sorted(map(str, units_found))}"
        )
    unit_value = units_found.pop()
    units = normalise_unit(unit_value or "micrometer", what=f"{where}: unit")
    spacing = tuple(scale[i] for i in spatial)
    _check_spacing(spacing)
    darr = da.from_zarr(arr)
    others = [i for i in range(len(axes)) if i not in spatial]
    # drop singleton non-spatial axes, move one remaining channel axis last
    index: list[Any] = [slice(None)] * darr.ndim
    kept_other = []
    for i in others:
        if darr.shape[i] == 1:
            index[i] = 0
        else:
            kept_other.append(i)
    if len(kept_other) > 1:
        raise UserError(f"{where}: more than one non-spatial axis of size > 1 is not supported")
    darr = darr[tuple(index)]
    if kept_other:
        pos = kept_other[0] - sum(1 for i in others if i < kept_other[0] and i not in kept_other)
        darr = da.moveaxis(darr, pos, -1)
    return OmeZarrVolume(
        array=darr,
        spacing=spacing,  # type: ignore[arg-type]
        units=units,
        attrs=dict(group.attrs),
        translation=tuple(translation[i] for i in spatial),  # type: ignore[arg-type]
        path=str(path),
        level=level,
    )
