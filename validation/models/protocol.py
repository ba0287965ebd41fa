"""The plug-in contract for a dMRI model: a ``typing.Protocol``, declared capabilities, errors.

A model is any object with a ``name``, keyword-only hyper-parameters stored by
``__init__`` and a ``fit(data, gtab, *, mask=None)`` method returning a fit that has
``odf(sphere)`` and/or ``shm_coeff`` (and optionally ``peaks()``). Nothing has to be
subclassed; what the model can give is declared in a :class:`Capabilities` attribute,
never guessed from the object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from validation.errors import UserError

__all__ = [
    "Capabilities",
    "DMRIFit",
    "DMRIModel",
    "ModelFailure",
    "ModelNotFoundError",
    "capabilities_of",
]


class ModelNotFoundError(UserError):
    """A model name or dotted path that does not resolve to a model factory."""


class ModelFailure(Exception):
    """A failure of the model itself (not of XScale, not of the user's input).

    The runner records it for that (case, model) and goes on with the others.

    Parameters
    ----------
    reason : str
        One line, e.g. ``"ValueError: matrix is singular"`` or
        ``"odf(sphere) returned NaN in 12 of 40 voxels"``.
    stage : str
        Where it failed: ``"init"``, ``"capabilities"``, ``"prepare"``, ``"fit"``,
        ``"output"``, ``"timeout"`` or ``"worker"``.
    traceback : str, optional
        The model's traceback, when there is one (for run.log, not for tables).
    """

    def __init__(self, reason: str, stage: str, traceback: str | None = None):
        super().__init__(f"{stage}: {reason}")
        self.reason = reason
        self.stage = stage
        self.traceback = traceback

    def __reduce__(self):
        return (type(self), (self.reason, self.stage, self.traceback))


@dataclass(frozen=True)
class Capabilities:
    """What a model declares it gives and needs.

    Attributes
    ----------
    gives_odf : bool
        The fit has ``odf(sphere) -> (..., V)``.
    gives_sh : bool
        The fit has ``shm_coeff`` (..., n_coeffs): dipy ``descoteaux07``, ``legacy=False``,
        even orders, voxel (ijk) frame.
    gives_peaks : bool
        The fit has ``peaks()`` returning directions (..., K, 3) (zero rows = absent) or a
        tuple ``(directions, values)``; used instead of XScale's peak finder.
    multi_shell_only : bool
        The model needs at least two non-zero b-value shells.
    needs_truth : bool
        ``fit`` takes a keyword ``truth`` (the phantom ground truth); for the ``oracle``
        baseline only.
    voxelwise : bool
        Every voxel is fitted on its own data alone (after ``prepare``), so XScale may fit
        voxel chunks in parallel; ``False`` fits the whole volume in one call.
    """

    gives_odf: bool = True
    gives_sh: bool = False
    gives_peaks: bool = False
    multi_shell_only: bool = False
    needs_truth: bool = False
    voxelwise: bool = True

    def to_dict(self) -> dict[str, bool]:
        """Plain dict for models.json."""
        return asdict(self)

    @classmethod
    def from_any(cls, value: Any, *, model_name: str = "model") -> Capabilities:
        """Capabilities from a :class:`Capabilities`, a dict, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ModelFailure(
                    f"{model_name} declares unknown capabilities {unknown}; "
                    f"known: {sorted(known)}",
                    "capabilities",
                )
            return cls(**{k: bool(v) for k, v in value.items()})
        raise ModelFailure(
            f"{model_name}.capabilities must be a Capabilities or a dict, "
            f"got {type(value).__name__}",
            "capabilities",
        )


@runtime_checkable
class DMRIFit(Protocol):
    """What ``model.fit`` returns: ``odf(sphere)`` and/or ``shm_coeff`` (declared)."""

    def odf(self, sphere: Any) -> np.ndarray:  # (..., V)
        ...


@runtime_checkable
class DMRIModel(Protocol):
    """The smallest thing a method developer writes.

    ``__init__`` takes keyword-only hyper-parameters and stores them, nothing else;
    ``fit(data, gtab, *, mask=None)`` gets data (X, Y, Z, N) float64 and a dipy
    ``GradientTable``. Optional extras, looked up by name:

    - ``capabilities``: a :class:`Capabilities` (or dict); default: ODF only.
    - ``prepare(data, gtab, *, mask=None) -> model``: a whole-volume step before
      voxel-wise fitting (response estimation); returns the model to fit chunks with.
    """

    name: str

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> Any: ...


def capabilities_of(model: Any) -> Capabilities:
    """The declared :class:`Capabilities` of a model instance (defaults when none)."""
    name = getattr(model, "name", type(model).__name__)
    return Capabilities.from_any(getattr(model, "capabilities", None), model_name=str(name))
