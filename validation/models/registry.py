"""Model registry: built-in names, the ``xscale.models`` entry-point group and dotted paths.

Nothing is imported for side effects: a built-in is a dotted path resolved on demand,
an entry point is loaded only when its name is asked for (or when listing).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from validation.models.protocol import (
    Capabilities,
    ModelFailure,
    ModelNotFoundError,
    capabilities_of,
)

__all__ = [
    "BUILTIN_MODELS",
    "ENTRY_POINT_GROUP",
    "ModelInfo",
    "check_params",
    "list_models",
    "make_model",
    "resolve_factory",
]

ENTRY_POINT_GROUP = "xscale.models"

#: registry name -> (dotted factory, one-line description)
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "dti": ("validation.models.builtins:dti", "diffusion tensor (one peak)"),
    "csa": ("validation.models.builtins:csa", "constant solid angle Q-ball"),
    "csd": (
        "validation.models.builtins:csd",
        "constrained spherical deconvolution, response estimated in the mask",
    ),
    "msmt-csd": (
        "validation.models.builtins:msmt_csd",
        "multi-shell multi-tissue CSD (needs several shells)",
    ),
    "sfm": ("validation.models.builtins:sfm", "sparse fascicle model (NNLS)"),
    "gqi": ("validation.models.builtins:gqi", "generalized q-sampling imaging"),
    "forecast": ("validation.models.builtins:forecast", "FORECAST fODF"),
    "mapmri": ("validation.models.builtins:mapmri", "MAP-MRI ODF (needs several shells)"),
    "oracle": ("validation.models.baselines:oracle", "ground truth peaks and fODF (ceiling)"),
    "isotropic": ("validation.models.baselines:isotropic", "no peaks, l=0 fODF (floor)"),
}

# MRtrix3 as a peer: registered only where its binaries are on PATH
if shutil.which("dwi2fod") and shutil.which("dwi2response"):
    BUILTIN_MODELS["mrtrix-csd"] = (
        "validation.models.mrtrix:mrtrix_csd",
        "MRtrix3 CSD: dwi2response tournier + dwi2fod csd (needs MRtrix3 on PATH)",
    )


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``xscale models``.

    Attributes
    ----------
    name : str
        Registry name (or the dotted path).
    source : str
        ``"builtin"``, ``"entry-point"`` or ``"dotted"``.
    target : str
        ``package.module:factory`` it resolves to.
    description : str
        One line.
    capabilities : Capabilities or None
        ``None`` when the model could not be loaded (see ``error``).
    params : dict
        Hyper-parameters and their defaults, from the factory's signature.
    error : str or None
        Why the model could not be loaded, in plain words.
    """

    name: str
    source: str
    target: str
    description: str
    capabilities: Capabilities | None
    params: dict[str, Any]
    error: str | None = None


def _import_dotted(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelNotFoundError(
            f"model path {target!r} is not of the form 'package.module:factory'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"model path {target!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ModelNotFoundError(
                f"model path {target!r}: module {module_name!r} has no attribute {attr!r}"
            ) from exc
    if not callable(obj):
        raise ModelNotFoundError(f"model path {target!r} is not callable")
    return obj


def _entry_points() -> dict[str, list[metadata.EntryPoint]]:
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def resolve_factory(name: str) -> tuple[Callable[..., Any], str, str]:
    """The factory of a model name: built-in, entry point or ``package.module:factory``.

    Returns
    -------
    factory : callable
        Called with the hyper-parameters as keywords, returns a model.
    source : str
        ``"builtin"``, ``"entry-point"`` or ``"dotted"``.
    target : str
        The dotted path it came from.

    Raises
    ------
    ModelNotFoundError
        For unknown names (with the closest known names), ambiguous entry points and
        dotted paths that do not import.
    """
    if not isinstance(name, str) or not name:
        raise ModelNotFoundError(f"model name must be a non-empty string, got {name!r}")
    if name in BUILTIN_MODELS:
        target = BUILTIN_MODELS[name][0]
        return _import_dotted(target), "builtin", target
    if ":" in name:
        return _import_dotted(name), "dotted", name
    eps = _entry_points().get(name, [])
    if len(eps) > 1:
        values = ", ".join(sorted(ep.value for ep in eps))
        raise ModelNotFoundError(
            f"model {name!r} is registered by several packages ({values}); "
            "use a dotted path 'package.module:factory' instead"
        )
    if eps:
        try:
            factory = eps[0].load()
        except Exception as exc:  # a broken plug-in is the user's input
            raise ModelNotFoundError(
                f"model {name!r}: entry point {eps[0].value!r} fails to load "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return factory, "entry-point", eps[0].value
    known = sorted(set(BUILTIN_MODELS) | set(_entry_points()))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}{hint} (known: {', '.join(known)}; "
        "or give 'package.module:factory')"
    )


def _signature_params(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """Keyword hyper-parameters with defaults, and whether ``**kwargs`` is accepted."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    params: dict[str, Any] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return params, var_kw


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise :class:`ModelNotFoundError` (a UserError) for unknown model names or parameters.

    For the run config: catches typos before any case is fitted.
    """
    factory, _, _ = resolve_factory(name)
    known, var_kw = _signature_params(factory)
    unknown = sorted(set(params) - set(known))
    if unknown and not var_kw:
        raise ModelNotFoundError(
            f"model {name!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )


def make_model(name: str, params: dict[str, Any] | None = None) -> Any:
    """Build a model from its name and hyper-parameters.

    Raises
    ------
    ModelNotFoundError
        The name does not resolve.
    ModelFailure
        ``stage="init"``: the factory raised, or what it built has no ``fit``.
    """
    factory, _, _ = resolve_factory(name)
    try:
        model = factory(**(params or {}))
    except Exception as exc:
        raise ModelFailure(f"{type(exc).__name__}: {exc}", "init") from exc
    if not callable(getattr(model, "fit", None)):
        raise ModelFailure(
            f"{name!r} built a {type(model).__name__} without a fit(data, gtab, *, mask) method",
            "init",
        )
    return model


def list_models() -> list[ModelInfo]:
    """Every built-in and entry-point model, with capabilities (or why it fails to load)."""
    rows: list[ModelInfo] = []
    for name, (target, description) in BUILTIN_MODELS.items():
        rows.append(_info(name, "builtin", target, description))
    for name, eps in sorted(_entry_points().items()):
        if name in BUILTIN_MODELS:
            rows.append(
                ModelInfo(name, "entry-point", eps[0].value, "", None, {},
                          f"name {name!r} is taken by a built-in model; use a dotted path")
            )
        elif len(eps) > 1:
            rows.append(
                ModelInfo(name, "entry-point", ", ".join(ep.value for ep in eps), "", None, {},
                          f"name {name!r} is registered by several packages")
            )
        else:
            rows.append(_info(name, "entry-point", eps[0].value, None))
    return rows


def _info(name: str, source: str, target: str, description: str | None) -> ModelInfo:
    try:
        factory, _, _ = resolve_factory(name)
        params, _ = _signature_params(factory)
        model = make_model(name)
        caps = capabilities_of(model)
    except Exception as exc:
        reason = exc.reason if isinstance(exc, ModelFailure) else f"{type(exc).__name__}: {exc}"
        return ModelInfo(name, source, target, description or "", None, {}, reason)
    if description is None:
        doc = (getattr(model, "__doc__", None) or factory.__doc__ or "").strip()
        description = doc.splitlines()[0] if doc else ""
    return ModelInfo(name, source, target, description, caps, params)
