"""`xscale import-neuroglancer --check`: every bad input exits 2, one line, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from validation.cli import main
from validation.io.omezarr import write_ome_zarr

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _setup(tmp_path: Path, *, bvals="0 1000", bvecs="0 1\n0 0\n0 0\n", dwi=None,
           affine=AFFINE, mask_shape=(4, 4, 4), units=True, multiscales=True,
           to_dmri="1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", name="micro") -> list[str]:
    vol = np.zeros((8, 8, 8), dtype=np.uint8)
    write_ome_zarr(tmp_path / "m.ome.zarr", vol, spacing=(100.0,) * 3, units="micrometer")
    if not units or not multiscales:
        import zarr

        group = zarr.open_group(str(tmp_path / "m.ome.zarr"), mode="r+")
        attrs = dict(group.attrs)
        if not units:
            for axis in attrs["multiscales"][0]["axes"]:
                axis.pop("unit")
        else:
            attrs = {}
        group.attrs.clear()
        group.attrs.update(attrs)
    state = {"dimensions": {"x": [1e-3, "m"], "y": [1e-3, "m"], "z": [1e-3, "m"]},
             "layers": [{"type": "image", "name": name, "source": "m.ome.zarr/|zarr2:"}]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    data = np.ones((4, 4, 4, 2), dtype=np.float32) if dwi is None else dwi
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(affine, code=1)  # sform only: nibabel cannot store a singular qform
    img.header.set_qform(None, code=0)
    nib.save(img, tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text(bvals + "\n")
    (tmp_path / "dwi.bvec").write_text(bvecs)
    nib.save(nib.Nifti1Image(np.ones(mask_shape, np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    (tmp_path / "to_dmri.txt").write_text(to_dmri)
    return ["import-neuroglancer", str(tmp_path / "state.json"), "-o",
            str(tmp_path / "out" / "manifest.toml"), "--dwi", str(tmp_path / "dwi.nii.gz"),
            "--mask", str(tmp_path / "mask.nii.gz"), "--to-dmri", str(tmp_path / "to_dmri.txt"),
            "--check"]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_inputs_write_the_manifest(tmp_path: Path) -> None:
    args = _setup(tmp_path)
    assert main(args + ["-q"]) == 0
    assert (tmp_path / "out" / "manifest.toml").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["manifest.toml"]


def _nan_dwi() -> np.ndarray:
    d = np.ones((4, 4, 4, 2), dtype=np.float32)
    d[0, 0, 0, 1] = np.nan
    return d


@pytest.mark.parametrize(
    ("kwargs", "needle", "names"),
    [
        ({"bvals": "0 1000 1000", "bvecs": "0 1 0\n0 0 1\n0 0 0\n"},
         "3 b-values but the DWI has 2 volumes", "dwi.bval"),
        ({"bvecs": "0 0\n0 0\n0 0\n"}, "b-vector of volume 1 is zero at b = 1000 > 50",
         "dwi.bvec"),
        ({"bvecs": "0 nan\n0 0\n0 0\n"}, "(not finite)", "dwi.bvec"),
        ({"bvecs": "0 0.9\n0 0\n0 0\n"}, "has length 0.9, not unit within 0.01", "dwi.bvec"),
        ({"dwi": _nan_dwi()}, "holds NaN or Inf values", "dwi.nii.gz"),
        ({"mask_shape": (4, 4, 5)}, "does not match the DWI grid", "mask.nii.gz"),
        ({"affine": np.diag([1.0, 1.0, 0.0, 1.0])}, "singular", "dwi.nii.gz"),
        ({"to_dmri": "1 0 0 0\n0 1 0 0\n0 0 0 0\n0 0 0 1\n"}, "singular", "to_dmri.txt"),
        ({"to_dmri": "1 0 0 50\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"},
         "does not overlap the dMRI field of view", "overlap 0%"),
        ({"units": False}, "have no voxel size", "micro"),
        ({"multiscales": False}, "no NGFF multiscales metadata", "m.ome.zarr"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(tmp_path: Path, capsys, kwargs, needle, names) -> None:
    args = _setup(tmp_path, **kwargs)
    before = _listing(tmp_path)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert needle in err and names in err
    assert _listing(tmp_path) == before
