import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phantoms
from phantoms import CaseSpec, PhantomError, get_suite, list_suites


def test_list_suites_has_the_issue_suites():
    names = list_suites()
    for name in ("default", "crossing-angle", "three-way", "dispersion", "snr", "geometry"):
        assert name in names


@pytest.mark.parametrize("name", list_suites())
def test_suites_have_unique_slug_ids_and_roundtrip(name):
    cases = get_suite(name)
    ids = [c.case_id for c in cases]
    assert len(ids) == len(set(ids)) and len(ids) >= 1
    for c in cases:
        assert CaseSpec.from_dict(c.to_dict()) == c
        cond = c.conditions()
        assert "case_id" not in cond
        assert all(isinstance(v, float | int | str) for v in cond.values())


def test_crossing_angle_suite_angles():
    angles = sorted(c.crossing_angle_deg for c in get_suite("crossing-angle"))
    assert angles == [30.0, 45.0, 60.0, 75.0, 90.0]


def test_snr_suite_range_and_default_snr():
    snrs = sorted(c.snr for c in get_suite("snr"))
    assert snrs[0] == 5.0 and snrs[-1] == 50.0
    assert all(c.snr == 30.0 for c in get_suite("default"))


def test_unknown_suite_is_phantom_error():
    with pytest.raises(PhantomError, match="suite 'nope' is unknown"):
        get_suite("nope")
    assert issubclass(PhantomError, ValueError)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"geometry": "spiral"}, "geometry"),
        ({"crossing_angle_deg": 0.0}, "crossing_angle_deg"),
        ({"packing": 0.9}, "packing"),
        ({"kappa": -1.0}, "kappa"),
        ({"g_ratio": 1.5}, "g_ratio"),
        ({"scheme": "b42"}, "scheme"),
        ({"snr": 0.0}, "snr"),
        ({"contrast": "mri"}, "contrast"),
    ],
)
def test_invalid_parameters_name_the_input(kw, match):
    with pytest.raises(PhantomError, match=match):
        CaseSpec("x", **kw)


def test_bad_case_id_and_unknown_keys():
    with pytest.raises(PhantomError, match="case_id"):
        CaseSpec("Bad Id")
    with pytest.raises(PhantomError, match="unknown keys: colour"):
        CaseSpec.from_dict({"case_id": "a", "colour": 1})


def test_noise_free_snr_roundtrips_as_inf():
    c = CaseSpec("a", snr=None)
    assert c.to_dict()["snr"] == math.inf
    assert c.conditions()["snr"] == math.inf
    assert CaseSpec.from_dict(c.to_dict()).snr is None


@settings(max_examples=30, deadline=None)
@given(
    angle=st.floats(1.0, 90.0),
    kappa=st.one_of(st.just(math.inf), st.floats(0.5, 1000.0)),
    snr=st.one_of(st.none(), st.floats(1.0, 100.0)),
    scheme=st.sampled_from(phantoms.list_schemes()),
    rot=st.tuples(*[st.floats(-180, 180)] * 3),
)
def test_to_dict_from_dict_roundtrip(angle, kappa, snr, scheme, rot):
    c = CaseSpec("h", crossing_angle_deg=angle, kappa=kappa, snr=snr, scheme=scheme,
                 rotation_deg=rot)
    assert CaseSpec.from_dict(c.to_dict()) == c


def test_schemes_shapes_and_unit_vectors():
    import numpy as np

    for name in phantoms.list_schemes():
        s = phantoms.get_scheme(name)
        assert s.bvals.shape[0] == s.bvecs.shape[0]
        dw = s.bvals > 50
        np.testing.assert_allclose(np.linalg.norm(s.bvecs[dw], axis=1), 1.0, atol=1e-12)
        assert np.all(s.bvecs[~dw] == 0)
    b1000 = phantoms.get_scheme("b1000-64")
    assert (b1000.bvals == 1000).sum() == 64
    hcp = phantoms.get_scheme("hcp-multishell")
    assert sorted(set(hcp.bvals.tolist())) == [0.0, 1000.0, 2000.0, 3000.0]
    with pytest.raises(PhantomError, match="scheme"):
        phantoms.get_scheme("b7")
