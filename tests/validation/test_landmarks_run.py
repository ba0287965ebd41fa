"""Levels placed by landmarks in a manifest (``landmarks``, ``landmark_transform``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from validation.cases import dataset_case
from validation.errors import ConfigError
from validation.transforms import read_matrix_txt, write_matrix_txt


def _write_pairs(path: Path, matrix: np.ndarray, *, n: int = 10, noise_mm: float = 0.0,
                 seed: int = 0) -> None:
    gen = np.random.default_rng(seed)
    src = gen.uniform(0.0, 3.2, size=(n, 3))
    tgt = src @ matrix[:3, :3].T + matrix[:3, 3] + gen.normal(0.0, noise_mm, size=(n, 3))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "source_x", "source_y", "source_z", "target_x", "target_y",
                    "target_z"])
        for i in range(n):
            w.writerow([f"p{i}", *src[i], *tgt[i]])


def _with_landmarks(example: Path, folder: Path, extra: str) -> Path:
    import shutil

    shutil.copytree(example, folder)
    text = (folder / "manifest.toml").read_text()
    text = text.replace('transform = [\n    "microscopy_to_dmri.txt",\n]\n', extra)
    (folder / "manifest.toml").write_text(text)
    return folder / "manifest.toml"


def test_exact_landmarks_recover_the_placement(example: Path, tmp_path: Path) -> None:
    truth = dataset_case(example / "manifest.toml").microscopy[0].voxel_to_dmri
    matrix = read_matrix_txt(example / "microscopy_to_dmri.txt").as_affine()
    manifest = _with_landmarks(example, tmp_path / "affine",
                               'landmarks = "pairs.csv"\nlandmark_transform = "affine"\n')
    _write_pairs(manifest.parent / "pairs.csv", matrix)
    level = dataset_case(manifest).microscopy[0]
    np.testing.assert_allclose(level.voxel_to_dmri, truth, atol=1e-9)
    summary = level.alignment.summary()
    assert summary["n_landmarks"] == 10
    assert summary["fre_rms_mm"] < 1e-9 and summary["loo_tre_max_mm"] < 1e-9
    # the example's placement shears: a rigid fit cannot match it
    rigid = manifest.read_text().replace('"affine"', '"rigid"')
    manifest.write_text(rigid)
    level = dataset_case(manifest).microscopy[0]
    assert level.alignment.kind == "rigid"
    assert level.alignment.summary()["fre_rms_mm"] > 0.01
    assert not np.allclose(level.voxel_to_dmri, truth, atol=1e-3)


def test_landmarks_follow_the_transform_chain(example: Path, tmp_path: Path) -> None:
    """``transform`` first, then the landmark fit (source = the chain's output frame)."""
    truth = dataset_case(example / "manifest.toml").microscopy[0].voxel_to_dmri
    matrix = read_matrix_txt(example / "microscopy_to_dmri.txt").as_affine()
    first = np.eye(4)
    first[:3, 3] = [10.0, -5.0, 2.0]
    folder = tmp_path / "chain"
    manifest = _with_landmarks(example, folder,
                               'transform = ["shift.txt"]\nlandmarks = "pairs.csv"\n'
                               'landmark_transform = "affine"\n')
    write_matrix_txt(folder / "shift.txt", first)
    # the landmarks map the shifted frame to dMRI world: matrix @ inverse(shift)
    _write_pairs(folder / "pairs.csv", matrix @ np.linalg.inv(first))
    level = dataset_case(manifest).microscopy[0]
    np.testing.assert_allclose(level.voxel_to_dmri, truth, atol=1e-8)


def test_landmark_keys_are_checked(example: Path, tmp_path: Path) -> None:
    manifest = _with_landmarks(example, tmp_path / "bad",
                               'transform = []\nlandmark_transform = "affine"\n')
    with pytest.raises(ConfigError, match="landmark_transform needs landmarks"):
        dataset_case(manifest)
    manifest.write_text(manifest.read_text().replace(
        'landmark_transform = "affine"', 'landmarks = 3'))
    with pytest.raises(ConfigError, match="should be a CSV path"):
        dataset_case(manifest)
