"""External models: entry points, dotted paths, the example plug-in package and its docs."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from validation.models import (
    ModelFailure,
    ModelNotFoundError,
    ModelSpec,
    check_params,
    fit_case,
    list_models,
    resolve_factory,
)
from validation.models.conformance import tiny_phantom

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "xscale-example-model"


def _fake_dist(site: Path, name: str, entry_points: dict[str, str]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[xscale.models]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_dist(site, "plugin_one", {
        "sleepy": "validation.models.testing:SleepingModel",
        "csd": "validation.models.testing:NaNModel",
        "twice": "validation.models.testing:NaNModel",
        "broken": "no_such_module_xyz:Model",
    })
    _fake_dist(site, "plugin_two", {"twice": "validation.models.testing:RaisingModel"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def test_entry_point_models_resolve_and_are_listed(fake_plugins):
    factory, source, target = resolve_factory("sleepy")
    assert source == "entry-point" and target == "validation.models.testing:SleepingModel"
    assert factory(seconds=0).seconds == 0
    rows = {(r.name, r.source): r for r in list_models()}
    sleepy = rows[("sleepy", "entry-point")]
    assert sleepy.error is None and sleepy.capabilities.gives_sh
    assert sleepy.params == {"seconds": 3600.0}


def test_builtin_names_win_and_conflicts_are_reported(fake_plugins):
    assert resolve_factory("csd")[1] == "builtin"
    rows = {(r.name, r.source): r for r in list_models()}
    assert "taken by a built-in" in rows[("csd", "entry-point")].error
    assert "several packages" in rows[("twice", "entry-point")].error
    with pytest.raises(ModelNotFoundError, match="registered by several packages"):
        resolve_factory("twice")


def test_a_broken_entry_point_is_listed_with_its_error(fake_plugins):
    rows = {r.name: r for r in list_models()}
    assert rows["broken"].capabilities is None
    assert "no_such_module_xyz" in rows["broken"].error
    with pytest.raises(ModelNotFoundError, match="fails to load"):
        resolve_factory("broken")


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("no_such_module_xyz:Model", "cannot import module 'no_such_module_xyz'"),
        ("validation.models.testing:Nope", "has no attribute 'Nope'"),
        ("validation.models.testing:", "not of the form"),
        ("validation.models.testing:__doc__", "not callable"),
        ("no-such-model", "unknown model 'no-such-model'"),
    ],
)
def test_bad_model_names_are_user_errors(name, pattern):
    with pytest.raises(ModelNotFoundError, match=pattern):
        resolve_factory(name)


def test_check_params_names_unknown_parameters():
    check_params("csd", {"sh_order_max": 6, "lambda_": 0.5})
    with pytest.raises(ModelNotFoundError, match=r"unknown parameter\(s\) lamda; known: .*lambda_"):
        check_params("csd", {"lamda": 1})
    with pytest.raises(ModelNotFoundError, match="known: none"):
        check_params("oracle", {"x": 1})


def test_dotted_path_model_is_fitted():
    ph = tiny_phantom(shape=(3, 2, 1), snr=None)
    spec = ModelSpec("validation.models.testing:CountingModel", "count", "Count", {"level": 3.0})
    out = fit_case(spec, ph.data, ph.bvals, ph.bvecs, ph.mask)
    # a delta along i: the first peak of every fitted voxel is the i axis (the quadratic
    # refinement of a sharp order-8 delta is within a fraction of a degree)
    first = out.peaks[ph.mask][:, 0]
    assert np.degrees(np.arccos(np.abs(first[:, 0]).min())) < 0.5


def test_capabilities_dict_with_unknown_key_fails_cleanly():
    class Model:
        name = "bad-caps"
        capabilities = {"gives_sh": True, "gives_colour": True}

        def fit(self, data, gtab, *, mask=None):
            raise AssertionError("never called")

    from validation.models import capabilities_of

    with pytest.raises(ModelFailure, match=r"unknown capabilities \['gives_colour'\]"):
        capabilities_of(Model())


# ----------------------------------------------------------------------------- the example


def _code_blocks(markdown: str) -> dict[str, str]:
    """```python blocks whose first line is '# file: <path>' -> {path: code}."""
    blocks = {}
    for body in re.findall(r"```python\n(.*?)```", markdown, flags=re.S):
        first, _, rest = body.partition("\n")
        m = re.fullmatch(r"# file: (\S+)", first.strip())
        if m:
            blocks[m.group(1)] = rest
    return blocks


def test_docs_show_the_example_package_verbatim():
    blocks = _code_blocks((ROOT / "docs" / "plugins.md").read_text())
    assert "xscale_example_model/__init__.py" in blocks
    for rel, code in blocks.items():
        assert code == (EXAMPLE / rel).read_text(), f"docs/plugins.md differs from {rel}"
    toml_blocks = re.findall(r"```toml\n# file: pyproject.toml\n(.*?)```",
                             (ROOT / "docs" / "plugins.md").read_text(), flags=re.S)
    assert toml_blocks and toml_blocks[0] == (EXAMPLE / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example package into this interpreter's environment, then remove it."""
    src = tmp_path_factory.mktemp("example") / "xscale-example-model"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip"]
    done = subprocess.run(
        pip + ["install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    importlib.invalidate_caches()
    try:
        yield
    finally:
        subprocess.run(pip + ["uninstall", "-y", "-q", "xscale-example-model"],
                       capture_output=True, timeout=300)
        importlib.invalidate_caches()


def _xscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "validation", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_example_plugin_installs_is_listed_checked_and_fitted(installed_example, tmp_path):
    listed = _xscale("models", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    row = rows["example-qball"]
    assert row["source"] == "entry-point" and row["error"] is None
    assert row["target"] == "xscale_example_model:ExampleQballModel"
    assert row["capabilities"]["gives_sh"] and not row["capabilities"]["gives_odf"]
    assert row["params"] == {"sh_order_max": 6, "lambda_lb": 0.006}

    checked = _xscale("check-model", "example-qball")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout

    ph = tiny_phantom(shape=(6, 2, 1), snr=None)
    out = fit_case(ModelSpec("example-qball", "qball", "Example Q-ball", {}),
                   ph.data, ph.bvals, ph.bvecs, ph.mask)
    single = ph.truth.nufo == 1
    cos = np.abs(np.sum(out.peaks[single][:, 0] * ph.truth.peaks[single][:, 0], axis=-1))
    assert np.median(np.degrees(np.arccos(np.clip(cos, 0, 1)))) < 5.0


@pytest.mark.slow  # a whole `xscale run` of the default suite (about a minute)
def test_example_plugin_is_scored_by_xscale_run(installed_example, tmp_path):
    pytest.importorskip("validation.fod", reason="the run needs validation.fod")
    config = tmp_path / "plugin.toml"
    config.write_text(
        '[run]\nname = "plugin"\n[data]\nsuite = "default"\n'
        '[[models]]\nname = "example-qball"\nlabel = "qball"\n'
        '[[models]]\nname = "validation.models.testing:SleepingModel"\nlabel = "sleepy"\n'
        'timeout_s = 1\n[tracking]\nenabled = false\n'
    )
    done = _xscale("run", str(config), "-o", str(tmp_path / "run"), "--no-report")
    assert done.returncode == 0, done.stderr[-2000:]
    import pandas as pd

    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    f1 = scores.query("model == 'qball' and metric == 'peak_f1' and case == 'all' "
                      "and region == 'all' and statistic == 'median'")
    assert len(f1) == 1 and 0.5 < f1["value"].iloc[0] <= 1.0
    failures = json.loads((tmp_path / "run" / "failures.json").read_text())
    sleepy = [f for f in failures if f["model"] == "sleepy"]
    assert sleepy and all(f["stage"] == "timeout" for f in sleepy)
