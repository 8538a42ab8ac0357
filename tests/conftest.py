"""Shared fixtures. Data fixtures are prefixed ``data_``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.data.synthetic import NAME_MAPPING_COLUMNS, brats_affine, generate_dataset

DATA_SMALL_SHAPE = (48, 48, 36)


def _write_case(
    case_dir: Path,
    case_id: str,
    extension: str = "nii.gz",
    seg_name: str | None = "default",
    shape: tuple[int, int, int] = (8, 8, 6),
    seed: int = 0,
) -> dict[str, Path]:
    """Write a tiny case (four positive int16 sequences and a label map); return the paths by role."""
    case_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = brats_affine(shape)
    paths = {}
    for sequence in ("t1", "t1ce", "t2", "flair"):
        paths[sequence] = case_dir / f"{case_id}_{sequence}.{extension}"
        nib.save(nib.Nifti1Image(rng.integers(1, 100, shape).astype(np.int16), affine), paths[sequence])
    if seg_name is not None:
        name = f"{case_id}_seg.{extension}" if seg_name == "default" else seg_name
        paths["seg"] = case_dir / name
        nib.save(nib.Nifti1Image(rng.choice([0, 1, 2, 4], shape).astype(np.uint8), affine), paths["seg"])
    return paths


@pytest.fixture
def restore_backends():
    """Put torch's determinism and cuDNN switches back as they were after the test."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0])
    cudnn.benchmark, cudnn.deterministic = saved[1], saved[2]


@pytest.fixture
def data_write_case() -> Callable[..., dict[str, Path]]:
    """``write(case_dir, case_id, extension="nii.gz", seg_name="default", shape=(8, 8, 6), seed=0)``."""
    return _write_case


@pytest.fixture
def data_brats2020_tree(tmp_path: Path) -> Path:
    """Tiny BraTS 2020 folder: 6 HGG + 5 LGG, mixed .nii/.nii.gz, subject 355's odd label name."""
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    rows = []
    for n in [*range(1, 11), 355]:
        case_id = f"BraTS20_Training_{n:03d}"
        grade = "HGG" if n % 2 == 0 or n == 355 else "LGG"
        seg = "W39_1998.09.19_Segm.nii" if n == 355 else "default"
        _write_case(root / case_id, case_id, "nii" if n % 3 == 0 else "nii.gz", seg, seed=n)
        rows.append(f"{grade},NA,NA,{'TCGA-' + str(n) if n < 4 else 'NA'},NA,{case_id}")
    header = ",".join(NAME_MAPPING_COLUMNS)
    (root / "name_mapping.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


@pytest.fixture(scope="session")
def data_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic BraTS 2020 cohort, 12 cases of 48x48x36 (seed 0, half HGG, no ambiguous cases)."""
    root = tmp_path_factory.mktemp("synthetic") / "MICCAI_BraTS2020_TrainingData"
    generate_dataset(root, cases=12, shape=DATA_SMALL_SHAPE, seed=0, hgg_fraction=0.5, ambiguous_fraction=0.0)
    return root
