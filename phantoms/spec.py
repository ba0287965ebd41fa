"""Case specifications (one phantom = one `CaseSpec`) and the named suites."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from phantoms.errors import PhantomError

GEOMETRIES = ("single", "crossing", "three-way", "curved", "fanning", "kissing")
CONTRASTS = ("hipct", "em")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class CaseSpec:
    """Every parameter of one phantom case (lengths in micrometres unless named ``_mm``).

    Parameters
    ----------
    case_id : str
        Slug ``[a-z0-9_-]``, unique within a suite.
    geometry : str
        One of ``single``, ``crossing``, ``three-way``, ``curved``, ``fanning``,
        ``kissing``.
    crossing_angle_deg : float
        Angle between the bundles of ``crossing`` (and between neighbours of a planar
        ``three-way``; 90 gives three orthogonal bundles), degrees in (0, 90].
    kappa : float
        Watson concentration of the axon directions about the bundle axis; ``inf`` = no
        dispersion.
    packing : float
        Axon (incl. myelin) area fraction of each bundle's cross-section, in (0, 0.7].
    radius_mean_um, radius_shape : float
        Gamma distribution of the axon outer radius (mean, shape), clipped to [0.2, 5] um.
    g_ratio : float
        Inner / outer radius of the myelinated axon, in (0, 1].
    undulation_amplitude_um, undulation_wavelength_um : float
        Sinusoidal undulation of each axon about its path (random phase and plane).
    bundle_diameter_um : float
        Diameter of each bundle's cross-section.
    n_vessels : int
        Straight blood vessels (radius 8-20 um) added as confounders.
    snr : float or None
        S0 / sigma of the Rician noise; None = noise-free.
    scheme : str
        Gradient scheme name (`phantoms.list_schemes`).
    grid_size, voxel_size_mm : int, float
        The dMRI grid: ``grid_size``^3 voxels of ``voxel_size_mm``.
    microscopy_voxel_um : float
        Default microscopy voxel size (isotropic).
    contrast : str
        Default microscopy contrast: ``hipct`` or ``em``.
    rotation_deg : tuple of 3 float
        Rotation of the whole geometry about the grid centre (extrinsic x, y, z Euler
        angles, degrees).
    step_um : float
        Length of the axon polyline segments.
    seed : int
        Seed of the geometry (and default seed of noise).
    """

    case_id: str
    geometry: str = "crossing"
    crossing_angle_deg: float = 90.0
    kappa: float = 100.0
    packing: float = 0.35
    radius_mean_um: float = 2.5
    radius_shape: float = 4.0
    g_ratio: float = 0.7
    undulation_amplitude_um: float = 4.0
    undulation_wavelength_um: float = 300.0
    bundle_diameter_um: float = 900.0
    n_vessels: int = 0
    snr: float | None = 30.0
    scheme: str = "b3000-64"
    grid_size: int = 12
    voxel_size_mm: float = 0.15
    microscopy_voxel_um: float = 10.0
    contrast: str = "hipct"
    rotation_deg: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    step_um: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        from phantoms.schemes import list_schemes

        if not isinstance(self.case_id, str) or not _SLUG.match(self.case_id):
            raise PhantomError(f"case_id {self.case_id!r} is invalid; use a slug of [a-z0-9_-]")
        if self.geometry not in GEOMETRIES:
            raise PhantomError(
                f"geometry {self.geometry!r} is invalid; use one of {', '.join(GEOMETRIES)}"
            )
        if not 0.0 < float(self.crossing_angle_deg) <= 90.0:
            raise PhantomError(
                f"crossing_angle_deg {self.crossing_angle_deg!r} is invalid; use (0, 90]"
            )
        if not float(self.kappa) > 0.0:
            raise PhantomError(f"kappa {self.kappa!r} is invalid; use a value > 0 (inf = none)")
        if not 0.0 < float(self.packing) <= 0.7:
            raise PhantomError(f"packing {self.packing!r} is invalid; use (0, 0.7]")
        if not 0.2 <= float(self.radius_mean_um) <= 5.0 or not float(self.radius_shape) > 0:
            raise PhantomError(
                f"radius_mean_um {self.radius_mean_um!r} / radius_shape {self.radius_shape!r} "
                "are invalid; use a mean in [0.2, 5] um and a shape > 0"
            )
        if not 0.0 < float(self.g_ratio) <= 1.0:
            raise PhantomError(f"g_ratio {self.g_ratio!r} is invalid; use (0, 1]")
        if float(self.undulation_amplitude_um) < 0 or float(self.undulation_wavelength_um) <= 0:
            raise PhantomError("undulation amplitude must be >= 0 and wavelength > 0 um")
        if not float(self.bundle_diameter_um) > 0:
            raise PhantomError(f"bundle_diameter_um {self.bundle_diameter_um!r} must be > 0")
        if int(self.n_vessels) < 0:
            raise PhantomError(f"n_vessels {self.n_vessels!r} must be >= 0")
        if self.snr is not None and not (float(self.snr) > 0 and math.isfinite(self.snr)):
            raise PhantomError(f"snr {self.snr!r} is invalid; use a finite value > 0 or None")
        if self.scheme not in list_schemes():
            raise PhantomError(
                f"scheme {self.scheme!r} is unknown; use one of {', '.join(list_schemes())}"
            )
        if int(self.grid_size) < 2 or not float(self.voxel_size_mm) > 0:
            raise PhantomError("grid_size must be >= 2 and voxel_size_mm > 0")
        if not float(self.microscopy_voxel_um) > 0:
            raise PhantomError(f"microscopy_voxel_um {self.microscopy_voxel_um!r} must be > 0")
        if self.contrast not in CONTRASTS:
            raise PhantomError(
                f"contrast {self.contrast!r} is invalid; use one of {', '.join(CONTRASTS)}"
            )
        if len(tuple(self.rotation_deg)) != 3:
            raise PhantomError(f"rotation_deg {self.rotation_deg!r} must have 3 angles")
        object.__setattr__(self, "rotation_deg", tuple(float(a) for a in self.rotation_deg))
        if not float(self.step_um) > 0:
            raise PhantomError(f"step_um {self.step_um!r} must be > 0")

    @property
    def fov_um(self) -> float:
        """Field of view (edge of the cubic grid) in micrometres."""
        return self.grid_size * self.voxel_size_mm * 1000.0

    def conditions(self) -> dict[str, float | int | str]:
        """One cases.csv row (every parameter except ``case_id``; snr None -> inf)."""
        out: dict[str, float | int | str] = {}
        for f in dataclasses.fields(self):
            if f.name == "case_id":
                continue
            value = getattr(self, f.name)
            if f.name == "rotation_deg":
                for axis, angle in zip("xyz", value, strict=True):
                    out[f"rotation_{axis}_deg"] = float(angle)
            elif f.name == "snr":
                out["snr"] = math.inf if value is None else float(value)
            else:
                out[f.name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """A TOML-able dict (snr None is written as ``inf``; rotation as a list)."""
        d = dataclasses.asdict(self)
        d["rotation_deg"] = list(self.rotation_deg)
        d["snr"] = math.inf if self.snr is None else float(self.snr)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseSpec:
        """Inverse of `to_dict`; unknown keys are an error."""
        if not isinstance(d, dict):
            raise PhantomError(f"case specification must be a table, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PhantomError(f"case specification has unknown keys: {', '.join(unknown)}")
        if "case_id" not in d:
            raise PhantomError("case specification has no case_id")
        kw = dict(d)
        if "snr" in kw and kw["snr"] is not None and math.isinf(float(kw["snr"])):
            kw["snr"] = None
        if "rotation_deg" in kw:
            kw["rotation_deg"] = tuple(kw["rotation_deg"])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise PhantomError(f"case specification is invalid: {exc}") from None

    def replace(self, **changes: Any) -> CaseSpec:
        """A copy with some parameters changed."""
        return dataclasses.replace(self, **changes)


def _default() -> list[CaseSpec]:
    return [
        CaseSpec("single", geometry="single"),
        CaseSpec("cross90", geometry="crossing", crossing_angle_deg=90.0),
        CaseSpec("cross60", geometry="crossing", crossing_angle_deg=60.0),
    ]


def _crossing_angle() -> list[CaseSpec]:
    return [
        CaseSpec(f"cross{a}", geometry="crossing", crossing_angle_deg=float(a))
        for a in (30, 45, 60, 75, 90)
    ]


def _three_way() -> list[CaseSpec]:
    return [
        CaseSpec("threeway-orthogonal", geometry="three-way", crossing_angle_deg=90.0),
        CaseSpec("threeway-planar60", geometry="three-way", crossing_angle_deg=60.0),
    ]


def _dispersion() -> list[CaseSpec]:
    cases = []
    for kappa in (4, 8, 16, 32, 64):
        cases.append(CaseSpec(f"single-kappa{kappa}", geometry="single", kappa=float(kappa)))
    for kappa in (4, 8, 16, 32, 64):
        cases.append(
            CaseSpec(
                f"cross90-kappa{kappa}",
                geometry="crossing",
                crossing_angle_deg=90.0,
                kappa=float(kappa),
            )
        )
    return cases


def _snr() -> list[CaseSpec]:
    return [
        CaseSpec(f"cross60-snr{s}", geometry="crossing", crossing_angle_deg=60.0, snr=float(s))
        for s in (5, 10, 20, 30, 50)
    ]


def _geometry() -> list[CaseSpec]:
    return [
        CaseSpec("curved", geometry="curved"),
        CaseSpec("fanning", geometry="fanning"),
        CaseSpec("kissing", geometry="kissing"),
    ]


def _schemes() -> list[CaseSpec]:
    from phantoms.schemes import list_schemes

    return [
        CaseSpec(f"cross60-{name}", geometry="crossing", crossing_angle_deg=60.0, scheme=name)
        for name in list_schemes()
    ]


_SUITES = {
    "default": _default,
    "crossing-angle": _crossing_angle,
    "three-way": _three_way,
    "dispersion": _dispersion,
    "snr": _snr,
    "geometry": _geometry,
    "schemes": _schemes,
}


def list_suites() -> list[str]:
    """Names of the built-in suites."""
    return list(_SUITES)


def get_suite(name: str) -> list[CaseSpec]:
    """The cases of a built-in suite.

    Raises
    ------
    PhantomError
        For an unknown name.
    """
    try:
        factory = _SUITES[name]
    except (KeyError, TypeError):
        raise PhantomError(
            f"suite {name!r} is unknown; use one of {', '.join(_SUITES)}"
        ) from None
    return factory()
