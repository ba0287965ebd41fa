"""map_voxels: the voxel-parallel step before a fit's chunks (CSD's response tensor fit)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.models import ModelSpec, fit_case
from validation.models.conformance import tiny_phantom
from validation.models.parallel import current_jobs, map_voxels, using_jobs


def _row_stats(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return v.sum(axis=1), np.stack([v.min(axis=1), v.max(axis=1), np.full(len(v), os.getpid())],
                                   axis=1)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(0, 60), piece=st.integers(1, 25), jobs=st.integers(1, 3))
def test_map_voxels_equals_one_call(n, piece, jobs):
    v = np.random.default_rng(n).normal(size=(n, 4))
    sums, stats = map_voxels(_row_stats, v, jobs=jobs, piece_voxels=piece)
    np.testing.assert_array_equal(sums, v.sum(axis=1))
    np.testing.assert_array_equal(stats[:, :2], np.stack([v.min(1), v.max(1)], 1).reshape(n, 2))
    assert sums.shape == (n,) and stats.shape == (n, 3)


def test_map_voxels_uses_that_many_processes():
    v = np.arange(40.0).reshape(20, 2)
    _, stats = map_voxels(_row_stats, v, jobs=3, piece_voxels=4)  # 5 pieces: 2 + 2 + 1
    pids = stats[:, 2].astype(int)
    assert len(set(pids)) == 3
    assert set(pids[:8]) == {os.getpid()}  # the first share is this process's
    _, stats = map_voxels(_row_stats, v, jobs=3, piece_voxels=100)  # one piece: one process
    assert set(stats[:, 2].astype(int)) == {os.getpid()}


def test_jobs_come_from_the_context():
    assert current_jobs() == 1
    v = np.zeros((12, 1))
    with using_jobs(2):
        assert current_jobs() == 2
        _, stats = map_voxels(_row_stats, v, piece_voxels=6)
        assert len(set(stats[:, 2].astype(int))) == 2
    assert current_jobs() == 1
    with pytest.raises(ValueError, match="positive integer"):
        with using_jobs(0):
            pass


def _fails_on_negative(v: np.ndarray) -> tuple[np.ndarray]:
    if (v < 0).any():
        raise ArithmeticError("negative voxel")
    return (v[:, 0],)


def test_errors_in_a_worker_name_the_cause():
    v = np.ones((10, 1))
    v[9] = -1  # in the second share
    with pytest.raises(RuntimeError, match="ArithmeticError: negative voxel"):
        map_voxels(_fails_on_negative, v, jobs=2, piece_voxels=5)
    v[0] = -1  # in this process's share: the exception itself, the worker stopped
    with pytest.raises(ArithmeticError, match="negative voxel"):
        map_voxels(_fails_on_negative, v, jobs=2, piece_voxels=5)


def test_outputs_must_be_per_voxel():
    with pytest.raises(ValueError, match=r"shape \(1,\) for 5 voxels"):
        map_voxels(lambda v: (v[:1, 0],), np.ones((5, 2)))
    with pytest.raises(ValueError, match="piece_voxels"):
        map_voxels(_row_stats, np.ones((5, 2)), piece_voxels=0)


def test_csd_response_is_the_same_for_any_jobs(monkeypatch):
    """The response tensor fit runs in pieces over the fit's processes; a 10^3 phantom in
    pieces of 64 voxels, fitted with jobs 1 and 2, gives bit-identical fits, and the
    response equals dipy's own estimator on dipy's own whole-volume tensor fit."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.csdeconv import response_from_mask_ssst
    from dipy.reconst.dti import TensorModel

    import validation.models.parallel as parallel

    monkeypatch.setattr(parallel, "PIECE_VOXELS", 64)
    ph = tiny_phantom(shape=(10, 10, 10), snr=30, rng=5)
    spec = ModelSpec("csd", "csd", "csd", {})
    one = fit_case(spec, ph.data, ph.bvals, ph.bvecs, ph.mask, jobs=1, chunk_voxels=50)
    two = fit_case(spec, ph.data, ph.bvals, ph.bvecs, ph.mask, jobs=2, chunk_voxels=50)
    assert one.details["response_evals"] == two.details["response_evals"]
    np.testing.assert_array_equal(one.sh, two.sh)
    np.testing.assert_array_equal(one.peaks, two.peaks)

    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    fa = np.nan_to_num(TensorModel(gtab).fit(ph.data, mask=ph.mask).fa)
    voxels = ph.mask & (fa > 0.7)
    assert one.details["response_voxels"] == int(voxels.sum()) >= 10
    (evals, _), _ = response_from_mask_ssst(gtab, ph.data, voxels)
    np.testing.assert_allclose(one.details["response_evals"], evals, rtol=1e-9)
