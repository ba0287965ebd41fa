"""One adapter that plugs any dipy ``ReconstModel`` class into the XScale model contract."""

from __future__ import annotations

from typing import Any

import numpy as np

from validation.models.protocol import Capabilities

__all__ = ["DipyReconstModel"]


class DipyReconstModel:
    """Wrap a dipy ``ReconstModel`` class (built from ``gtab`` at fit time).

    dipy models take the gradient table in their constructor, the XScale contract takes
    it in ``fit``; this adapter bridges the two. The dipy model is built once per case in
    :meth:`prepare` (so voxel chunks reuse it) and fitted with ``model.fit(data, mask=mask)``.

    Parameters
    ----------
    model_class : type
        A dipy ``ReconstModel`` subclass (or any callable ``(gtab, **params) -> model``
        whose ``fit(data, mask=...)`` returns a fit with ``odf(sphere)``).
    name : str, optional
        Registry name; default the class name.
    capabilities : Capabilities or dict, optional
        Default: gives an ODF, voxel-wise.
    **params
        Hyper-parameters passed to ``model_class(gtab, **params)``.

    Examples
    --------
    >>> from dipy.reconst.shm import CsaOdfModel
    >>> model = DipyReconstModel(CsaOdfModel, name="csa6", sh_order_max=6)
    >>> model.params
    {'sh_order_max': 6}
    """

    def __init__(
        self,
        model_class: Any,
        *,
        name: str | None = None,
        capabilities: Capabilities | dict | None = None,
        **params: Any,
    ):
        self.model_class = model_class
        self.name: str = name or str(getattr(model_class, "__name__", "dipy-model"))
        self.capabilities = Capabilities.from_any(capabilities, model_name=self.name)
        self.params = dict(params)
        self.details: dict[str, Any] = {}

    def build(self, gtab: Any, data: np.ndarray, mask: np.ndarray | None) -> Any:
        """The dipy model for this gradient table (subclasses estimate responses here)."""
        return self.model_class(gtab, **self.params)

    def wrap_fit(self, fit: Any) -> Any:
        """Hook for subclasses: adapt the dipy fit (e.g. add ``peaks()``); default as is."""
        return fit

    def prepare(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None):
        """Build the dipy model once for the whole case; returns the model to fit chunks."""
        return _PreparedDipyModel(self, self.build(gtab, data, mask))

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> Any:
        """Fit ``data`` (X, Y, Z, N); returns the dipy fit."""
        return self.prepare(data, gtab, mask=mask).fit(data, gtab, mask=mask)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name}: {args})"


class _PreparedDipyModel:
    """A :class:`DipyReconstModel` with its dipy model built for one gradient table."""

    def __init__(self, parent: DipyReconstModel, reconst_model: Any):
        self.name = parent.name
        self.capabilities = parent.capabilities
        self.details = dict(parent.details)
        self.reconst_model = reconst_model
        self._wrap = parent.wrap_fit

    def fit(self, data: np.ndarray, gtab: Any, *, mask: np.ndarray | None = None) -> Any:
        if mask is None:
            return self._wrap(self.reconst_model.fit(data))
        return self._wrap(self.reconst_model.fit(data, mask=mask))
