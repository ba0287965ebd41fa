"""SH interop checked against MRtrix itself: a FOD written in MRtrix convention for an
image with an oblique affine gives, through ``sh2amp`` and ``sh2peaks``, the amplitudes
and peaks XScale computes along world directions.

Needs the MRtrix3 programs (Debian package ``mrtrix3``, ``.ci/install-external.sh``);
skips without them unless XSCALE_REQUIRE_EXTERNAL=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import nibabel as nib
import numpy as np
import pytest

from validation.io.sh import (
    MRTRIX,
    XSCALE,
    read_sh,
    sh_amplitudes,
    voxel_to_world_directions,
    write_sh,
)

pytestmark = pytest.mark.external


def _missing(reason: str) -> None:
    if os.environ.get("XSCALE_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"{reason} (XSCALE_REQUIRE_EXTERNAL=1: external programs are required)")
    pytest.skip(reason)


def _require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        _missing(f"MRtrix3 program(s) {', '.join(missing)} not found (apt-get install mrtrix3)")


def _mrtrix(*args: str) -> None:
    proc = subprocess.run(list(args) + ["-quiet", "-force"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stderr.strip()}"


def _oblique_affine() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    a = np.eye(4)
    a[:3, :3] = Rotation.from_rotvec(np.radians(40) * np.array([1.0, 2.0, 3.0])
                                     / np.sqrt(14)).as_matrix() @ np.diag([1.5, 0.9, 2.2])
    a[:3, 3] = (12.0, -30.0, 5.0)
    return a


def _kernel(direction: np.ndarray, order: int = 8) -> np.ndarray:
    """XScale coefficients of a sharp axial lobe along a voxel-frame direction."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    d = direction / np.linalg.norm(direction)
    _, theta, phi = cart2sphere(*d)
    return real_sh_descoteaux(order, np.atleast_1d(theta), np.atleast_1d(phi),
                              legacy=False)[0][0]


def test_sh2amp_agrees_with_xscale_on_an_oblique_affine(tmp_path):
    _require("sh2amp")
    affine = _oblique_affine()
    rng = np.random.default_rng(0)
    # a smooth non-trivial FOD per voxel: two lobes at random voxel-frame directions
    sh = np.zeros((3, 2, 2, 45))
    for idx in np.ndindex(sh.shape[:3]):
        sh[idx] = _kernel(rng.normal(size=3)) + 0.5 * _kernel(rng.normal(size=3))
    fod = write_sh(tmp_path / "fod.nii", sh.astype(np.float32), affine, convention=MRTRIX)
    dirs = rng.normal(size=(40, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    np.savetxt(tmp_path / "dirs.txt", dirs)  # x y z rows: scanner (world) frame
    _mrtrix("sh2amp", str(fod), str(tmp_path / "dirs.txt"), str(tmp_path / "amp.nii"))
    out = nib.load(str(tmp_path / "amp.nii"))
    assert np.allclose(out.affine, affine, atol=1e-4)
    amp_mrtrix = np.asarray(out.dataobj, dtype=np.float64)
    amp_xscale = sh_amplitudes(sh.astype(np.float32), affine, dirs, convention=XSCALE)
    scale = np.abs(amp_xscale).max()
    assert np.abs(amp_mrtrix - amp_xscale).max() < 1e-4 * scale
    # the same directions read as voxel-frame directions would not agree: the test can fail
    wrong = sh_amplitudes(sh, affine, dirs, convention=XSCALE, directions_frame="ijk")
    assert np.abs(amp_mrtrix - wrong).max() > 0.1 * scale


def test_sh2peaks_finds_the_world_direction(tmp_path):
    _require("sh2peaks")
    affine = _oblique_affine()
    u = np.array([0.2, 0.9, -0.4])
    sh = np.broadcast_to(_kernel(u), (2, 2, 2, 45)).astype(np.float32)
    fod = write_sh(tmp_path / "fod.nii.gz", sh, affine, convention="mrtrix")
    _mrtrix("sh2peaks", str(fod), str(tmp_path / "peaks.nii"), "-num", "1")
    peak = np.asarray(nib.load(str(tmp_path / "peaks.nii")).dataobj)[0, 0, 0, :3]
    expected = voxel_to_world_directions(u, affine)
    cos = abs(peak @ expected) / np.linalg.norm(peak)
    assert np.degrees(np.arccos(min(cos, 1.0))) < 1.0


def test_mrtrix_written_fod_reads_back(tmp_path):
    # mrconvert re-writes our file the way MRtrix stores images; read_sh must undo it
    _require("mrconvert")
    affine = _oblique_affine()
    rng = np.random.default_rng(1)
    sh = rng.normal(size=(2, 3, 2, 15)).astype(np.float32)
    fod = write_sh(tmp_path / "fod.nii", sh, affine, convention=MRTRIX)
    _mrtrix("mrconvert", str(fod), str(tmp_path / "copy.nii"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = read_sh(tmp_path / "copy.nii", convention="mrtrix")
    assert np.allclose(img.affine, affine, atol=1e-4)
    assert np.allclose(img.sh, sh, atol=1e-4)
