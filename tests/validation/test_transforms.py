"""Transforms: formats and their sides, composition, inversion, reorientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.errors import UserError
from validation.transforms import (
    AffineTransform,
    CompositeTransform,
    DisplacementFieldTransform,
    TransformError,
    compose,
    linearise,
    load_transform,
    neuroglancer_affine,
    random_rigid_perturbation,
    read_itk_affine,
    read_itk_displacement_field,
    read_lta,
    read_matrix_txt,
    reorient,
    rotation_matrix,
    to_dmri_space,
    vectors_ijk_to_world,
    vectors_world_to_ijk,
    write_itk_affine,
    write_matrix_txt,
)

unit_vectors = st.lists(st.floats(-1, 1), min_size=3, max_size=3).filter(
    lambda v: np.linalg.norm(v) > 0.1
).map(lambda v: np.asarray(v) / np.linalg.norm(v))
angles = st.floats(-180, 180)


def _smooth_field(shape=(24, 24, 24), amplitude=1.0):
    """A smooth displacement (mm) on a 1 mm grid centred on the origin, and its affine."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x = ijk + affine[:3, 3]
    u = amplitude * np.stack(
        [np.sin(x[..., 1] / 6.0), 0.5 * np.cos(x[..., 2] / 7.0), 0.3 * np.sin(x[..., 0] / 5.0)],
        axis=-1,
    )
    return u, affine


# ------------------------------------------------------------------ reorientation


@settings(max_examples=50, deadline=None)
@given(unit_vectors, unit_vectors, angles)
def test_rotation_rotates_vectors_exactly(axis, v, angle) -> None:
    rot = rotation_matrix(axis, angle)
    t = AffineTransform(rot)
    out = reorient(v, [3.0, -2.0, 1.0], t)
    np.testing.assert_allclose(out, rot[:3, :3] @ v, atol=1e-12)


def test_rotation_hand_case() -> None:
    t = AffineTransform(rotation_matrix([0, 0, 1], 90.0))
    np.testing.assert_allclose(reorient([[1.0, 0, 0], [0, 1.0, 0]], [0, 0, 0], t),
                               [[0, 1.0, 0], [-1.0, 0, 0]], atol=1e-15)


def test_shear_reorients_with_the_jacobian() -> None:
    shear = np.eye(4)
    shear[0, 1] = 1.0  # x' = x + y
    t = AffineTransform(shear)
    # a fibre along y becomes (1, 1, 0)/sqrt(2); one along x is unchanged
    np.testing.assert_allclose(reorient([0.0, 1.0, 0.0], [0, 0, 0], t),
                               [2 ** -0.5, 2 ** -0.5, 0.0], atol=1e-15)
    np.testing.assert_allclose(reorient([1.0, 0.0, 0.0], [5, 5, 5], t), [1.0, 0, 0])
    # the reoriented vector is the direction of the image of a fibre segment
    v = np.array([0.3, -0.5, 0.8])
    p = np.array([1.0, 2.0, 3.0])
    seg = t.apply_points(p + v) - t.apply_points(p)
    np.testing.assert_allclose(reorient(v, p, t), seg / np.linalg.norm(seg), atol=1e-14)
    # rotating (wrongly) by the polar rotation of the shear would not give that
    assert not np.allclose(reorient(v, p, t), v / np.linalg.norm(v), atol=1e-3)


def test_zero_vectors_stay_zero() -> None:
    t = AffineTransform(np.diag([2.0, 3.0, 4.0, 1.0]))
    out = reorient(np.zeros((4, 3)), np.zeros((4, 3)), t)
    assert np.all(out == 0)


# ------------------------------------------------------------------ affine algebra


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_affine_chain_composes_and_inverts_exactly(seed) -> None:
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(3):
        m = np.eye(4)
        m[:3, :3] = rng.normal(size=(3, 3)) + 3 * np.eye(3)
        m[:3, 3] = rng.normal(size=3) * 10
        mats.append(m)
    chain = compose(*[AffineTransform(m) for m in mats])
    assert chain.is_affine
    np.testing.assert_allclose(chain.as_affine(), mats[2] @ mats[1] @ mats[0], rtol=1e-12)
    pts = rng.normal(size=(5, 3)) * 20
    np.testing.assert_allclose(chain.inverse().apply_points(chain.apply_points(pts)), pts,
                               atol=1e-9)
    # the Jacobian of an affine chain is the product of the 3x3 parts
    np.testing.assert_allclose(chain.jacobian(pts)[2], chain.as_affine()[:3, :3], atol=1e-12)


@pytest.mark.parametrize(
    ("matrix", "needle"),
    [
        (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "non-finite"),
        (np.eye(3), "not 4x4"),
        (np.vstack([np.eye(4)[:3], [1, 0, 0, 1]]), "last row"),
    ],
)
def test_bad_affines_are_refused(matrix, needle) -> None:
    with pytest.raises(TransformError, match=needle):
        AffineTransform(matrix, source="m.txt")
    assert issubclass(TransformError, UserError)


# ------------------------------------------------------------------ displacement fields


def test_linear_field_is_exact() -> None:
    b = np.array([[0.02, 0.01, 0.0], [0.0, -0.03, 0.01], [0.01, 0.0, 0.02]])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -10.0
    ijk = np.stack(np.meshgrid(*[np.arange(11)] * 3, indexing="ij"), axis=-1)
    x = ijk * 2.0 - 10.0
    field = DisplacementFieldTransform(x @ b.T, affine)
    p = np.array([[1.3, -2.7, 4.1], [0.0, 0.5, -3.3]])
    np.testing.assert_allclose(field.apply_points(p), p + p @ b.T, atol=1e-12)
    np.testing.assert_allclose(field.jacobian(p), np.broadcast_to(np.eye(3) + b, (2, 3, 3)),
                               atol=1e-12)
    np.testing.assert_allclose(field.inverse().apply_points(p + p @ b.T), p, atol=1e-9)


def test_smooth_field_jacobian_matches_finite_differences() -> None:
    u, affine = _smooth_field()
    field = DisplacementFieldTransform(u, affine)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-6, 6, size=(20, 3))
    jac = field.jacobian(pts)
    h = 1e-4
    fd = np.stack([(field.apply_points(pts + h * e) - field.apply_points(pts - h * e)) / (2 * h)
                   for e in np.eye(3)], axis=-1)
    # trilinear interpolation of central differences vs the slope of the trilinear
    # interpolant: both approximate du/dx of a field smooth on the 1 mm grid
    assert np.abs(jac - fd).max() < 0.03
    # and the analytic derivative of the underlying field
    analytic = np.zeros((20, 3, 3))
    analytic[:, 0, 1] = np.cos(pts[:, 1] / 6.0) / 6.0
    analytic[:, 1, 2] = -0.5 * np.sin(pts[:, 2] / 7.0) / 7.0
    analytic[:, 2, 0] = 0.3 * np.cos(pts[:, 0] / 5.0) / 5.0
    assert np.abs(jac - np.eye(3) - analytic).max() < 0.01


def test_field_inverse_by_fixed_point_iteration() -> None:
    u, affine = _smooth_field()
    field = DisplacementFieldTransform(u, affine)
    pts = np.random.default_rng(1).uniform(-8, 8, size=(50, 3))
    y = field.apply_points(pts)
    back = field.inverse().apply_points(y)
    np.testing.assert_allclose(back, pts, atol=1e-7)
    # inverse Jacobian is the matrix inverse of the forward one at the preimage
    np.testing.assert_allclose(field.inverse().jacobian(y), np.linalg.inv(field.jacobian(pts)),
                               atol=1e-6)
    assert field.inverse().inverse() is field


def test_reorientation_through_field_follows_fibre_segments() -> None:
    u, affine = _smooth_field()
    field = DisplacementFieldTransform(u, affine)
    rng = np.random.default_rng(2)
    pts = rng.uniform(-6, 6, size=(30, 3))
    v = rng.normal(size=(30, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out = reorient(v, pts, field)
    h = 1e-3
    seg = field.apply_points(pts + h * v) - field.apply_points(pts - h * v)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(np.abs(np.sum(out * seg, axis=1)), 0, 1)))
    assert angle.max() < 1.0


def test_composite_with_field_chain_rule() -> None:
    u, affine = _smooth_field()
    rot = AffineTransform(rotation_matrix([1, 1, 0], 30.0))
    stretch = AffineTransform(np.diag([2.0, 1, 1, 1]))
    chain = compose(rot, DisplacementFieldTransform(u, affine), stretch)
    assert not chain.is_affine
    with pytest.raises(TransformError, match="not affine"):
        chain.as_affine()
    pts = np.random.default_rng(3).uniform(-5, 5, size=(10, 3))
    h = 1e-4
    fd = np.stack([(chain.apply_points(pts + h * e) - chain.apply_points(pts - h * e)) / (2 * h)
                   for e in np.eye(3)], axis=-1)
    assert np.abs(chain.jacobian(pts) - fd).max() < 0.06
    np.testing.assert_allclose(chain.inverse().apply_points(chain.apply_points(pts)), pts,
                               atol=1e-7)
    lin = linearise(chain, pts[0])
    np.testing.assert_allclose(lin.apply_points(pts[0]), chain.apply_points(pts[0]), atol=1e-12)


# ------------------------------------------------------------------ file formats


def test_matrix_txt_round_trip_and_invert(tmp_path: Path) -> None:
    m = rotation_matrix([0, 1, 0], 20.0)
    m[:3, 3] = [1.0, 2.0, 3.0]
    path = write_matrix_txt(tmp_path / "m.txt", m)
    np.testing.assert_allclose(read_matrix_txt(path).as_affine(), m, atol=1e-11)
    inv = load_transform(path, invert=True)
    np.testing.assert_allclose(inv.as_affine(), np.linalg.inv(m), atol=1e-11)


def test_itk_text_hand_case(tmp_path: Path) -> None:
    # LPS: x' = M (x - c) + c + t with M = 90 degrees about z, c = (10, 0, 0), t = (1, 2, 3)
    path = tmp_path / "affine.txt"
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        "Parameters: 0 -1 0 1 0 0 0 0 1 1 2 3\nFixedParameters: 10 0 0\n"
    )
    t = load_transform(path)
    # RAS origin = LPS origin -> M(-c) + c + t = (11, -8, 3) LPS = (-11, 8, 3) RAS
    np.testing.assert_allclose(t.apply_points([0.0, 0.0, 0.0]), [-11.0, 8.0, 3.0], atol=1e-12)
    # RAS (1, 0, 0) = LPS (-1, 0, 0) -> M(-11, 0, 0) + (11, 2, 3) = (11, -9, 3) LPS
    np.testing.assert_allclose(t.apply_points([1.0, 0.0, 0.0]), [-11.0, 9.0, 3.0], atol=1e-12)
    again = write_itk_affine(tmp_path / "again.txt", t)
    np.testing.assert_allclose(read_itk_affine(again).as_affine(), t.as_affine(), atol=1e-12)


def test_itk_mat_matches_text(tmp_path: Path) -> None:
    from scipy.io import savemat

    params = np.array([0, -1, 0, 1, 0, 0, 0, 0, 1, 1, 2, 3], dtype=np.float64)
    savemat(tmp_path / "a.mat", {"AffineTransform_double_3_3": params[:, None],
                                 "fixed": np.array([[10.0], [0.0], [0.0]])}, format="4")
    t = load_transform(tmp_path / "a.mat")
    np.testing.assert_allclose(t.apply_points([0.0, 0.0, 0.0]), [-11.0, 8.0, 3.0], atol=1e-12)


def test_itk_unsupported_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bspline.tfm"
    path.write_text("#Insight Transform File V1.0\nTransform: BSplineTransform_double_3_3\n"
                    "Parameters: 1 2 3\n")
    with pytest.raises(TransformError, match="'BSplineTransform_double_3_3' is not supported"):
        load_transform(path)


_LTA_GEOM = """{which} volume info
valid = 1  # volume info valid
filename = {name}
volume = {dims}
voxelsize = {vox}
xras   = 1 0 0
yras   = 0 1 0
zras   = 0 0 1
cras   = {cras}
"""


def _lta(kind: int, matrix: np.ndarray) -> str:
    rows = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in matrix)
    geom = (_LTA_GEOM.format(which="src", name="src.nii", dims="10 10 10", vox="2 2 2",
                             cras="0 0 0")
            + _LTA_GEOM.format(which="dst", name="dst.nii", dims="20 20 20", vox="1 1 1",
                               cras="1 2 3"))
    geom = geom.replace("cras ", "c_ras ")
    return (f"# transform file\ntype      = {kind}\nnxforms   = 1\nmean      = 0 0 0\n"
            f"sigma     = 1.0\n1 4 4\n{rows}\n{geom}")


def test_lta_type1_is_ras_to_ras(tmp_path: Path) -> None:
    m = np.eye(4)
    m[:3, 3] = [5.0, -1.0, 2.0]
    (tmp_path / "r.lta").write_text(_lta(1, m))
    t = read_lta(tmp_path / "r.lta")
    np.testing.assert_allclose(t.apply_points([1.0, 1.0, 1.0]), [6.0, 0.0, 3.0])


def test_lta_type0_uses_the_geometry(tmp_path: Path) -> None:
    (tmp_path / "v.lta").write_text(_lta(0, np.eye(4)))
    t = load_transform(tmp_path / "v.lta")
    # src vox2ras: 2 mm, centre voxel 5 at c_ras 0 -> RAS 0 is voxel 5;
    # dst vox2ras: 1 mm, centre voxel 10 at (1, 2, 3) -> voxel 5 is (-4, -3, -2)
    np.testing.assert_allclose(t.apply_points([0.0, 0.0, 0.0]), [-4.0, -3.0, -2.0], atol=1e-12)
    np.testing.assert_allclose(t.apply_points([2.0, 0.0, 0.0]), [-3.0, -3.0, -2.0], atol=1e-12)


def test_lta_type0_without_geometry_is_refused(tmp_path: Path) -> None:
    text = _lta(0, np.eye(4)).replace("valid = 1", "valid = 0")
    (tmp_path / "v.lta").write_text(text)
    with pytest.raises(TransformError, match="needs valid src and dst volume info"):
        read_lta(tmp_path / "v.lta")


def test_neuroglancer_matrix_hand_case() -> None:
    # the linear part acts on physical coordinates; the translation is in output units
    matrix = [[0.0, 0.0, 1.0, 100.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 5.0]]
    dims = {"x": [1e-5, "m"], "y": [1e-5, "m"], "z": [1e-5, "m"]}
    t = neuroglancer_affine(matrix, dims)
    # source point (1, 2, 3) mm -> x = 3 + 100 * 0.01, y = 2, z = -1 + 5 * 0.01
    np.testing.assert_allclose(t.apply_points([1.0, 2.0, 3.0]), [4.0, 2.0, -0.95], atol=1e-12)
    # with the source axes listed (z, y, x), column 0 is the source's z
    t_zyx = neuroglancer_affine(matrix, dims, input_dimensions=["z", "y", "x"])
    np.testing.assert_allclose(t_zyx.apply_points([1.0, 2.0, 3.0]), [2.0, 2.0, -2.95], atol=1e-12)
    with pytest.raises(TransformError, match="unknown length unit 'furlong'"):
        neuroglancer_affine(matrix, {"x": [1, "furlong"], "y": [1, "m"], "z": [1, "m"]})


def test_itk_displacement_field_nifti(tmp_path: Path) -> None:
    import nibabel as nib

    data = np.zeros((6, 6, 6, 1, 3), dtype=np.float32)
    data[..., 0, :] = [1.0, 2.0, 3.0]  # LPS
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_intent("vector")
    nib.save(img, tmp_path / "warp.nii.gz")
    t = read_itk_displacement_field(tmp_path / "warp.nii.gz")
    np.testing.assert_allclose(t.apply_points([2.0, 2.0, 2.0]), [1.0, 0.0, 5.0], atol=1e-6)
    inv = load_transform(tmp_path / "warp.nii.gz", invert=True)
    np.testing.assert_allclose(inv.apply_points([1.0, 0.0, 5.0]), [2.0, 2.0, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("m.txt", "1 0 0\n0 1\n", "rows of different lengths"),
        ("m.txt", "1 0 0 0\n0 0 0 0\n0 0 1 0\n0 0 0 1\n", "singular"),
        ("m.txt", "a b c d\n", "not a text matrix of numbers"),
        ("m.xfm", "1\n", "cannot tell the transform format"),
        ("m.lta", "type = 2\n1 4 4\n", "LTA type 2 is not supported"),
    ],
)
def test_bad_transform_files(tmp_path: Path, name: str, content: str, needle: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(TransformError) as info:
        load_transform(tmp_path / name)
    assert needle in str(info.value)
    assert str(tmp_path / name) in str(info.value)


def test_missing_transform_file(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="transform file not found"):
        load_transform(tmp_path / "nope.txt")


# ------------------------------------------------------------------ helpers for the FOD


def test_to_dmri_space_with_voxel_frames() -> None:
    # microscopy: 10 um voxels, array axes (z, y, x) -> world (x, y, z)
    micro = np.array([[0, 0, 0.01, 0], [0, 0.01, 0, 0], [0.01, 0, 0, 0], [0, 0, 0, 1.0]])
    rot = AffineTransform(rotation_matrix([0, 0, 1], 90.0))
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    # a fibre along array axis 2 (= world x) at voxel (0, 0, 100) = world (1, 0, 0) mm
    v, p = to_dmri_space([0.0, 0.0, 1.0], [0.0, 0.0, 100.0], rot,
                         microscopy_affine=micro, grid_affine=grid)
    np.testing.assert_allclose(v, [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(p, [0.0, 0.5, 0.0], atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(unit_vectors, st.integers(0, 1000))
def test_ijk_world_vector_round_trip(v, seed) -> None:
    rng = np.random.default_rng(seed)
    a = np.eye(4)
    a[:3, :3] = rng.normal(size=(3, 3)) + 2 * np.eye(3)
    w = vectors_ijk_to_world(v, a)
    np.testing.assert_allclose(np.linalg.norm(w), 1.0, atol=1e-12)
    back = vectors_world_to_ijk(w, a)
    np.testing.assert_allclose(back, v, atol=1e-9)


def test_random_rigid_perturbation_is_rigid_and_seeded() -> None:
    a = random_rigid_perturbation(rotation_deg=5.0, translation_mm=0.5, centre_mm=[10, 0, 0], rng=4)
    b = random_rigid_perturbation(rotation_deg=5.0, translation_mm=0.5, centre_mm=[10, 0, 0], rng=4)
    np.testing.assert_array_equal(a.as_affine(), b.as_affine())
    r = a.as_affine()[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    none = random_rigid_perturbation(rotation_deg=0.0, translation_mm=0.0, centre_mm=[1, 2, 3])
    np.testing.assert_allclose(none.as_affine(), np.eye(4), atol=1e-15)


def test_composite_flattens() -> None:
    a = AffineTransform(np.eye(4))
    assert len(CompositeTransform([compose(a, a), a])) == 3


def test_perturbed_transforms_spread_and_seeds() -> None:
    from validation.transforms import perturbed_transforms

    base = AffineTransform(rotation_matrix([0, 0, 1], 10.0))
    draws = perturbed_transforms(base, n=200, rotation_deg=2.0, translation_mm=0.3,
                                 centre_mm=[5.0, 0.0, 0.0], rng=11)
    again = perturbed_transforms(base, n=3, rotation_deg=2.0, translation_mm=0.3,
                                 centre_mm=[5.0, 0.0, 0.0], rng=11)
    np.testing.assert_array_equal(draws[2].as_affine(), again[2].as_affine())
    # the perturbation is draws[k] after base: recover its rotation angle and the shift
    # of the centre, whose spreads match the requested sigmas
    angles, shifts = [], []
    for d in draws:
        pert = d.as_affine() @ np.linalg.inv(base.as_affine())
        angles.append(np.degrees(np.arccos(np.clip((np.trace(pert[:3, :3]) - 1) / 2, -1, 1))))
        shifts.append(pert[:3, :3] @ [5.0, 0, 0] + pert[:3, 3] - [5.0, 0, 0])
    rms_angle = np.sqrt(np.mean(np.square(angles)))
    assert rms_angle == pytest.approx(2.0, rel=0.15)
    assert np.std(np.asarray(shifts)) == pytest.approx(0.3, rel=0.15)
    with pytest.raises(TransformError, match="at least 1"):
        perturbed_transforms(base, n=0, rotation_deg=1.0, translation_mm=0.0)
