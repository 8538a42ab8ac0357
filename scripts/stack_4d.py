"""Stack each case's four sequences into one 4D NIfTI, the study format MONAI Label serves (apps/monailabel).

Command::

    python -m scripts.stack_4d --input_dir X --out_dir STUDIES

``X`` is anything ``configs/inference.json`` reads (a case folder, a folder of case folders, a BraTS
layout, a CSV). Each good case becomes ``STUDIES/<case_id>.nii.gz``: the volumes [T1, T1-CE, T2,
FLAIR] along the fourth axis, on the T1 file's grid (the four share it; cases where they do not are
reported and skipped, as every other bad case).
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from scripts.data import find_cases

__all__ = ["stack_case", "main"]

logger = logging.getLogger(__name__)


def stack_case(images: list[str], out_file: str | PathLike) -> Path:
    """Write the four files ``images`` [T1, T1-CE, T2, FLAIR] as one 4D NIfTI with the T1 file's affine and header."""
    volumes = [nib.load(str(path)) for path in images]
    stacked = np.stack([np.asarray(volume.dataobj) for volume in volumes], axis=-1)
    header = volumes[0].header.copy()
    header.set_data_dtype(stacked.dtype)
    header.set_slope_inter(None, None)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(stacked, volumes[0].affine, header=header), str(out))
    return out


def main(input_dir: str, out_dir: str, class_names: tuple[str, ...] = ("LGG", "HGG")) -> list[str]:
    """Stack every good case under ``input_dir`` into ``out_dir``; return the written files.

    Bad cases (missing or unreadable sequences, grids that differ, non-finite voxels) are logged and
    skipped; with no good case at all this raises.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cases = find_cases(input_dir, class_names=class_names)
    if not cases.items:
        raise ValueError(f"no case in {input_dir} could be stacked: {[str(e) for e in cases.errors]}")
    written = [str(stack_case(case["image"], Path(out_dir) / f"{case['case_id']}.nii.gz")) for case in cases.items]
    logger.info("stacked %d case(s) into %s; %d skipped", len(written), out_dir, len(cases.errors))
    return written


if __name__ == "__main__":
    fire.Fire(main)
