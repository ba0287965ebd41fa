"""Small, fast phantom specifications shared by the phantom tests."""

from __future__ import annotations

from phantoms import CaseSpec


def small_spec(case_id: str = "t", **kw) -> CaseSpec:
    """A 6^3 grid of 100 um voxels with a 400 um bundle of ~3 um axons (fast)."""
    base = dict(
        geometry="single", grid_size=6, voxel_size_mm=0.1, bundle_diameter_um=400.0,
        radius_mean_um=3.0, microscopy_voxel_um=10.0, snr=None,
    )
    base.update(kw)
    return CaseSpec(case_id, **base)
