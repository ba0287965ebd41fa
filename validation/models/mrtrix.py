"""``mrtrix-csd``: MRtrix3's constrained spherical deconvolution as an XScale model plug-in.

``fit`` writes the DWI (NIfTI, float32), an MRtrix gradient file and the mask into a
temporary folder, runs ``dwi2response tournier`` and ``dwi2fod csd`` there (subprocess,
MRtrix3 >= 3.0 on PATH: Debian/Ubuntu package ``mrtrix3``) and reads the FOD back
through :mod:`validation.io.sh` into dipy ``descoteaux07``, ``legacy=False``, voxel (ijk)
frame.

Frames: the plug-in contract hands ``fit`` b-vectors in the voxel frame and no affine.
The DWI is written with an identity affine, so MRtrix's scanner frame *is* the voxel
frame and the gradient file carries the b-vectors unchanged; the FOD comes back in that
same frame (only the basis changes, tournier07 -> descoteaux07). For MRtrix run on a
real file with an oblique affine and FSL b-vectors, see :func:`run_mrtrix_csd` and
``tests/validation/test_mrtrix_oblique.py``.

Test it by its dotted path ``validation.models.mrtrix:MrtrixCSD``
(``xscale check-model validation.models.mrtrix:MrtrixCSD``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.models.protocol import Capabilities, ModelFailure

__all__ = ["MRTRIX_PROGRAMS", "MrtrixCSD", "MrtrixCSDFit", "mrtrix_available", "mrtrix_csd",
           "run_mrtrix_csd"]

#: the MRtrix3 programs the plug-in runs
MRTRIX_PROGRAMS = ("dwi2response", "dwi2fod")


def mrtrix_available() -> bool:
    """True when ``dwi2response`` and ``dwi2fod`` are on PATH."""
    return all(shutil.which(p) for p in MRTRIX_PROGRAMS)


def _run(cmd: list[str], *, cwd: Path, timeout_s: float) -> None:
    """Run one MRtrix command; a failure becomes a one-line :class:`ModelFailure`."""
    env = dict(os.environ, MRTRIX_QUIET="1")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFailure(f"{cmd[0]} ran longer than {timeout_s:g} s", "timeout") from None
    except OSError as exc:
        raise ModelFailure(f"{cmd[0]} could not be started ({exc})", "fit") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        last = (errors or lines or ["no output"])[-1]
        raise ModelFailure(f"{cmd[0]} exited with {proc.returncode}: {last}", "fit")


def run_mrtrix_csd(
    dwi: str | os.PathLike,
    *,
    workdir: str | os.PathLike,
    grad: str | os.PathLike | None = None,
    fslgrad: tuple[str | os.PathLike, str | os.PathLike] | None = None,
    mask: str | os.PathLike | None = None,
    lmax: int = 8,
    response_voxels: int = 300,
    nthreads: int = 1,
    timeout_s: float = 600.0,
) -> tuple[Path, np.ndarray]:
    """Run ``dwi2response tournier`` and ``dwi2fod csd`` on a DWI file.

    Parameters
    ----------
    dwi : path-like
        4-D NIfTI (X, Y, Z, N).
    workdir : path-like
        Existing folder for the response, the FOD and MRtrix's scratch files.
    grad, fslgrad : path-like or (bvecs, bvals)
        MRtrix gradient file (rows ``x y z b``, scanner frame) or FSL ``(bvec, bval)``
        files (MRtrix's ``-fslgrad``, the convention of design.md); exactly one.
    mask : path-like, optional
        Brain mask (3-D NIfTI on the DWI grid).
    lmax : int
        Even maximal SH order of the FOD (and of the response's fit).
    response_voxels : int
        Single-fibre voxels ``dwi2response tournier`` selects (its ``-number``).
    nthreads : int
        MRtrix threads.
    timeout_s : float
        Limit per command, seconds.

    Returns
    -------
    fod_path : Path
        ``workdir/fod.nii``: MRtrix convention (tournier07, scanner frame), DWI grid.
    response : ndarray of shape (lmax / 2 + 1,)
        Zonal SH coefficients of the single-fibre response (MRtrix's response file).

    Raises
    ------
    ModelFailure
        A command failed (its last error line) or ran past ``timeout_s``.
    """
    if (grad is None) == (fslgrad is None):
        raise ValueError("give exactly one of grad and fslgrad")
    work = Path(workdir)
    grad_opts = (["-grad", str(grad)] if grad is not None
                 else ["-fslgrad", str(fslgrad[0]), str(fslgrad[1])])  # type: ignore[index]
    mask_opts = ["-mask", str(mask)] if mask is not None else []
    common = ["-nthreads", str(int(nthreads)), "-force", "-quiet"]
    response_path = work / "response.txt"
    number = max(1, int(response_voxels))
    _run(["dwi2response", "tournier", str(dwi), str(response_path), *grad_opts, *mask_opts,
          "-lmax", str(int(lmax)), "-number", str(number), "-iter_voxels", str(10 * number),
          "-scratch", str(work), *common], cwd=work, timeout_s=timeout_s)
    fod_path = work / "fod.nii"
    _run(["dwi2fod", "csd", str(dwi), str(response_path), str(fod_path), *grad_opts,
          *mask_opts, "-lmax", str(int(lmax)), *common], cwd=work, timeout_s=timeout_s)
    rows = [ln for ln in response_path.read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    response = np.array([float(v) for v in rows[-1].split()], dtype=np.float64)
    return fod_path, response


@dataclass
class MrtrixCSDFit:
    """Result of :meth:`MrtrixCSD.fit`.

    Attributes
    ----------
    shm_coeff : ndarray of shape (X, Y, Z, n_coeffs), float64
        dipy ``descoteaux07``, ``legacy=False``, voxel (ijk) frame; zero outside the mask.
    sh_order_max : int
    response : ndarray of shape (lmax / 2 + 1,)
        MRtrix's single-fibre response (zonal SH coefficients per even order).
    """

    shm_coeff: np.ndarray
    sh_order_max: int
    response: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def odf(self, sphere: Any) -> np.ndarray:
        """fODF amplitudes on the sphere's vertices (voxel frame): (X, Y, Z, V)."""
        from dipy.reconst.shm import sh_to_sf

        return sh_to_sf(self.shm_coeff, sphere, sh_order_max=self.sh_order_max,
                        basis_type="descoteaux07", legacy=False)


class MrtrixCSD:
    """MRtrix3 CSD: ``dwi2response tournier`` + ``dwi2fod csd`` (Tournier 2007, 2013).

    Parameters (keyword-only hyper-parameters)
    ------------------------------------------
    lmax : int
        Even maximal SH order of the FOD (8).
    response_voxels : int or None
        Single-fibre voxels for the response (``dwi2response tournier -number``);
        None: 300 (MRtrix's default), fewer on small masks (a tenth of the mask).
    nthreads : int
        MRtrix threads per command (1: XScale parallelises over cases).
    timeout_s : float
        Limit per MRtrix command, seconds.

    Raises
    ------
    RuntimeError
        At construction, when the MRtrix3 programs are not on PATH.
    """

    name = "mrtrix-csd"
    capabilities = Capabilities(gives_odf=True, gives_sh=True, voxelwise=False)

    def __init__(self, *, lmax: int = 8, response_voxels: int | None = None,
                 nthreads: int = 1, timeout_s: float = 600.0):
        if lmax < 2 or lmax % 2:
            raise ValueError(f"lmax {lmax} must be an even number >= 2")
        if response_voxels is not None and response_voxels < 1:
            raise ValueError(f"response_voxels {response_voxels} must be >= 1")
        missing = [p for p in MRTRIX_PROGRAMS if shutil.which(p) is None]
        if missing:
            raise RuntimeError(f"MRtrix3 program(s) {', '.join(missing)} not on PATH "
                               "(install the mrtrix3 package)")
        self.lmax = lmax
        self.response_voxels = response_voxels
        self.nthreads = nthreads
        self.timeout_s = timeout_s

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None
            ) -> MrtrixCSDFit:
        """Fit the whole volume with MRtrix.

        Parameters
        ----------
        data : ndarray of shape (X, Y, Z, N)
            Signal; values outside ``mask`` are ignored (NaN allowed there).
        gtab : dipy GradientTable
            b-values (s/mm^2) and unit b-vectors in the voxel frame.
        mask : ndarray of bool, shape (X, Y, Z), optional

        Returns
        -------
        MrtrixCSDFit
        """
        from validation.io.nifti import save_nifti
        from validation.io.sh import MRTRIX, read_sh

        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim != 4:
            raise ModelFailure(f"data of shape {arr.shape} is not (X, Y, Z, N)", "fit")
        m = np.ones(arr.shape[:3], bool) if mask is None else np.asarray(mask, bool)
        if m.shape != arr.shape[:3]:
            raise ModelFailure(f"mask of shape {m.shape} does not match data {arr.shape}", "fit")
        clean = np.where(m[..., None], arr, 0.0)
        if not np.all(np.isfinite(clean)):
            raise ModelFailure("data contain NaN or infinite values inside the mask", "fit")
        bvals = np.asarray(gtab.bvals, dtype=np.float64)
        bvecs = np.nan_to_num(np.asarray(gtab.bvecs, dtype=np.float64))
        b0 = np.asarray(gtab.b0s_mask, dtype=bool)
        bvecs[b0] = 0.0
        bvals_out = np.where(b0, 0.0, bvals)
        n_mask = int(m.sum())
        number = self.response_voxels or max(1, min(300, n_mask // 10))
        with tempfile.TemporaryDirectory(prefix="xscale-mrtrix-") as tmp:
            work = Path(tmp)
            save_nifti(work / "dwi.nii", clean.astype(np.float32), np.eye(4))
            save_nifti(work / "mask.nii", m.astype(np.uint8), np.eye(4))
            # identity affine: MRtrix's scanner frame is the voxel frame (module docstring)
            np.savetxt(work / "grad.b", np.column_stack([bvecs, bvals_out]), fmt="%.10g")
            fod_path, response = run_mrtrix_csd(
                work / "dwi.nii", workdir=work, grad=work / "grad.b", mask=work / "mask.nii",
                lmax=self.lmax, response_voxels=number, nthreads=self.nthreads,
                timeout_s=self.timeout_s)
            fod = read_sh(fod_path, convention=MRTRIX)
            if fod.sh.shape[:3] != arr.shape[:3] or not np.allclose(fod.affine, np.eye(4)):
                raise ModelFailure(f"dwi2fod wrote a grid {fod.sh.shape[:3]} / affine other "
                                   "than its input's", "output")
            sh = np.where(m[..., None], fod.sh.astype(np.float64), 0.0)
        return MrtrixCSDFit(sh, self.lmax, response)


def mrtrix_csd(*, lmax: int = 8, response_voxels: int | None = None, nthreads: int = 1,
               timeout_s: float = 600.0) -> MrtrixCSD:
    """MRtrix3 CSD (``dwi2response tournier`` + ``dwi2fod csd``); needs MRtrix3 on PATH."""
    return MrtrixCSD(lmax=lmax, response_voxels=response_voxels, nthreads=nthreads,
                     timeout_s=timeout_s)
