"""Fixtures shared by the real-data tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real-data"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/real-data built into a temporary folder (dipy's small_64D + microscopy).

    Modules that need another layout define their own ``example`` fixture.
    """
    if not (Path(__import__("dipy").__file__).parent / "data" / "files" / "small_64D.nii"
            ).exists():
        pytest.skip("dipy's small_64D is not shipped")
    spec = importlib.util.spec_from_file_location("make_example", EXAMPLE / "make_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("example") / "data"
    module.main(out)
    return out
