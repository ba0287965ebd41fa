"""Input checks shared by the metric modules (one-line MetricInputError messages)."""

from __future__ import annotations

import numpy as np

from metrics.errors import MetricInputError


def as_float_array(x, name: str) -> np.ndarray:
    """Return ``x`` as a float32/float64 array (other dtypes are promoted to float64)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} has dtype {arr.dtype}; expected a real numeric array")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr


def check_last_axis(arr: np.ndarray, size: int, name: str) -> None:
    if arr.ndim < 1 or arr.shape[-1] != size:
        raise MetricInputError(
            f"{name} has shape {arr.shape}; expected a last axis of length {size}"
        )


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise MetricInputError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def broadcast_pair(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str):
    try:
        return np.broadcast_arrays(a, b)
    except ValueError:
        raise MetricInputError(
            f"{name_a} with shape {a.shape} and {name_b} with shape {b.shape} do not broadcast"
        ) from None
