"""`xscale report RUN`."""

from __future__ import annotations

import shutil

from reports import build_report
from validation.cli import main


def test_report_command_rebuilds_the_same_index(make_run, capsys) -> None:
    run = make_run("run", cases=[{"case": "a", "crossing_angle_deg": 45.0},
                                 {"case": "b", "crossing_angle_deg": 90.0}],
                   with_report_data=False)
    first = build_report(run).read_bytes()
    shutil.rmtree(run / "derivatives")
    assert main(["report", str(run)]) == 0
    index = run / "report" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    assert index.read_bytes() == first


def test_report_command_user_errors(make_run, tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    run = make_run("old", schema_version=0, with_report_data=False, with_voxels=False)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xscale report: error: ") and "schema version 0" in err
    assert not (run / "report").exists()
