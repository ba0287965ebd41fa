"""dMRI model plug-ins: the contract, the registry, built-ins, baselines and ``fit_case``.

The runner calls :func:`fit_case` with a :class:`ModelSpec`; a model failure comes back as
:class:`ModelFailure` and never takes the run down. See docs/plugins.md.
"""

from __future__ import annotations

from validation.models.adapter import DipyReconstModel
from validation.models.fitting import (
    NPEAKS,
    PEAK_PARAMS,
    ModelOutputs,
    ModelSpec,
    fit_case,
)
from validation.models.protocol import (
    Capabilities,
    DMRIFit,
    DMRIModel,
    ModelFailure,
    ModelNotFoundError,
    capabilities_of,
)
from validation.models.registry import (
    BUILTIN_MODELS,
    ENTRY_POINT_GROUP,
    ModelInfo,
    check_params,
    list_models,
    make_model,
    resolve_factory,
)

__all__ = [
    "BUILTIN_MODELS",
    "ENTRY_POINT_GROUP",
    "NPEAKS",
    "PEAK_PARAMS",
    "Capabilities",
    "DMRIFit",
    "DMRIModel",
    "DipyReconstModel",
    "ModelFailure",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelOutputs",
    "ModelSpec",
    "capabilities_of",
    "check_params",
    "fit_case",
    "list_models",
    "make_model",
    "resolve_factory",
]
