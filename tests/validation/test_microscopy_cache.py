"""Microscopy FODs in the content-hash cache (`xscale run --cache-dir`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

phantoms = pytest.importorskip("phantoms")

import validation.orientation  # noqa: E402
from validation.cases import phantom_case  # noqa: E402
from validation.config import resolve_config  # noqa: E402
from validation.runner import _microscopy_orientation, _Timer  # noqa: E402


@pytest.fixture()
def counted(monkeypatch):
    calls = []
    real = validation.orientation.structure_tensor_orientation
    monkeypatch.setattr(validation.orientation, "structure_tensor_orientation",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


def _case(seed=0):
    spec = dataclasses.replace(phantoms.get_suite("default")[1], grid_size=3)
    return phantom_case(spec, run_seed=seed)


def _fod(case, cfg, cache):
    return _microscopy_orientation(case.microscopy[0], case, cfg, 1, _Timer(),
                                   cache_dir=cache)[:3]


def _same(a, b):
    for name in ("sh", "peaks", "odi", "count", "weight"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_second_run_reads_the_fod_and_skips_render_and_tensor(tmp_path, counted,
                                                                 monkeypatch):
    import dask.array as da

    cfg = resolve_config(None)
    case = _case()
    fresh, info, _ = _fod(case, cfg, None)
    first, _, _ = _fod(case, cfg, tmp_path)
    assert len(counted) == 2
    case_again = _case()
    level = case_again.microscopy[0]
    assert isinstance(level.volume, da.Array)  # rendered lazily
    rendered = []
    real_compute = da.Array.compute
    monkeypatch.setattr(da.Array, "compute",
                        lambda self, **k: rendered.append(1) or real_compute(self, **k))
    cached, info2, project = _fod(case_again, cfg, tmp_path)
    assert len(counted) == 2 and not rendered  # neither rendered nor computed
    _same(fresh, first)
    _same(first, cached)
    assert info2 == info
    # registration perturbations still work from a cached FOD: the tensor runs on demand
    _same(project(level.voxel_to_dmri), fresh)
    assert len(counted) == 3


@pytest.mark.parametrize("section,key,value", [
    ("orientation", "rho_um", 30.0),
    ("fod", "relative_peak_threshold", 0.15),
    ("fod", "sh_order_max", 6),
    ("run", "seed", 1),  # another seed renders other noise
])
def test_what_the_fod_depends_on_changes_the_key(tmp_path, counted, section, key, value):
    cfg = resolve_config(None)
    _fod(_case(), cfg, tmp_path)
    cfg2 = resolve_config(None)
    cfg2[section][key] = value
    _fod(_case(), cfg2, tmp_path)
    assert len(counted) == 2


def test_data_from_disk_is_keyed_by_content(tmp_path, counted):
    cfg = resolve_config(None)
    case = _case()
    disk = dataclasses.replace(case, source={"manifest": "brain.toml", "dmri_sha256": "x"})
    a, _, _ = _fod(disk, cfg, tmp_path)
    b, _, _ = _fod(disk, cfg, tmp_path)
    assert len(counted) == 1
    _same(a, b)
    level = disk.microscopy[0]
    changed = np.array(np.asarray(level.volume), dtype=np.float32)
    changed[0, 0, 0] += 1.0
    disk2 = dataclasses.replace(disk, microscopy=[dataclasses.replace(level, volume=changed)])
    _fod(disk2, cfg, tmp_path)
    assert len(counted) == 2


def test_fod_peak_settings_reach_the_microscopy_fod(tmp_path):
    cfg = resolve_config(None)
    cfg["fod"]["relative_peak_threshold"] = 1.0  # the largest maximum only
    cfg["fod"]["sh_order_max"] = 6
    fod, info, _ = _fod(_case(), cfg, None)
    n_peaks = (np.abs(fod.peaks).sum(-1) > 0).sum(-1)
    assert n_peaks.max() == 1 and (n_peaks == 1).sum() > 0
    assert fod.sh.shape[-1] == 28
    assert info["relative_peak_threshold"] == 1.0
