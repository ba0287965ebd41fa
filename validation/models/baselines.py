"""Baselines that bracket every score: ``oracle`` (the truth, a ceiling) and ``isotropic``
(no peaks and an l = 0 only fODF, a floor)."""

from __future__ import annotations

from typing import Any

import numpy as np

from validation.models.protocol import Capabilities

__all__ = ["IsotropicModel", "OracleModel"]

#: SH coefficient c00 of the uniform density on the sphere (integral 1): 1 / (2 sqrt(pi))
UNIFORM_C00 = 0.5 / np.sqrt(np.pi)


class _ArrayFit:
    """A fit made of given arrays: peaks (..., K, 3), peak values (..., K), SH (..., C)."""

    def __init__(self, peaks: np.ndarray, values: np.ndarray, shm_coeff: np.ndarray):
        self._peaks = peaks
        self._values = values
        self.shm_coeff = shm_coeff

    def peaks(self) -> tuple[np.ndarray, np.ndarray]:
        return self._peaks, self._values


class OracleModel:
    """The ground truth as a model: geometric peaks and the truth fODF (a ceiling).

    Declares ``needs_truth``: the runner passes ``truth`` (an object with ``.peaks``
    (X, Y, Z, K, 3), ``.fractions`` (X, Y, Z, K) and ``.fod_sh`` (X, Y, Z, C)) to ``fit``.
    The data are ignored.
    """

    name = "oracle"
    capabilities = Capabilities(
        gives_odf=False, gives_sh=True, gives_peaks=True, needs_truth=True, voxelwise=False
    )

    def fit(
        self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None, truth: Any = None
    ) -> _ArrayFit:
        if truth is None:
            raise ValueError("oracle needs the ground truth (truth=None given)")
        peaks = np.asarray(truth.peaks, dtype=np.float64)
        if peaks.shape[:3] != data.shape[:3]:
            raise ValueError(
                f"truth peaks have spatial shape {peaks.shape[:3]}, data {data.shape[:3]}"
            )
        fractions = getattr(truth, "fractions", None)
        if fractions is None:
            values = (np.linalg.norm(peaks, axis=-1) > 0).astype(np.float64)
        else:
            values = np.asarray(fractions, dtype=np.float64)
        fod_sh = getattr(truth, "fod_sh", None)
        if fod_sh is None:
            raise ValueError("oracle needs truth.fod_sh (the truth fODF in SH)")
        return _ArrayFit(peaks, values, np.asarray(fod_sh, dtype=np.float64))


class IsotropicModel:
    """No peaks and the uniform fODF (only the l = 0 SH coefficient): a floor.

    Its ACC with anything is undefined (no power at l >= 2) and counted as such.
    """

    name = "isotropic"
    capabilities = Capabilities(gives_odf=False, gives_sh=True, gives_peaks=True)

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _ArrayFit:
        spatial = data.shape[:-1]
        return _ArrayFit(
            np.zeros(spatial + (0, 3)),
            np.zeros(spatial + (0,)),
            np.full(spatial + (1,), UNIFORM_C00),
        )


def oracle() -> OracleModel:
    """The ``oracle`` baseline (no hyper-parameters)."""
    return OracleModel()


def isotropic() -> IsotropicModel:
    """The ``isotropic`` baseline (no hyper-parameters)."""
    return IsotropicModel()
