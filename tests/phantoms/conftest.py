"""Fixtures of the phantom tests."""

from __future__ import annotations

import pytest
from phantom_helpers import small_spec


@pytest.fixture
def make_spec():
    return small_spec
