"""Axial angle: hand-computed values and properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metrics import MetricInputError, angular_error_deg

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
vec3 = arrays(np.float64, (3,), elements=finite).filter(lambda v: np.linalg.norm(v) > 1e-3)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 0, 0], [1, 0, 0], 0.0),
        ([1, 0, 0], [-1, 0, 0], 0.0),
        ([1, 0, 0], [0, 1, 0], 90.0),
        ([1, 0, 0], [1, 1, 0], 45.0),
        ([1, 0, 0], [-1, 1, 0], 45.0),
        ([0, 0, 2], [1, 0, np.sqrt(3)], 30.0),
        ([0, 0, 1], [-np.sqrt(3), 0, -1], 60.0),
    ],
)
def test_known_angles(a, b, expected):
    assert angular_error_deg(a, b) == pytest.approx(expected, abs=1e-12)


def test_small_angle_is_accurate():
    # arccos would lose about half the digits here
    eps = 1e-9
    theta = angular_error_deg([1.0, 0.0, 0.0], [1.0, eps, 0.0])
    assert theta == pytest.approx(np.degrees(eps), rel=1e-9)


def test_broadcasting_and_zero_vectors():
    a = np.array([[1.0, 0, 0], [0, 0, 0]])
    out = angular_error_deg(a, [0, 1, 0])
    assert out.shape == (2,)
    assert out[0] == 90.0 and np.isnan(out[1])


def test_bad_shapes_raise():
    with pytest.raises(MetricInputError, match="last axis of length 3"):
        angular_error_deg(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(MetricInputError, match="do not broadcast"):
        angular_error_deg(np.ones((4, 3)), np.ones((5, 3)))


@settings(max_examples=200, deadline=None)
@given(vec3, vec3, st.sampled_from([-2.0, -1.0, 0.5, 3.0]))
def test_properties(a, b, scale):
    theta = angular_error_deg(a, b)
    assert 0.0 <= theta <= 90.0
    assert theta == pytest.approx(angular_error_deg(b, a), abs=1e-9)
    # sign flips and rescaling are the same orientation
    assert theta == pytest.approx(angular_error_deg(-a, b), abs=1e-9)
    assert theta == pytest.approx(angular_error_deg(a, scale * b), abs=1e-9)
    # agrees with the arccos definition of domain.md (loosely: arccos is coarse near 0)
    cos = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert theta == pytest.approx(np.degrees(np.arccos(min(cos, 1.0))), abs=1e-5)
