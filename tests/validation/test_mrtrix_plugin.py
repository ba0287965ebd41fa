"""The ``mrtrix-csd`` plug-in (validation.models.mrtrix) through the plug-in contract.

The MRtrix-backed tests need the MRtrix3 programs (Debian package ``mrtrix3``); they skip
without them unless XSCALE_REQUIRE_EXTERNAL=1.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from validation.models import mrtrix
from validation.models.protocol import ModelFailure, capabilities_of

DOTTED = "validation.models.mrtrix:MrtrixCSD"


def _require_mrtrix() -> None:
    if not mrtrix.mrtrix_available():
        reason = "MRtrix3 dwi2response / dwi2fod not found (apt-get install mrtrix3)"
        if os.environ.get("XSCALE_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{reason} (XSCALE_REQUIRE_EXTERNAL=1: external programs are required)")
        pytest.skip(reason)


def test_refused_without_mrtrix_on_path(monkeypatch):
    monkeypatch.setattr(mrtrix.shutil, "which", lambda name: None)
    assert not mrtrix.mrtrix_available()
    with pytest.raises(RuntimeError, match="dwi2response, dwi2fod not on PATH"):
        mrtrix.MrtrixCSD()
    from validation.models.registry import make_model

    with pytest.raises(ModelFailure, match="not on PATH") as info:
        make_model(DOTTED)
    assert info.value.stage == "init"


@pytest.mark.parametrize(("params", "message"), [({"lmax": 7}, "lmax 7"),
                                                  ({"response_voxels": 0}, "response_voxels")])
def test_bad_hyper_parameters(monkeypatch, params, message):
    monkeypatch.setattr(mrtrix.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(ValueError, match=message):
        mrtrix.MrtrixCSD(**params)


def test_declared_capabilities(monkeypatch):
    monkeypatch.setattr(mrtrix.shutil, "which", lambda name: f"/usr/bin/{name}")
    model = mrtrix.mrtrix_csd(lmax=6)
    caps = capabilities_of(model)
    assert model.name == "mrtrix-csd" and model.lmax == 6
    assert caps.gives_sh and caps.gives_odf and not caps.voxelwise


@pytest.mark.external
def test_fit_on_the_tiny_phantom_honours_the_mask():
    _require_mrtrix()
    from dipy.core.gradients import gradient_table
    from dipy.data import get_sphere

    from validation.models.conformance import tiny_phantom
    from validation.models.registry import make_model

    ph = tiny_phantom(snr=None)
    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    model = make_model(DOTTED, {"lmax": 8})
    fit = model.fit(ph.data, gtab, mask=ph.mask)  # NaN outside the mask is ignored
    assert fit.shm_coeff.shape == ph.mask.shape + (45,)
    assert np.all(fit.shm_coeff[~ph.mask] == 0)
    assert fit.response.shape == (5,) and fit.response[0] > 0
    sphere = get_sphere(name="repulsion724")
    odf = fit.odf(sphere)
    single = ph.mask & (ph.truth.nufo == 1)
    peak = sphere.vertices[np.argmax(odf[single], axis=-1)]
    truth = ph.truth.peaks[single][:, 0]
    angle = np.degrees(np.arccos(np.clip(np.abs(np.sum(peak * truth, axis=-1)), 0, 1)))
    assert np.median(angle) < 5.0


@pytest.mark.external
def test_mrtrix_failure_is_a_model_failure(tmp_path):
    _require_mrtrix()
    (tmp_path / "dwi.nii").write_text("not an image")
    np.savetxt(tmp_path / "grad.b", [[0, 0, 0, 0], [1, 0, 0, 1000]])
    with pytest.raises(ModelFailure, match="dwi2response exited with") as info:
        mrtrix.run_mrtrix_csd(tmp_path / "dwi.nii", workdir=tmp_path, grad=tmp_path / "grad.b")
    assert info.value.stage == "fit" and "\n" not in info.value.reason


@pytest.mark.external
@pytest.mark.slow
def test_check_model_passes(capsys):
    _require_mrtrix()
    from validation.cli import main

    assert main(["check-model", DOTTED]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "gives_sh" in out
    assert shutil.which("dwi2fod")


def test_mrtrix_csd_is_registered_exactly_when_mrtrix_is_on_path() -> None:
    import shutil

    from validation.models import list_models

    names = {info.name for info in list_models()}
    on_path = bool(shutil.which("dwi2fod") and shutil.which("dwi2response"))
    assert ("mrtrix-csd" in names) == on_path
    if os.environ.get("XSCALE_REQUIRE_EXTERNAL") == "1":
        assert on_path, "XSCALE_REQUIRE_EXTERNAL=1 but MRtrix3 is not on PATH"


def test_mrtrix_csd_scored_next_to_csd_on_the_crossing_angle_suite(tmp_path) -> None:
    import pandas as pd

    from validation.cli import main

    _require_mrtrix()
    config = tmp_path / "peers.toml"
    config.write_text(
        '[run]\nname = "peers"\n[data]\nsuite = "crossing-angle"\n'
        '[[models]]\nname = "csd"\n[[models]]\nname = "mrtrix-csd"\nlabel = "mrtrixcsd"\n'
        "[tracking]\nenabled = false\n"
    )
    out = tmp_path / "peers"
    assert main(["run", str(config), "-o", str(out), "-q", "--no-report"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert (out / "failures.json").read_text().strip() == "[]"
    single = scores[(scores.case == "all") & (scores.region == "single")
                    & (scores.metric == "peak_angular_error_deg")
                    & (scores.statistic == "median")].set_index("model").value
    # both CSDs find single-fibre directions; the same b-vectors in both conventions
    assert single["csd"] < 5 and single["mrtrixcsd"] < 5
    assert abs(single["csd"] - single["mrtrixcsd"]) < 2
    cases = set(scores.case) - {"all"}
    assert len(cases) == 5
