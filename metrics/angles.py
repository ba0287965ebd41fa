"""Axial angles between orientations (a and -a are the same orientation)."""

from __future__ import annotations

import numpy as np

from metrics._validate import as_float_array, broadcast_pair, check_last_axis


def axial_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Axial angle without input checks; ``a`` and ``b`` broadcast over ``(..., 3)``.

    ``arctan2(|a x b|, |a . b|)`` is accurate near 0 and 90 degrees, where ``arccos``
    loses digits. Zero vectors give NaN.
    """
    dot = np.abs(np.einsum("...i,...i->...", a, b))
    cross = np.cross(a, b)
    sin = np.sqrt(np.einsum("...i,...i->...", cross, cross))
    theta = np.degrees(np.arctan2(sin, dot))
    zero = (np.einsum("...i,...i->...", a, a) == 0) | (np.einsum("...i,...i->...", b, b) == 0)
    if np.any(zero):
        theta = np.where(zero, np.nan, theta)
    return theta


def angular_error_deg(a, b) -> np.ndarray:
    """Axial angle between two orientation fields, in degrees.

    ``theta(a, b) = arccos(|a . b| / (|a| |b|))``, computed as
    ``arctan2(|a x b|, |a . b|)`` for accuracy, so that ``a`` and ``-a`` are the same
    orientation and the result lies in [0, 90].

    Parameters
    ----------
    a, b : array_like of shape (..., 3)
        Orientations (need not be unit length), components in the same frame. The
        leading axes broadcast against each other.

    Returns
    -------
    ndarray of shape (...)
        Angle in degrees in [0, 90]; NaN where either vector is zero (undefined) or
        contains NaN.

    Raises
    ------
    MetricInputError
        When the last axis is not of length 3 or the shapes do not broadcast.

    Examples
    --------
    >>> float(angular_error_deg([1, 0, 0], [-1, 1, 0]))
    45.0
    """
    a = as_float_array(a, "a")
    b = as_float_array(b, "b")
    check_last_axis(a, 3, "a")
    check_last_axis(b, 3, "b")
    a, b = broadcast_pair(a, b, "a", "b")
    return axial_angle_deg(a, b)
