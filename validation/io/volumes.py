"""Lazy readers for microscopy volumes: OME-Zarr, TIFF stacks and NIfTI, one entry point.

Every reader returns an :class:`~validation.io.omezarr.OmeZarrVolume` (dask array in
the file's array order, spacing per array axis, units). Integers are never rescaled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from validation.errors import UserError
from validation.io.omezarr import (
    SPATIAL_UNITS_UM,
    OmeZarrVolume,
    _check_spacing,
    normalise_unit,
    open_ome_zarr,
)

__all__ = ["open_volume", "open_tiff", "open_nifti"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in (".zgroup", "zarr.json", ".zattrs")
    )


def open_volume(
    path: str | os.PathLike,
    *,
    level: int = 0,
    voxel_size_um: Sequence[float] | None = None,
) -> OmeZarrVolume:
    """Open a 3-D microscopy volume lazily, whatever its format.

    Parameters
    ----------
    path : path-like
        An OME-Zarr image (``*.zarr`` directory), a TIFF file (a multi-page stack), a
        directory of 2-D TIFF slices (sorted by name, one per z) or a NIfTI file.
    level : int
        Pyramid level for OME-Zarr (0 = full resolution); must be 0 for other formats.
    voxel_size_um : sequence of 3 float, optional
        Voxel size per array axis in micrometres. Overrides the file's; required when
        the file has none (TIFF without ImageJ/resolution metadata).

    Returns
    -------
    OmeZarrVolume
        ``.array`` dask (Z, Y, X) (NIfTI: (I, J, K)), ``.spacing`` in ``.units``.

    Raises
    ------
    UserError
        Unknown format, data that is not 3-D, missing or non-positive voxel size,
        unknown units.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    name = path.name.lower()
    if _is_zarr(path) or name.endswith(".zarr"):
        vol = open_ome_zarr(path, level=level)
    else:
        if level != 0:
            raise UserError(f"{str(path)!r}: level {level} requested but the file has one level")
        if name.endswith((".nii", ".nii.gz")):
            vol = open_nifti(path)
        elif name.endswith(_TIFF_SUFFIXES) or path.is_dir():
            vol = open_tiff(path, voxel_size_um=voxel_size_um)
        else:
            raise UserError(
                f"{str(path)!r}: unknown volume format; use OME-Zarr, TIFF or NIfTI"
            )
    if vol.array.ndim != 3:
        raise UserError(f"{str(path)!r}: data of shape {vol.array.shape} is not 3-D")
    if voxel_size_um is not None:
        spacing = _check_spacing(voxel_size_um)
        vol = OmeZarrVolume(
            array=vol.array,
            spacing=spacing,  # type: ignore[arg-type]
            units="micrometer",
            attrs=vol.attrs,
            translation=tuple(  # type: ignore[arg-type]
                t * SPATIAL_UNITS_UM[vol.units] for t in vol.translation
            ),
            path=vol.path,
            level=vol.level,
        )
    return vol


def _tiff_spacing(tif: Any) -> tuple[tuple[float, float, float], str] | None:
    """(z, y, x) spacing and unit from ImageJ metadata and resolution tags, if present."""
    ij = tif.imagej_metadata or {}
    page = tif.pages[0]
    tags = page.tags
    try:
        xres = tags["XResolution"].value
        yres = tags["YResolution"].value
        dx = xres[1] / xres[0]
        dy = yres[1] / yres[0]
    except (KeyError, ZeroDivisionError, TypeError):
        return None
    dz = ij.get("spacing")
    unit = ij.get("unit")
    if dz is None or unit is None:
        return None
    try:
        units = normalise_unit(str(unit).replace("\\u00B5", "µ"))
    except UserError:
        return None
    return (float(dz), float(dy), float(dx)), units


def open_tiff(
    path: str | os.PathLike, *, voxel_size_um: Sequence[float] | None = None
) -> OmeZarrVolume:
    """Open a TIFF stack (one multi-page file or a directory of 2-D slices) lazily.

    Slices are read on demand, one dask chunk per slice. The voxel size comes from
    ``voxel_size_um`` or, failing that, the ImageJ ``spacing``/``unit`` metadata with
    the resolution tags; with neither, :class:`UserError` is raised.
    """
    import tifffile

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(_TIFF_SUFFIXES))
        if not files:
            raise UserError(f"{str(path)!r}: directory holds no TIFF files")
        with tifffile.TiffFile(files[0]) as tif:
            first = tif.pages[0]
            shape2, dtype = tuple(first.shape), first.dtype
            found = _tiff_spacing(tif)
        if len(shape2) != 2:
            raise UserError(f"{str(files[0])!r}: slice of shape {shape2} is not 2-D")
        slices = [
            da.from_delayed(dask.delayed(tifffile.imread)(str(f)), shape=shape2, dtype=dtype)
            for f in files
        ]
        array = da.stack(slices, axis=0)
    else:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), series.dtype
            found = _tiff_spacing(tif)
            n_pages = len(series.pages)
        squeezed = tuple(s for s in shape if s != 1)
        if len(squeezed) != 3:
            raise UserError(f"{str(path)!r}: data of shape {shape} is not 3-D")
        if n_pages == squeezed[0]:
            page_shape = squeezed[1:]

            def _read_page(fname: str, index: int) -> np.ndarray:
                return np.asarray(tifffile.imread(fname, key=index)).reshape(page_shape)

            array = da.stack(
                [
                    da.from_delayed(
                        dask.delayed(_read_page)(str(path), i), shape=page_shape, dtype=dtype
                    )
                    for i in range(n_pages)
                ],
                axis=0,
            )
        else:  # another page layout (one multi-sample page, tiles): one lazy read

            def _read_all(fname: str) -> np.ndarray:
                return tifffile.imread(fname).reshape(squeezed)

            array = da.from_delayed(
                dask.delayed(_read_all)(str(path)), shape=squeezed, dtype=dtype
            )
    if voxel_size_um is not None:
        spacing, units = _check_spacing(voxel_size_um), "micrometer"
    elif found is not None:
        spacing, units = found
        _check_spacing(spacing)
    else:
        raise UserError(
            f"{str(path)!r}: the TIFF has no voxel size metadata; give voxel_size_um "
            "(--voxel-size-um)"
        )
    return OmeZarrVolume(
        array=array,
        spacing=tuple(spacing),  # type: ignore[arg-type]
        units=units,
        attrs={},
        path=str(path),
    )


def open_nifti(path: str | os.PathLike, *, chunks: int = 64) -> OmeZarrVolume:
    """Open a 3-D NIfTI image lazily (array order i, j, k; spacing = zooms in mm).

    The affine is kept in ``.attrs["affine"]`` (voxel -> world mm, 4x4 nested list).
    """
    import nibabel as nib

    path = Path(path)
    try:
        img: Any = nib.load(str(path))
    except Exception as exc:
        raise UserError(f"{str(path)!r}: cannot read NIfTI ({exc})") from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(f"{str(path)!r}: data of shape {tuple(img.shape)} is not 3-D")
    proxy = img.dataobj
    dtype = np.dtype(img.get_data_dtype())

    class _Proxy:
        # nibabel's proxy applies scl_slope; keep its dtype honest for dask
        def __init__(self) -> None:
            self.shape = shape
            self.ndim = 3
            self.dtype = dtype if _is_plain(proxy) else np.dtype(np.float64)

        def __getitem__(self, item: Any) -> np.ndarray:
            data = np.asanyarray(proxy[item + (0,)] if len(img.shape) == 4 else proxy[item])
            return data.astype(self.dtype, copy=False)

    array = da.from_array(_Proxy(), chunks=chunks, asarray=True)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    units = img.header.get_xyzt_units()[0]
    unit_name = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}.get(
        units, "millimeter"
    )
    _check_spacing(zooms)
    return OmeZarrVolume(
        array=array,
        spacing=zooms,  # type: ignore[arg-type]
        units=unit_name,
        attrs={"affine": np.asarray(img.affine).tolist()},
        path=str(path),
    )


def _is_plain(proxy: Any) -> bool:
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    return (slope in (1.0, None) or np.isnan(slope)) and (inter in (0.0, None) or np.isnan(inter))
