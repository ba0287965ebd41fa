"""Run config: defaults written out, unknown keys named, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from validation.cli import main
from validation.config import dumps_config, resolve_config, slugify
from validation.errors import ConfigError


def test_default_config_is_complete() -> None:
    cfg = resolve_config(None)
    assert cfg["data"]["suite"] == "default"
    assert [m["label"] for m in cfg["models"]] == ["dti", "csd"]
    assert cfg["metrics"]["threshold_deg"] == 25.0
    assert cfg["run"]["seed"] == 0
    # round trip through the written TOML gives the same resolved config
    import tomllib

    again = resolve_config(tomllib.loads(dumps_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[runn]\nname = 'x'\n", "unknown key 'runn' in the top level (did you mean 'run'?)"),
        ("[run]\nseeed = 1\n", "unknown key 'seeed' in [run] (did you mean 'seed'?)"),
        ("[[models]]\nname = 'csd'\nparms = {}\n", "unknown key 'parms' in [[models]] entry 1"),
        ("[metrics]\nthreshold_deg = 'x'\n", "threshold_deg = 'x' should be a float"),
        ("[data]\nsuite = 'nope'\n", "suite 'nope' is unknown"),
        ("[[models]]\nname = 'csd'\n[[models]]\nname = 'csd'\n", "repeated: csd"),
        ("[[models]]\nname = 'csd'\nlabel = 'CSD 8'\n", "must be lower-case letters and digits"),
        ("[run]\nname = '../x'\n", "must be letters, digits"),
        ("[fod]\nrelative_peak_threshold = 0.0\n", "relative_peak_threshold must be in (0, 1]"),
        ("[fod]\nmin_separation_angle = 95.0\n", "min_separation_angle must be in (0, 90)"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_config(path)
    message = str(info.value)
    assert needle in message
    assert str(path) in message
    assert "\n" not in message


def test_misspelt_key_exits_2_naming_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text("[run]\nname = 'x'\n[metrics]\nthreshhold_deg = 20\n")
    out_dir = tmp_path / "out"
    code = main(["run", str(path), "-o", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "threshhold_deg" in err
    assert len(err.strip().splitlines()) == 1
    assert not out_dir.exists()
    assert list(tmp_path.iterdir()) == [path]


def test_slugify() -> None:
    assert slugify("MSMT-CSD") == "msmtcsd"
    assert slugify("my_pkg.models:Factory2") == "factory2"


def test_unknown_model_or_parameter_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[[models]]\nname = 'csd'\nparams = { sh_ordr_max = 6 }\n")
    with pytest.raises(ConfigError, match="sh_ordr_max"):
        resolve_config(path)
    path.write_text("[[models]]\nname = 'no-such-model'\n")
    with pytest.raises(ConfigError, match="no-such-model"):
        resolve_config(path)
