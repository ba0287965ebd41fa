"""Chunked, on-disk, resumable and distributed structure-tensor orientations."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

from validation.errors import UserError
from validation.io.omezarr import open_ome_zarr, write_ome_zarr
from validation.orientation import (
    MaskSpec,
    open_orientations,
    orient_to_ome_zarr,
    structure_tensor_orientation,
    structure_tensor_orientations,
)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    return ndimage.gaussian_filter(rng.random((30, 34, 38)), 1.0).astype(np.float32)


@pytest.fixture
def on_disk(tmp_path, volume):
    path = write_ome_zarr(tmp_path / "in.ome.zarr", volume, spacing=(2.0, 1.0, 1.0),
                          chunks=(10, 10, 10))
    return open_ome_zarr(path)


@pytest.mark.parametrize("chunks", [(10, 12, 14), (30, 9, 38), (16, 34, 11), (25, 25, 25)])
def test_dask_chunks_equal_in_memory_exactly(volume, chunks):
    spacing = (2.0, 1.0, 1.0)
    ref = structure_tensor_orientation(volume, sigma=1.5, rho=2.5, spacing=spacing)
    lazy = structure_tensor_orientation(da.from_array(volume, chunks=chunks), sigma=1.5,
                                        rho=2.5, spacing=spacing)
    assert isinstance(lazy.vectors, da.Array)
    np.testing.assert_array_equal(lazy.vectors.compute(), ref.vectors)
    np.testing.assert_array_equal(lazy.eigenvalues.compute(), ref.eigenvalues)
    np.testing.assert_array_equal(lazy.anisotropy.compute(), ref.anisotropy)


def test_several_pairs_from_a_dask_array_equal_single_calls(volume):
    lazy = da.from_array(volume, chunks=(15, 17, 19))
    many = structure_tensor_orientations(lazy, scales=[(1.0, 2.0), (2.0, 3.0)])
    for res in many:
        one = structure_tensor_orientation(volume, sigma=res.sigma, rho=res.rho)
        np.testing.assert_array_equal(res.vectors.compute(), one.vectors)
        np.testing.assert_array_equal(res.anisotropy.compute(), one.anisotropy)


def _read_all(path, prefix=""):
    root = zarr.open_group(str(path), mode="r")
    base = f"{prefix}/" if prefix else ""
    return {name: root[f"{base}{name}/0"][...] for name in ("vectors", "eigenvalues",
                                                            "anisotropy")}


def test_orient_writes_the_in_memory_result(tmp_path, on_disk, volume):
    out = tmp_path / "st.ome.zarr"
    res = orient_to_ome_zarr(on_disk, out, scales=[(3.0, 5.0)], chunks=(12, 16, 20))
    assert res.complete and res.computed == res.total == 3 * 3 * 2 and res.skipped == 0
    ref = structure_tensor_orientation(volume, sigma=3.0, rho=5.0, spacing=(2.0, 1.0, 1.0))
    field = open_orientations(out)
    np.testing.assert_array_equal(field.vectors.compute(), ref.vectors)
    np.testing.assert_array_equal(field.eigenvalues.compute(), ref.eigenvalues)
    np.testing.assert_array_equal(field.anisotropy.compute(), ref.anisotropy)
    assert field.spacing == (2.0, 1.0, 1.0) and field.units == "micrometer"
    assert (field.sigma, field.rho) == (3.0, 5.0)
    assert field.mask is None
    # NGFF images readable by any reader: channel axis first on disk
    assert open_ome_zarr(out, component="vectors").array.shape == volume.shape + (3,)
    assert zarr.open_group(str(out), mode="r")["vectors/0"].shape == (3,) + volume.shape
    assert not (tmp_path / "st.ome.zarr.partial").exists()


def test_an_interrupted_orient_resumes_only_the_missing_chunks(tmp_path, on_disk):
    full = tmp_path / "full.ome.zarr"
    orient_to_ome_zarr(on_disk, full, scales=[(2.0, 3.0)], chunks=10)
    out = tmp_path / "resumed.ome.zarr"
    first = orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10, max_chunks=7)
    assert (first.computed, first.skipped, first.complete) == (7, 0, False)
    assert not out.exists() and first.path.name == "resumed.ome.zarr.partial"
    with pytest.raises(UserError, match="incomplete"):
        open_orientations(first.path)
    second = orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10, max_chunks=5)
    assert (second.computed, second.skipped, second.complete) == (5, 7, False)
    total = 3 * 4 * 4
    third = orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10)
    assert (third.computed, third.skipped, third.total) == (total - 12, 12, total)
    assert third.complete and out.exists()
    a, b = _read_all(full), _read_all(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    again = orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10)
    assert (again.computed, again.skipped) == (0, total)


def test_resume_refuses_other_parameters(tmp_path, on_disk):
    out = tmp_path / "o.ome.zarr"
    orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10, max_chunks=2)
    with pytest.raises(UserError, match="other parameters"):
        orient_to_ome_zarr(on_disk, out, scales=[(2.0, 4.0)], chunks=10)
    res = orient_to_ome_zarr(on_disk, out, scales=[(2.0, 4.0)], chunks=10, overwrite=True)
    assert res.complete and res.computed == res.total
    with pytest.raises(UserError, match="exists with other parameters"):
        orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=10)


def test_several_scale_pairs_in_one_pass(tmp_path, on_disk, volume):
    out = tmp_path / "multi.ome.zarr"
    orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0), (3.0, 6.0)], chunks=(15, 17, 19),
                       version="0.5")
    for i, (s, r) in enumerate([(2.0, 3.0), (3.0, 6.0)]):
        field = open_orientations(out, scale=i)
        ref = structure_tensor_orientation(volume, sigma=s, rho=r, spacing=(2.0, 1.0, 1.0))
        np.testing.assert_array_equal(field.vectors.compute(), ref.vectors)
        assert (field.sigma, field.rho) == (s, r)
    assert zarr.open_group(str(out), mode="r").metadata.zarr_format == 3
    with pytest.raises(UserError, match="scale 2 does not exist"):
        open_orientations(out, scale=2)


def test_masks_by_threshold_labels_and_exclusion(tmp_path, on_disk, volume):
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, :17] = 1
    labels[:, 17:, :5] = 2
    vessels = np.zeros(volume.shape, np.uint8)
    vessels[10:12] = 1
    lab_path = write_ome_zarr(tmp_path / "labels.ome.zarr", labels, spacing=(2, 1, 1))
    ves_path = write_ome_zarr(tmp_path / "vessels.ome.zarr", vessels, spacing=(2, 1, 1))
    threshold = float(np.median(volume))
    spec = MaskSpec(threshold=threshold, labels=str(lab_path), keep_labels=(1,),
                    exclude=str(ves_path))
    out = tmp_path / "m.ome.zarr"
    orient_to_ome_zarr(on_disk, out, scales=[(2.0, 3.0)], chunks=(10, 11, 12), mask=spec)
    mask = open_orientations(out).mask.compute()
    expected = (volume > threshold) & (labels == 1) & (vessels == 0)
    np.testing.assert_array_equal(mask, expected)
    # the orientations themselves are not masked
    ref = structure_tensor_orientation(volume, sigma=2.0, rho=3.0, spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(open_orientations(out).vectors.compute(), ref.vectors)
    with pytest.raises(UserError, match="shape"):
        small = write_ome_zarr(tmp_path / "small.ome.zarr", labels[:5], spacing=(2, 1, 1))
        orient_to_ome_zarr(on_disk, tmp_path / "x.ome.zarr", scales=[(2.0, 3.0)],
                           mask=MaskSpec(labels=str(small)))


def test_a_local_cluster_gives_the_local_result(tmp_path, on_disk):
    distributed = pytest.importorskip("distributed")
    local = tmp_path / "local.ome.zarr"
    orient_to_ome_zarr(on_disk, local, scales=[(2.0, 3.0)], chunks=(10, 17, 19))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            remote = tmp_path / "remote.ome.zarr"
            res = orient_to_ome_zarr(on_disk, remote, scales=[(2.0, 3.0)],
                                     chunks=(10, 17, 19), scheduler=client)
            assert res.complete and res.computed == res.total == 12
            by_address = tmp_path / "address.ome.zarr"
            orient_to_ome_zarr(on_disk, by_address, scales=[(2.0, 3.0)],
                               chunks=(10, 17, 19), scheduler=cluster.scheduler_address)
    a = _read_all(local)
    for other in (remote, by_address):
        b = _read_all(other)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_unreachable_scheduler_is_a_user_error(tmp_path, on_disk, monkeypatch):
    pytest.importorskip("distributed")
    import validation.orientation

    monkeypatch.setattr(validation.orientation, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(UserError, match="cannot connect"):
        orient_to_ome_zarr(on_disk, tmp_path / "o.ome.zarr", scales=[(2.0, 3.0)],
                           scheduler="tcp://127.0.0.1:1")


def test_cli_orient_resumes_and_reports(tmp_path, on_disk, capsys, caplog):
    from validation.cli import main

    out = tmp_path / "cli.ome.zarr"
    args = ["orient", on_disk.path, "-o", str(out), "--sigma-um", "2", "--rho-um", "3",
            "--chunks", "15,17,19", "-q"]
    assert main(args + ["--max-chunks", "3"]) == 0
    assert (tmp_path / "cli.ome.zarr.partial").exists() and not out.exists()
    assert main(args) == 0
    assert out.exists()
    direct = tmp_path / "direct.ome.zarr"
    orient_to_ome_zarr(on_disk, direct, scales=[(2.0, 3.0)], chunks=(15, 17, 19))
    a, b = _read_all(direct), _read_all(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    code = main(["orient", on_disk.path, "-o", str(out), "--sigma-um", "2,3",
                 "--rho-um", "3,4,5"])
    assert code == 2
    assert "--sigma-um has 2 values" in capsys.readouterr().err


def test_cli_orient_warns_for_sigma_below_half_a_voxel(tmp_path, on_disk):
    from validation.cli import main

    with pytest.warns(UserWarning, match="half a voxel"):
        code = main(["orient", on_disk.path, "-o", str(tmp_path / "w.ome.zarr"),
                     "--sigma-um", "0.6", "--rho-um", "2", "-q"])
    assert code == 0


@pytest.mark.parametrize("chunks", [(4, 4, 4), (10, 7, 50), (3, 40, 13)])
def test_axes_shorter_than_the_halo_still_chunk_exactly(chunks):
    vol = np.random.default_rng(8).random((10, 40, 50)).astype(np.float32)
    ref = structure_tensor_orientation(vol, sigma=1.5, rho=4.0)  # halo 22 > 10 along z
    lazy = structure_tensor_orientation(da.from_array(vol, chunks=chunks), sigma=1.5, rho=4.0)
    np.testing.assert_array_equal(lazy.vectors.compute(), ref.vectors)
    assert lazy.vectors.chunks[0] == (10,)
