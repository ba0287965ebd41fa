"""A phantom written by `xscale phantom` and run through its manifest scores as in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from validation.cli import main

KEYS = ["case", "region", "model", "metric", "statistic"]


def test_written_phantom_scores_like_the_in_memory_run(tmp_path: Path) -> None:
    data = tmp_path / "phantom"
    assert main(["phantom", "default", "-o", str(data), "--cases", "cross90", "-q"]) == 0
    (tmp_path / "disk.toml").write_text(
        '[run]\nname = "disk"\n[data]\nmanifest = "phantom/suite.toml"\n'
        "[tracking]\nenabled = false\n"
    )
    assert main(["run", str(tmp_path / "disk.toml"), "-o", str(tmp_path / "disk"), "-q",
                 "--no-report"]) == 0
    disk = pd.read_csv(tmp_path / "disk" / "scores.csv")
    assert set(disk.case) == {"cross90", "all"}

    # the in-memory run of the same case: restrict the built-in suite to it
    import phantoms

    (spec,) = [s for s in phantoms.get_suite("default") if s.case_id == "cross90"]
    real_get_suite = phantoms.get_suite
    try:
        phantoms.get_suite = lambda name: [spec]  # type: ignore[assignment]
        (tmp_path / "mem.toml").write_text('[run]\nname = "mem"\n[tracking]\nenabled = false\n')
        assert main(["run", str(tmp_path / "mem.toml"), "-o", str(tmp_path / "mem"), "-q",
                     "--no-report"]) == 0
    finally:
        phantoms.get_suite = real_get_suite  # type: ignore[assignment]
    memory = pd.read_csv(tmp_path / "mem" / "scores.csv")
    merged = disk.merge(memory, on=KEYS, suffixes=("_disk", "_mem"), how="outer",
                        indicator=True)
    assert (merged["_merge"] == "both").all()
    values = merged[merged.statistic.isin(["median", "mean", "iqr_low", "iqr_high"])]
    # float32 text round trip of the b-vectors is the only difference between the two
    np.testing.assert_allclose(values.value_disk, values.value_mem, rtol=0, atol=1e-4)
    counts = merged[merged.statistic.isin(["n", "n_undefined"])]
    assert (counts.value_disk == counts.value_mem).all()
