"""Check every case's files before training: readable, consistent geometry, finite voxels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np

from .errors import DataError, raise_or_skip

__all__ = ["AFFINE_ATOL", "case_problems", "check_case", "validate_cases"]

AFFINE_ATOL = 1e-3
"""Largest difference (mm) between two sequences' affines still taken as the same grid."""


def _read_voxels(case_id: str, path: str, image: nib.spatialimages.SpatialImage) -> None:
    """Read every voxel once in its on-disk type; integer data with finite scaling cannot be non-finite."""
    proxy = image.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    except Exception as error:  # nibabel raises OSError, EOFError, zlib.error, ValueError for damaged files
        raise DataError(case_id, path, f"unreadable voxel data (truncated or corrupt file: {error})") from error
    scaling = [getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)]
    if not np.all(np.isfinite(scaling)):
        raise DataError(case_id, path, f"non-finite intensity scaling {scaling}")
    if np.issubdtype(raw.dtype, np.inexact):
        bad = raw.size - int(np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise DataError(case_id, path, f"{bad} non-finite voxels (NaN or inf)")


def check_case(case: dict, check_voxels: bool = True) -> None:
    """Raise ``DataError`` naming the case and file if any of its files cannot be used.

    Checks, in order per file (the four sequences, then the mask if any): the file exists, its header
    reads, it is one 3-D volume, its shape and affine equal the T1's; then, when ``check_voxels``, all
    its voxels read (catches truncated files) and are finite. The header part reads a few hundred bytes
    per file; the voxel part reads (and for ``.nii.gz`` decompresses) every file once, about 0.1-0.3 s
    per 240x240x155 volume.
    """
    case_id = case["case_id"]
    files = [*case["image"], *([case["mask"]] if case.get("mask") else [])]
    reference = None
    for path in files:
        if not os.path.isfile(path):
            raise DataError(case_id, path, "missing file")
        try:
            image = nib.load(path)
        except Exception as error:  # any failure to parse the header makes the file unusable
            raise DataError(case_id, path, f"unreadable file ({error})") from error
        shape = tuple(int(n) for n in image.shape)
        if len(shape) != 3:
            raise DataError(case_id, path, f"expected one 3-D volume, got shape {shape}")
        if reference is None:
            reference = (shape, image.affine, path)
        elif shape != reference[0]:
            raise DataError(case_id, path, f"shape differs: {shape}, but {reference[0]} in {reference[2]}")
        elif not np.allclose(image.affine, reference[1], atol=AFFINE_ATOL):
            raise DataError(case_id, path, f"affine differs from that of {reference[2]}")
        if check_voxels:
            _read_voxels(case_id, path, image)


def case_problems(
    cases: Sequence[dict], check_voxels: bool = True, num_workers: int | None = None
) -> list[DataError | None]:
    """``check_case`` on every case, in threads (decompression releases the GIL); one entry per case.

    ``num_workers`` defaults to ``min(8, cpus)``.
    """
    def run(case: dict) -> DataError | None:
        try:
            check_case(case, check_voxels)
        except DataError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(run, cases))


def validate_cases(
    cases: Sequence[dict],
    check_voxels: bool = True,
    skip_bad_cases: bool = False,
    num_workers: int | None = None,
) -> tuple[list[dict], list[DataError]]:
    """Check all cases; return ``(good_cases, bad_cases)``.

    Args:
        cases: dicts with ``case_id``, ``image`` (paths) and optionally ``mask``.
        check_voxels: also read every voxel (see ``check_case`` for the cost).
        skip_bad_cases: log and return bad cases instead of raising.
        num_workers: threads reading files.

    Raises:
        DataError: listing every bad case, unless ``skip_bad_cases``.
    """
    problems = case_problems(cases, check_voxels, num_workers)
    bad = raise_or_skip([p for p in problems if p is not None], skip_bad_cases)
    return [case for case, problem in zip(cases, problems) if problem is None], bad
