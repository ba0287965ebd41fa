"""Built-in gradient schemes and the tissue diffusivities that go with them.

b-values in s/mm^2, diffusivities in mm^2/s, b-vectors unit rows in the dMRI grid's
(i, j, k) frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from phantoms.errors import PhantomError


@dataclass(frozen=True)
class Diffusivities:
    """Compartment diffusivities (mm^2/s)."""

    intra_axial: float
    extra_axial: float
    extra_radial: float
    free: float


IN_VIVO = Diffusivities(intra_axial=2.0e-3, extra_axial=2.0e-3, extra_radial=0.6e-3, free=3.0e-3)
EX_VIVO = Diffusivities(intra_axial=0.6e-3, extra_axial=0.6e-3, extra_radial=0.2e-3, free=1.0e-3)


@dataclass(frozen=True)
class GradientScheme:
    """A gradient table: ``bvals`` (N,) s/mm^2, ``bvecs`` (N, 3) unit (zero for b0)."""

    name: str
    bvals: np.ndarray
    bvecs: np.ndarray
    diffusivities: Diffusivities
    description: str


@cache
def _shell_directions(n: int, seed: int) -> np.ndarray:
    """``n`` near-uniform unit vectors on the hemisphere (electrostatic repulsion)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    hemi, _ = disperse_charges(HemiSphere(xyz=v), 500)
    out = np.asarray(hemi.vertices, dtype=np.float64)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out.setflags(write=False)
    return out


def _table(shells: list[tuple[float, int]], n_b0: int) -> tuple[np.ndarray, np.ndarray]:
    bvals = [np.zeros(n_b0)]
    bvecs = [np.zeros((n_b0, 3))]
    for index, (b, n) in enumerate(shells):
        bvals.append(np.full(n, float(b)))
        bvecs.append(np.array(_shell_directions(n, 1000 + index)))
    return np.concatenate(bvals), np.concatenate(bvecs)


_SCHEMES = {
    "b1000-64": ([(1000.0, 64)], 6, IN_VIVO, "single shell b=1000 s/mm^2, 64 directions, 6 b0"),
    "b3000-64": ([(3000.0, 64)], 6, IN_VIVO, "single shell b=3000 s/mm^2, 64 directions, 6 b0"),
    "hcp-multishell": (
        [(1000.0, 90), (2000.0, 90), (3000.0, 90)],
        18,
        IN_VIVO,
        "HCP-like: b=1000/2000/3000 s/mm^2 x 90 directions, 18 b0",
    ),
    "exvivo-multishell": (
        [(4000.0, 64), (8000.0, 64)],
        8,
        EX_VIVO,
        "ex vivo high-b: b=4000/8000 s/mm^2 x 64 directions, 8 b0, ex vivo diffusivities",
    ),
}


def list_schemes() -> list[str]:
    """Names of the built-in gradient schemes."""
    return list(_SCHEMES)


def get_scheme(name: str) -> GradientScheme:
    """A built-in gradient scheme by name (`PhantomError` for unknown names)."""
    try:
        shells, n_b0, diff, text = _SCHEMES[name]
    except (KeyError, TypeError):
        raise PhantomError(
            f"scheme {name!r} is unknown; use one of {', '.join(_SCHEMES)}"
        ) from None
    bvals, bvecs = _table(shells, n_b0)
    return GradientScheme(name, bvals, bvecs, diff, text)
