"""Synthetic crossing-fibre phantoms: one geometry, rendered as microscopy and as dMRI,
with exact ground truth. A leaf package: imports none of XScale's other packages."""

from phantoms.errors import PhantomError
from phantoms.geometry import Geometry, build_geometry
from phantoms.microscopy import CONTRAST_MODELS, ContrastModel
from phantoms.phantom import (
    DMRIGrid,
    DMRISignal,
    GroundTruth,
    Microscopy,
    Phantom,
    TruthBundle,
    build_phantom,
)
from phantoms.schemes import GradientScheme, get_scheme, list_schemes
from phantoms.spec import CaseSpec, get_suite, list_suites

__all__ = [
    "CONTRAST_MODELS",
    "CaseSpec",
    "ContrastModel",
    "DMRIGrid",
    "DMRISignal",
    "Geometry",
    "GradientScheme",
    "GroundTruth",
    "Microscopy",
    "Phantom",
    "PhantomError",
    "TruthBundle",
    "build_geometry",
    "build_phantom",
    "get_scheme",
    "get_suite",
    "list_schemes",
    "list_suites",
]
