"""Content-hash cache: keys, atomic entries, and fits recomputed only when inputs change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.cache import ContentCache, cached_arrays, content_key, hash_array
from validation.models import ModelSpec, fit_case
from validation.models.conformance import tiny_phantom

COUNTING = "validation.models.testing:CountingModel"


def test_hash_array_depends_on_bytes_dtype_and_shape():
    a = np.arange(6, dtype=np.float64)
    assert hash_array(a) == hash_array(a.copy())
    assert hash_array(a) != hash_array(a.astype(np.float32))
    assert hash_array(a) != hash_array(a.reshape(2, 3))
    b = a.copy()
    b[3] = np.nextafter(b[3], 10)
    assert hash_array(a) != hash_array(b)
    # non-contiguous views hash like their contiguous copies
    m = np.arange(12.0).reshape(3, 4)
    assert hash_array(m[:, ::2]) == hash_array(np.ascontiguousarray(m[:, ::2]))


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.floats(
    allow_nan=False) | st.text(max_size=5), max_size=5))
def test_content_key_ignores_dict_order(params):
    reordered = dict(reversed(list(params.items())))
    assert content_key("k", params=params) == content_key("k", params=reordered)


def test_content_key_separates_kinds_and_values():
    assert content_key("a", x=1) != content_key("b", x=1)
    assert content_key("a", x=1) != content_key("a", x=2)
    assert content_key("a", x=np.zeros(2)) != content_key("a", x=np.ones(2))


def test_store_and_load_round_trip(tmp_path):
    cache = ContentCache(tmp_path)
    arrays = {"peaks": np.random.default_rng(0).normal(size=(2, 3)), "n": np.array(4)}
    path = cache.store("thing", "ab12", arrays, {"seconds": 1.5})
    assert path.is_dir()
    loaded, meta = cache.load("thing", "ab12")
    np.testing.assert_array_equal(loaded["peaks"], arrays["peaks"])
    assert meta == {"seconds": 1.5}
    assert cache.load("thing", "cd34") is None
    # nothing half-written is left beside the entry
    assert [p.name for p in path.parent.iterdir()] == ["ab12"]


def test_cached_arrays_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"fod": np.full(3, float(len(calls)))}

    a, hit_a = cached_arrays(tmp_path, "microscopy-fod", {"v": np.ones(2)}, compute)
    b, hit_b = cached_arrays(tmp_path, "microscopy-fod", {"v": np.ones(2)}, compute)
    c, hit_c = cached_arrays(tmp_path, "microscopy-fod", {"v": np.zeros(2)}, compute)
    assert (hit_a, hit_b, hit_c) == (False, True, False)
    assert len(calls) == 2
    np.testing.assert_array_equal(a["fod"], b["fod"])
    assert c["fod"][0] == 2.0
    d, hit_d = cached_arrays(None, "microscopy-fod", {"v": np.ones(2)}, compute)
    assert not hit_d and len(calls) == 3


@pytest.fixture(scope="module")
def phantom():
    return tiny_phantom(shape=(3, 2, 1), snr=None)


def _fit(ph, counter, level, cache_dir, label="a", data=None):
    spec = ModelSpec(COUNTING, label, label, {"counter": str(counter), "level": level})
    return fit_case(spec, ph.data if data is None else data, ph.bvals, ph.bvecs, ph.mask,
                    cache_dir=cache_dir)


def _count(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_changing_one_models_parameter_refits_only_that_model(tmp_path, phantom):
    cache = tmp_path / "cache"
    ca, cb = tmp_path / "a.txt", tmp_path / "b.txt"
    first_a = _fit(phantom, ca, 1.0, cache, "a")
    first_b = _fit(phantom, cb, 1.0, cache, "b")
    assert (_count(ca), _count(cb)) == (1, 1)
    assert not first_a.cached and not first_b.cached
    # re-run with b's hyper-parameter changed
    again_a = _fit(phantom, ca, 1.0, cache, "a")
    again_b = _fit(phantom, cb, 2.0, cache, "b")
    assert (_count(ca), _count(cb)) == (1, 2)
    assert again_a.cached and not again_b.cached
    np.testing.assert_array_equal(again_a.sh, first_a.sh)
    np.testing.assert_array_equal(again_a.peaks, first_a.peaks)
    np.testing.assert_allclose(again_b.sh, 2.0 * first_b.sh)
    assert again_a.fit_seconds == pytest.approx(first_a.fit_seconds)


def test_changed_data_refits(tmp_path, phantom):
    cache = tmp_path / "cache"
    counter = tmp_path / "c.txt"
    _fit(phantom, counter, 1.0, cache)
    data = phantom.data.copy()
    data[0, 0, 0, 5] += 1.0
    _fit(phantom, counter, 1.0, cache, data=data)
    _fit(phantom, counter, 1.0, cache, data=data)
    assert _count(counter) == 2


def test_without_cache_dir_every_call_fits(tmp_path, phantom):
    counter = tmp_path / "c.txt"
    _fit(phantom, counter, 1.0, None)
    _fit(phantom, counter, 1.0, None)
    assert _count(counter) == 2
