"""Deliberately broken and instrumented models, to test failure isolation and check-model.

Use them by dotted path, e.g. ``xscale check-model validation.models.testing:NaNModel``.
Each one is a small, plain implementation of the plug-in contract.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from validation.models.protocol import Capabilities

__all__ = [
    "CountingModel",
    "CrashingModel",
    "NaNModel",
    "RaisingModel",
    "SleepingModel",
    "UnmaskedModel",
    "WrongShapeModel",
]


class _SHFit:
    """A fit holding SH coefficients (descoteaux07, legacy=False)."""

    def __init__(self, shm_coeff: np.ndarray):
        self.shm_coeff = shm_coeff


def _sh_along_i(spatial: tuple[int, ...]) -> np.ndarray:
    """Order-8 SH of a Dirac delta along the i axis, per voxel."""
    from dipy.reconst.shm import real_sh_descoteaux

    ylm, _, _ = real_sh_descoteaux(8, np.array([np.pi / 2]), np.array([0.0]), legacy=False)
    return np.broadcast_to(ylm[0], spatial + (ylm.shape[1],)).copy()


class RaisingModel:
    """Raises ``ValueError("this model always fails")`` in ``fit``."""

    name = "raising"
    capabilities = Capabilities(gives_odf=False, gives_sh=True)

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> Any:
        raise ValueError("this model always fails")


class NaNModel:
    """Returns NaN SH coefficients in every voxel."""

    name = "nan"
    capabilities = Capabilities(gives_odf=False, gives_sh=True)

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _SHFit:
        return _SHFit(np.full(data.shape[:-1] + (45,), np.nan))


class WrongShapeModel:
    """Returns an ODF with one value too few per voxel."""

    name = "wrong-shape"

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> Any:
        class _Fit:
            def odf(self, sphere: Any) -> np.ndarray:
                return np.ones(data.shape[:-1] + (len(sphere.vertices) - 1,))

        return _Fit()


class SleepingModel:
    """Sleeps ``seconds`` before returning a delta along i (for timeouts)."""

    name = "sleeping"
    capabilities = Capabilities(gives_odf=False, gives_sh=True)

    def __init__(self, *, seconds: float = 3600.0):
        self.seconds = seconds

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _SHFit:
        time.sleep(self.seconds)
        return _SHFit(_sh_along_i(data.shape[:-1]))


class CrashingModel:
    """Kills its own process (as a segfault or the OOM killer would)."""

    name = "crashing"
    capabilities = Capabilities(gives_odf=False, gives_sh=True)

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _SHFit:
        os._exit(3)


class UnmaskedModel:
    """Ignores the mask: a delta scaled by the mean signal of the whole volume, so the
    signal outside the mask changes (or NaNs) the output inside it."""

    name = "unmasked"
    capabilities = Capabilities(gives_odf=False, gives_sh=True, voxelwise=False)

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _SHFit:
        return _SHFit(_sh_along_i(data.shape[:-1]) * data.mean() / 100.0)


class CountingModel:
    """A delta along i that appends one line per ``fit`` call to ``counter`` (a file path).

    For tests of the content-hash cache: the number of lines is the number of fits.
    ``level`` changes nothing but the hyper-parameters.
    """

    name = "counting"
    capabilities = Capabilities(gives_odf=False, gives_sh=True, voxelwise=False)

    def __init__(self, *, counter: str = "", level: float = 1.0):
        self.counter = counter
        self.level = level

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> _SHFit:
        if self.counter:
            with open(Path(self.counter), "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()}\n")
        return _SHFit(_sh_along_i(data.shape[:-1]) * self.level)
