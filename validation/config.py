"""Run configuration: the TOML schema, its defaults, validation and the resolved form.

A config is a nested dict (parsed TOML). :func:`resolve_config` checks every key
against the schema (unknown keys are an error naming the key and the file), fills
in every default and returns a plain dict that is written back as ``config.toml``
in the run directory, so a run records exactly what it did.
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from validation.errors import ConfigError

#: The built-in default benchmark (``xscale run`` without a config).
DEFAULT_MODELS: list[dict[str, Any]] = [
    {"name": "dti", "label": "dti", "display_name": "DTI", "params": {}},
    {"name": "csd", "label": "csd", "display_name": "CSD (order 8)", "params": {}},
]

_TOP_LEVEL = {"run", "data", "models", "orientation", "fod", "metrics", "tracking", "gates",
              "crossscale", "registration"}

_SECTIONS: dict[str, dict[str, Any]] = {
    "run": {"name": "default", "seed": 0, "description": ""},
    "data": {"suite": None, "manifest": None},
    "orientation": {"sigma_um": None, "rho_um": None, "truncate": 4.0, "voxel_size_um": None},
    "fod": {"sh_order_max": 8, "relative_peak_threshold": 0.25, "min_separation_angle": 25.0},
    "metrics": {"threshold_deg": 25.0, "n_boot": 1000},
    "tracking": {
        "enabled": True,
        "models": ["csd"],
        "method": "deterministic",
        "seeds_per_voxel": 2,
        "step_size": 0.5,
        "max_angle_deg": 30.0,
        "stopping": "mask",
        "gfa_threshold": 0.1,
        "format": "trk",
    },
    # every pair of a case's microscopy levels compared on the dMRI grid (crossscale.csv);
    # voxel_sizes_um: extra levels rendered for built-in phantom suites (one per size)
    "crossscale": {"enabled": True, "voxel_sizes_um": []},
    # registration uncertainty (registration.csv): each microscopy level's transform
    # perturbed `perturbations` times (0 = off) by a random rigid transform (rotation
    # angle ~ N(0, rotation_deg), translation ~ N(0, translation_um) per axis), or by
    # refitting its landmarks with their estimated localisation error
    "registration": {"perturbations": 0, "rotation_deg": 1.0, "translation_um": 20.0,
                     "seed": 0},
}

_MODEL_KEYS: dict[str, Any] = {
    "name": "", "label": None, "display_name": None, "params": {}, "timeout_s": 600.0,
}

_SLUG = re.compile(r"^[a-z0-9]+$")


def slugify(text: str) -> str:
    """File label of a model: the lower-case letters and digits of ``text``."""
    return re.sub(r"[^a-z0-9]", "", text.lower().rsplit(":", 1)[-1])


def _unknown(key: str, allowed: set[str] | dict, where: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"{source}: unknown key '{key}' in {where}{hint}; allowed: {', '.join(sorted(allowed))}"
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML run config; a missing or unparsable file is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _check_type(value: Any, default: Any, key: str, where: str, source: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{source}: [{where}] {key} = {value!r} should be a {type(default).__name__}"
        )
    return value


def resolve_config(
    config: dict[str, Any] | str | Path | None, *, source: str | None = None
) -> dict[str, Any]:
    """Validate a run config and fill in every default.

    Parameters
    ----------
    config : dict, path or None
        Parsed TOML, a path to a TOML file, or None for the built-in default benchmark.
    source : str, optional
        Name of the config in error messages (default: the file path or ``<config>``).

    Returns
    -------
    dict
        The resolved config; ``config["data"]["manifest"]`` is made absolute relative to
        the config file's folder.
    """
    base_dir = Path.cwd()
    if config is None:
        raw: dict[str, Any] = {}
        source = source or "<default config>"
    elif isinstance(config, str | Path):
        raw = load_config_file(config)
        source = source or str(config)
        base_dir = Path(config).resolve().parent
    else:
        raw = copy.deepcopy(dict(config))
        source = source or "<config>"

    for key in raw:
        if key not in _TOP_LEVEL:
            raise _unknown(key, _TOP_LEVEL, "the top level", source)

    resolved: dict[str, Any] = {}
    for section, defaults in _SECTIONS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: [{section}] should be a table")
        out = copy.deepcopy(defaults)
        for key, value in given.items():
            if key not in defaults:
                raise _unknown(key, set(defaults), f"[{section}]", source)
            out[key] = _check_type(value, defaults[key], key, section, source)
        resolved[section] = out

    data = resolved["data"]
    if data["suite"] is not None and data["manifest"] is not None:
        raise ConfigError(f"{source}: [data] give either suite or manifest, not both")
    if data["manifest"] is not None:
        data["manifest"] = str((base_dir / data["manifest"]).resolve())
    elif data["suite"] is None:
        data["suite"] = "default"
    if data["suite"] is not None:
        from phantoms import list_suites

        if data["suite"] not in list_suites():
            raise ConfigError(
                f"{source}: [data] suite '{data['suite']}' is unknown; "
                f"built-in suites: {', '.join(list_suites())}"
            )

    if not isinstance(resolved["run"]["name"], str) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]*", resolved["run"]["name"]
    ):
        raise ConfigError(
            f"{source}: [run] name {resolved['run']['name']!r} must be letters, digits, '.', "
            "'_' or '-'"
        )

    models_raw = raw.get("models", DEFAULT_MODELS)
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f"{source}: [[models]] should be a non-empty array of tables")
    models = []
    for i, entry in enumerate(models_raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: [[models]] entry {i + 1} should be a table")
        for key in entry:
            if key not in _MODEL_KEYS:
                raise _unknown(key, set(_MODEL_KEYS), f"[[models]] entry {i + 1}", source)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: [[models]] entry {i + 1} needs a name")
        label = entry.get("label") or slugify(name)
        if not _SLUG.match(label):
            raise ConfigError(
                f"{source}: [[models]] label {label!r} must be lower-case letters and digits"
            )
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: [[models]] {label}: params should be a table")
        timeout = _check_type(entry.get("timeout_s", 600.0), 600.0, "timeout_s", "models", source)
        if timeout <= 0:
            raise ConfigError(f"{source}: [[models]] {label}: timeout_s must be positive")
        models.append(
            {
                "name": name,
                "label": label,
                "display_name": entry.get("display_name") or name,
                "params": params,
                "timeout_s": timeout,
            }
        )
    labels = [m["label"] for m in models]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise ConfigError(
            f"{source}: [[models]] labels must be unique; repeated: {', '.join(duplicates)}"
        )
    if "microscopy" in labels or "truth" in labels:
        raise ConfigError(f"{source}: [[models]] labels 'microscopy' and 'truth' are reserved")
    from validation.models import check_params

    for m in models:
        try:
            check_params(m["name"], m["params"])  # typos fail before any case is fitted
        except ValueError as exc:
            raise ConfigError(f"{source}: [[models]] {m['label']}: {exc}") from None
    resolved["models"] = models

    gates = raw.get("gates", {})
    if not isinstance(gates, dict) or not all(isinstance(v, str) for v in gates.values()):
        raise ConfigError(f"{source}: [gates] should map 'label:metric.statistic' to '<op> value'")
    resolved["gates"] = dict(gates)

    if resolved["metrics"]["threshold_deg"] <= 0 or resolved["metrics"]["threshold_deg"] > 90:
        raise ConfigError(f"{source}: [metrics] threshold_deg must be in (0, 90]")
    if resolved["fod"]["sh_order_max"] % 2 or resolved["fod"]["sh_order_max"] < 2:
        raise ConfigError(f"{source}: [fod] sh_order_max must be an even number >= 2")
    if not 0 < resolved["fod"]["relative_peak_threshold"] <= 1:
        raise ConfigError(f"{source}: [fod] relative_peak_threshold must be in (0, 1]")
    if not 0 < resolved["fod"]["min_separation_angle"] < 90:
        raise ConfigError(f"{source}: [fod] min_separation_angle must be in (0, 90) degrees")
    sizes = resolved["crossscale"]["voxel_sizes_um"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
               for v in sizes):
        raise ConfigError(
            f"{source}: [crossscale] voxel_sizes_um = {sizes!r} must be positive numbers (um)"
        )
    resolved["crossscale"]["voxel_sizes_um"] = [float(v) for v in sizes]
    reg = resolved["registration"]
    if reg["perturbations"] < 0:
        raise ConfigError(f"{source}: [registration] perturbations = {reg['perturbations']} "
                          "must be >= 0 (0 = off)")
    for key in ("rotation_deg", "translation_um"):
        if not (np.isfinite(reg[key]) and reg[key] >= 0):
            raise ConfigError(f"{source}: [registration] {key} = {reg[key]!r} must be >= 0")
    return resolved


def _without_none(obj: Any) -> Any:
    # TOML has no null: unset optional keys are left out of the written file
    if isinstance(obj, dict):
        return {k: _without_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_without_none(v) for v in obj]
    return obj


def dumps_config(resolved: dict[str, Any]) -> str:
    """The resolved config as TOML text (``config.toml`` of a run)."""
    return tomli_w.dumps(_without_none(resolved))
