"""The run directory lifecycle: temporary sibling, rename when complete, failed runs kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from validation.errors import RunExistsError
from validation.rundir import RunDirectory


def test_complete_run_is_renamed(tmp_path: Path) -> None:
    with RunDirectory(tmp_path / "r") as rd:
        rd.write_json("provenance.json", {"schema_version": 1})
        assert rd.path.parent == tmp_path and rd.path.name.startswith(".r.partial-")
        assert not (tmp_path / "r").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert (tmp_path / "r" / "run.log").is_file()


def test_exception_keeps_failed_run_with_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom") as info:
        with RunDirectory(tmp_path / "r") as rd:
            rd.write_text("scores.csv", "partial")
            raise RuntimeError("boom")
    assert not (tmp_path / "r").exists()
    (failed,) = list(tmp_path.iterdir())
    assert failed.name.startswith("r.failed-")
    assert info.value.xscale_failed_run == failed  # type: ignore[attr-defined]
    log = (failed / "run.log").read_text()
    assert "RuntimeError: boom" in log and "Traceback" in log


def test_existing_run_refused_then_replaced_only_when_complete(tmp_path: Path) -> None:
    with RunDirectory(tmp_path / "r") as rd:
        rd.write_json("provenance.json", {"v": 1})
    with pytest.raises(RunExistsError, match="--overwrite"):
        RunDirectory(tmp_path / "r")
    # a failing overwrite leaves the old run untouched
    with pytest.raises(ValueError):
        with RunDirectory(tmp_path / "r", overwrite=True) as rd:
            rd.write_json("provenance.json", {"v": 2})
            raise ValueError("fails half way")
    assert (tmp_path / "r" / "provenance.json").read_text().strip().endswith("}")
    assert '"v": 1' in (tmp_path / "r" / "provenance.json").read_text()
    with RunDirectory(tmp_path / "r", overwrite=True) as rd:
        rd.write_json("provenance.json", {"v": 3})
    assert '"v": 3' in (tmp_path / "r" / "provenance.json").read_text()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("r.failed-"))
    assert leftovers == ["r"]


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an XScale run directory"):
        RunDirectory(tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"
