"""Find the cases to grade (configs/inference.json) and their true grades where some source knows them.

Any input the inference command takes: one case folder, a folder of case folders (a training layout of
:mod:`scripts.data.layouts` included, its grades kept), a CSV with columns ``case_id,t1,t1ce,t2,flair``
(``label`` optional), or one case's four files. Cases that cannot be used come back as
:class:`~scripts.data.DataError`, each naming the case and the file at fault.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import NamedTuple

from .datalist import load_datalist
from .errors import DataError
from .layouts import (
    FINDERS,
    NAME_MAPPING,
    SEQUENCES,
    detect_layout,
    find_case_files,
    find_csv,
    has_nifti,
    nifti_stem,
    read_csv,
)
from .validate import case_problems

__all__ = ["CSV_IMAGE_COLUMNS", "InferenceCases", "find_cases", "known_grades"]

logger = logging.getLogger(__name__)

CSV_IMAGE_COLUMNS = ("case_id", "t1", "t1ce", "t2", "flair")
"""Required columns of a CSV of cases to grade (``label`` optional: with it, the CSV is a cohort)."""


class InferenceCases(NamedTuple):
    """Cases to grade (``case_id``, ``image`` = four paths [T1, T1-CE, T2, FLAIR], ``label_name`` or None)
    and the cases that cannot be used, each a :class:`~scripts.data.DataError` naming case and file."""

    items: list[dict]
    errors: list[DataError]


def _case_id_of(file: str | PathLike) -> str:
    """A case id from a sequence's file name: ``x/BraTS20_Training_002_t2.nii.gz`` → ``BraTS20_Training_002``."""
    stem = nifti_stem(Path(file)) or Path(file).name
    suffix = next((f"_{s}" for s in SEQUENCES if stem.lower().endswith(f"_{s}")), "")
    return stem[: len(stem) - len(suffix)]


def _case_from_files(files: str | PathLike | Sequence[str | PathLike], case_id: str | None) -> dict:
    """One case from its four files [T1, T1-CE, T2, FLAIR] (absolute paths), named ``case_id`` or after the T1 file."""
    files = [files] if isinstance(files, (str, PathLike)) else list(files)
    name = case_id or (_case_id_of(files[0]) if files else None)
    if len(files) != 4:
        raise DataError(name, ", ".join(map(str, files)),
                        f"names {len(files)} file(s); give four, [T1, T1-CE, T2, FLAIR], as \"['t1.nii.gz', ...]\"")
    paths = [os.path.abspath(Path(f).expanduser()) for f in files]
    return {"case_id": name, "image": paths, "label_name": None}


def _csv_cases(path: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """A cohort CSV; with a ``label`` column through the training finder, else labels unknown."""
    if nifti_stem(path) is not None:
        raise DataError(_case_id_of(path), str(path), "is one NIfTI file; give its case folder, or the case's four "
                        "files with --input_files")
    try:
        rows, header = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(None, str(path), f"is neither a case folder nor a readable CSV ({error})") from None
    if "label" in header:
        return find_csv(path, class_names)
    missing = [c for c in CSV_IMAGE_COLUMNS if c not in header]
    if missing:
        raise DataError(None, str(path), f"columns {missing} missing (found {header})")
    cases, errors = [], []
    for row in rows:
        case_id = row["case_id"].strip()
        cells = [row[s].strip() for s in CSV_IMAGE_COLUMNS[1:]]
        if not all(cells):
            errors.append(DataError(case_id, str(path), "a sequence cell is empty"))
            continue
        files = [c if Path(c).is_absolute() else str(path.parent / c) for c in cells]
        cases.append(_case_from_files(files, case_id))
    return cases, errors


def _folder_cases(path: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """One case folder, a known training layout (labels kept), or any folder of case folders."""
    if has_nifti(path):
        images, _ = find_case_files(path, path.name)
        return [{"case_id": path.name, "image": images, "label_name": None}], []
    try:
        layout, root = detect_layout(path, class_names)
        return FINDERS[layout](root, class_names)
    except DataError:
        pass
    cases, errors = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            images, _ = find_case_files(folder, folder.name)
        except DataError as error:
            errors.append(error)
            continue
        cases.append({"case_id": folder.name, "image": images, "label_name": None})
    return cases, errors


def _mapping_grades(folder: Path) -> dict[str, str]:
    """Case id → grade from ``folder/name_mapping.csv`` (BraTS 2020); empty when there is none."""
    mapping = folder / NAME_MAPPING
    if not mapping.is_file():
        return {}
    rows, columns = read_csv(mapping)
    if not {"BraTS_2020_subject_ID", "Grade"} <= set(columns):
        raise DataError(None, str(mapping), f"columns BraTS_2020_subject_ID and Grade needed (found {columns})")
    return {row["BraTS_2020_subject_ID"].strip(): row["Grade"].strip() for row in rows}


def known_grades(
    cases: Sequence[dict],
    input_dir: str | PathLike | None = None,
    grades_from: str | PathLike | None = None,
    datalist_file: str | PathLike | None = None,
    class_names: Sequence[str] = ("LGG", "HGG"),
) -> dict[str, str]:
    """The true grade of each case where one is known, by case id.

    In this order (the first that knows a case wins): the case's own ``label_name`` (a cohort layout or
    CSV given as ``input_dir``); ``name_mapping.csv`` beside a single case folder given as ``input_dir``
    (BraTS 2020); the cohort at ``grades_from`` (any layout of :func:`scripts.data.detect_layout`);
    the datalist entry with the very same four image files. A source that cannot be read is logged
    and skipped; grades outside ``class_names`` are ignored.
    """
    by_id: dict[str, str] = {}
    if grades_from is not None and Path(grades_from).exists():
        try:
            layout, root = detect_layout(grades_from, class_names)
            by_id = (_mapping_grades(root) if layout == "brats2020" else
                     {c["case_id"]: c["label_name"] for c in FINDERS[layout](root, class_names)[0]})
        except DataError as error:
            logger.warning("no grades from --grades_from: %s", error)
    if input_dir is not None:
        path = Path(os.path.abspath(Path(input_dir).expanduser()))
        if path.is_dir() and has_nifti(path):
            try:
                by_id = {**by_id, **_mapping_grades(path.parent)}
            except DataError as error:
                logger.warning("no grades: %s", error)
    by_files: dict[tuple[str, ...], str] = {}
    if datalist_file is not None and Path(datalist_file).is_file():
        try:
            datalist = load_datalist(datalist_file)
        except (ValueError, KeyError, OSError) as error:
            logger.warning("no grades from the datalist %s: %s", datalist_file, error)
        else:
            names = datalist["class_names"]
            by_files = {tuple(e["image"]): names[int(e["label"])] for e in datalist["training"] if "label" in e}
    grades = {}
    for case in cases:
        grade = case.get("label_name") or by_id.get(case["case_id"]) or by_files.get(tuple(case["image"]))
        if grade in class_names:
            grades[case["case_id"]] = grade
    return grades


def find_cases(
    input_dir: str | PathLike | None = None,
    input_files: Sequence[str | PathLike] | None = None,
    class_names: Sequence[str] = ("LGG", "HGG"),
    case_id: str | None = None,
    check_voxels: bool = True,
    grades_from: str | PathLike | None = None,
    datalist_file: str | PathLike | None = None,
) -> InferenceCases:
    """Find the cases to grade, check their files (readable, 3-D, one grid, finite voxels) and look up
    their true grades (:func:`known_grades`; ``label_name``, None where unknown).

    Args:
        input_dir: a case folder, a folder of case folders, or a CSV file.
        input_files: four files [T1, T1-CE, T2, FLAIR] of one case (instead of ``input_dir``).
        class_names: class names, to read the grades of a training layout.
        case_id: name of the ``input_files`` case (default: the T1 file name without ``_t1``).
        check_voxels: read every voxel (truncated files, NaN/inf).
        grades_from: a cohort (any training layout) whose grades apply to cases of the same id.
        datalist_file: a datalist whose grades apply to cases with the same image files.

    Raises:
        ValueError: neither or both inputs given.
        DataError: no case found at all, ``input_files`` not four files, ``input_dir`` a file that is no CSV.
    """
    if (input_dir is None) == (input_files is None):
        raise ValueError("give exactly one of input_dir (case folder, folder of cases, CSV) and input_files.")
    if input_files is not None:
        found, errors = [_case_from_files(input_files, case_id)], []
    else:
        path = Path(os.path.abspath(Path(input_dir).expanduser()))
        if not path.exists():
            raise DataError(None, str(path), "input_dir does not exist")
        found, errors = _csv_cases(path, class_names) if path.is_file() else _folder_cases(path, class_names)
    for case in found:
        case_id_ = case["case_id"]
        if not case_id_ or case_id_ in (".", "..") or os.sep in case_id_:
            raise DataError(case_id_, case["image"][0], "case id cannot name an output folder")
    problems = case_problems(found, check_voxels)
    errors = errors + [p for p in problems if p is not None]
    good = [c for c, problem in zip(found, problems) if problem is None]
    grades = known_grades(good, input_dir, grades_from, datalist_file, class_names)
    items = [{"case_id": c["case_id"], "image": list(c["image"]), "label_name": grades.get(c["case_id"])} for c in good]
    if not items and not errors:
        raise DataError(None, str(input_dir), "no case found (expected NIfTI files *_t1, *_t1ce, *_t2, *_flair)")
    for error in errors:
        logger.error("skipping bad case: %s", error)
    return InferenceCases(items, errors)
