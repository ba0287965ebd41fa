import numpy as np
import pytest

from phantoms import PhantomError, _kernels, build_phantom
from phantoms.geometry import Geometry
from phantoms.microscopy import BlockRenderer, get_contrast


def _one_tube(radius, inner_ratio, fov=40.0):
    """A single straight tube along axis 2 through the centre of a fov^3 box."""
    c = fov / 2 + 0.123  # off the voxel lattice
    z = np.linspace(-10.0, fov + 10.0, 8)
    p = np.stack([np.full_like(z, c), np.full_like(z, c - 0.311), z], axis=1)
    return Geometry(
        p0=p[:-1].copy(), p1=p[1:].copy(), tube=np.zeros(7, dtype=np.int64),
        tube_radius=np.array([radius]), tube_inner_ratio=np.array([inner_ratio]),
        tube_bundle=np.array([0]), bundle_names=("b",), bundle_packing=np.array([0.4]),
        fov_um=fov,
    )


@pytest.mark.parametrize("radius, h, tol", [(3.0, 0.5, 0.03), (1.0, 1.0, 0.03), (0.5, 2.0, 0.15)])
def test_tube_occupancy_conserves_cross_section_area(radius, h, tol):
    # exact for the ramp; sampling it at voxel centres costs a few % (more below a voxel)
    g = _one_tube(radius, 0.5)
    n = int(40 / h)
    outer, inner = _kernels.rasterise_tubes(
        np.full(3, 0.5 * h), np.array([n, n, n]), np.full(3, h), g.p0, g.p1,
        g.tube_radius[g.tube], g.tube_inner_ratio[g.tube], g.tube, np.arange(7))
    area = outer[:, :, n // 2].sum() * h * h
    assert area == pytest.approx(np.pi * radius**2, rel=tol)
    assert inner[:, :, n // 2].sum() * h * h == pytest.approx(np.pi * (0.5 * radius) ** 2,
                                                              rel=max(tol, 0.08))
    # joints between segments are not counted twice: the profile is the same along z
    profile = outer.sum(axis=(0, 1))
    np.testing.assert_allclose(profile, profile[n // 2], rtol=1e-5)


def test_em_contrast_bright_myelin_dark_axoplasm():
    g = _one_tube(4.0, 0.5)
    h = 0.5
    r = BlockRenderer(g, np.full(3, h), (80, 80, 80), get_contrast("em"), seed=0)
    img = r.render((0, 0, 0), (80, 80, 80))[0]
    cx, cy = (20.123) / h - 0.5, (20.123 - 0.311) / h - 0.5
    centre = img[int(round(cx)), int(round(cy)), 40]
    ring = img[int(round(cx + 3.0 / h)), int(round(cy)), 40]  # 3 um from the axis: myelin
    outside = img[int(round(cx + 8.0 / h)), int(round(cy)), 40]
    assert ring > outside and ring > centre
    # axoplasm is darker than extracellular space inside tissue (background + tissue)
    em = get_contrast("em")
    assert centre < em.background + em.tissue - 0.1


def test_values_do_not_depend_on_chunking(make_spec):
    ph = build_phantom(make_spec(geometry="crossing", n_vessels=1))
    a = ph.render_microscopy(chunks=(20, 25, 60), rng=1)
    b = ph.render_microscopy(chunks=60, rng=1)
    va, vb = a.volume.compute(), b.volume.compute()
    assert va.shape == (60, 60, 60) and va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(a.mask.compute(), b.mask.compute())
    c = ph.render_microscopy(chunks=60, rng=2).volume.compute()
    assert not np.array_equal(va, c)


def test_affine_maps_microscopy_voxels_onto_the_dmri_grid(make_spec):
    ph = build_phantom(make_spec())
    mic = ph.render_microscopy(voxel_size_um=(10.0, 20.0, 25.0))
    assert mic.volume.shape == (60, 30, 24)
    np.testing.assert_allclose(mic.spacing_um, [10.0, 20.0, 25.0])
    # microscopy voxel 0 centre sits 5/10/12.5 um from the grid corner: dMRI voxel
    # coordinates -0.45, -0.4, -0.375 (dMRI voxels of 100 um)
    inv = np.linalg.inv(ph.grid.affine)
    vox = inv @ mic.affine @ np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(vox[:3], [-0.45, -0.4, -0.375], atol=1e-12)
    last = inv @ mic.affine @ np.array([59.0, 29.0, 23.0, 1.0])
    np.testing.assert_allclose(last[:3], [5.45, 5.4, 5.375], atol=1e-12)


def test_mask_covers_the_bundle_not_the_background(make_spec):
    ph = build_phantom(make_spec())
    m = ph.render_microscopy().mask.compute()
    # the bundle (diameter 400 um) runs along axis 0 through the centre of the 600 um box
    assert m[30, 30, 30] and m[10, 28, 32]
    assert not m[30, 2, 2] and not m[30, 57, 57]
    assert 0.2 < m.mean() < 0.5  # pi * 200^2 / 600^2 = 0.35


def test_unknown_contrast_is_phantom_error(make_spec):
    ph = build_phantom(make_spec())
    with pytest.raises(PhantomError, match="contrast 'mri'"):
        ph.render_microscopy(contrast="mri")


@pytest.mark.parametrize("contrast, voxel_um, rho", [("hipct", 10.0, 4.0), ("em", 2.0, 3.0)])
def test_structure_tensor_recovers_the_bundle_direction(make_spec, contrast, voxel_um, rho):
    from scipy.spatial.transform import Rotation
    from structure_tensor import eig_special_3d, structure_tensor_3d

    rot = (10.0, 20.0, 30.0)
    size = 6 if contrast == "hipct" else 2
    spec = make_spec(rotation_deg=rot, radius_mean_um=2.5, grid_size=size,
                     bundle_diameter_um=400.0 if size == 6 else 300.0)
    mic = build_phantom(spec).render_microscopy(contrast=contrast, voxel_size_um=voxel_um)
    vol = mic.volume.compute().astype(np.float64)
    mask = mic.mask.compute()
    s = structure_tensor_3d(vol, 1.0, rho)
    _, vec = eig_special_3d(s)
    vec = np.moveaxis(vec, 0, -1)[..., ::-1]  # (x, y, z) components -> array axes
    axis = Rotation.from_euler("xyz", rot, degrees=True).as_matrix() @ [1.0, 0.0, 0.0]
    err = np.degrees(np.arccos(np.clip(np.abs(vec @ axis), 0, 1)))
    inner = (slice(12, -12),) * 3
    sel = mask[inner] & np.isfinite(err[inner])
    assert sel.sum() > 1000
    assert np.median(err[inner][sel]) < 5.0
