"""Find the cases of a cohort on disk: BraTS 2020, BraTS 2018/2019 grade folders, or a CSV.

Every finder returns ``(cases, errors)``: ``cases`` are dicts with ``case_id``, ``patient_id``,
``image`` (four absolute paths in the order [T1, T1-CE, T2, FLAIR]), ``mask`` (absolute path or
``None``) and ``label_name``; ``errors`` are ``DataError`` for cases that cannot be used, each naming
the case and the file or folder at fault.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from monai.utils import look_up_option

from .errors import DataError

__all__ = [
    "CSV_COLUMNS",
    "FINDERS",
    "LAYOUTS",
    "NAME_MAPPING",
    "SEQUENCES",
    "detect_layout",
    "find_brats2020",
    "find_case_files",
    "find_csv",
    "find_grade_folders",
    "has_nifti",
    "nifti_stem",
    "read_csv",
]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
"""Sequence suffixes in channel order [T1, T1-CE, T2, FLAIR]."""
LAYOUTS = ("auto", "brats2020", "grade_folders", "csv")
NAME_MAPPING = "name_mapping.csv"
CSV_COLUMNS = ("case_id", *SEQUENCES, "label")
"""Required columns of a cohort CSV; ``mask`` and ``patient_id`` are optional."""
_MISSING = ("", "na", "nan", "none")


def nifti_stem(path: Path) -> str | None:
    """File name without ``.nii``/``.nii.gz`` (any case), or ``None`` for other files."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_case_files(case_dir: Path, case_id: str) -> tuple[list[str], str | None]:
    """The four sequences and the label map (if any) of one case folder.

    A sequence is the file whose name ends ``_t1``, ``_t1ce``, ``_t2`` or ``_flair`` before
    ``.nii``/``.nii.gz``. The label map is the file ending ``_seg``; failing that, the one other NIfTI
    file with ``seg`` in its name (BraTS 2020 subject 355 ships ``W39_1998.09.19_Segm.nii``).

    Raises:
        DataError: sequences are missing (all of them named; the file is the first one's expected name),
            or several files match one role.
    """
    stems = {p: nifti_stem(p) for p in sorted(case_dir.iterdir()) if p.is_file()}
    stems = {p: s.lower() for p, s in stems.items() if s is not None}
    found = {sequence: [p for p, s in stems.items() if s.endswith(f"_{sequence}")] for sequence in SEQUENCES}
    missing = [sequence for sequence in SEQUENCES if not found[sequence]]
    if missing:
        present = next(((p, sequence) for sequence in SEQUENCES for p in found[sequence]), None)
        # named as the case's other files are, else after the case id
        prefix = nifti_stem(present[0])[: -len(present[1]) - 1] if present else case_id
        expected = case_dir / f"{prefix}_{missing[0]}.nii.gz"
        names = ", ".join(missing)
        patterns = ", ".join(f"*_{sequence}.nii[.gz]" for sequence in missing)
        plural = "s" * (len(missing) > 1)
        raise DataError(case_id, str(expected), f"missing {names} sequence{plural} (no {patterns} file)")
    images = []
    for sequence in SEQUENCES:
        if len(found[sequence]) > 1:
            names = [p.name for p in found[sequence]]
            raise DataError(case_id, str(found[sequence][0]), f"several {sequence} files: {names}")
        images.append(os.path.abspath(found[sequence][0]))
    others = {p: s for p, s in stems.items() if os.path.abspath(p) not in images}
    masks = [p for p, s in others.items() if s.endswith("_seg")] or [p for p, s in others.items() if "seg" in s]
    if len(masks) > 1:
        raise DataError(case_id, str(masks[0]), f"several label files: {[p.name for p in masks]}")
    return images, os.path.abspath(masks[0]) if masks else None


def read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows (as dicts) and header of a CSV file."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader), list(reader.fieldnames or [])


def _case(case_id: str, patient_id: str, images: list[str], mask: str | None, label_name: str) -> dict:
    return {"case_id": case_id, "patient_id": patient_id, "image": images, "mask": mask, "label_name": label_name}


def _check_grade(case_id: str, grade: str, class_names: Sequence[str], source: Path) -> None:
    if grade not in class_names:
        raise DataError(case_id, str(source), f"unknown grade {grade!r} (class_names are {list(class_names)})")


def has_nifti(folder: Path) -> bool:
    """Whether ``folder`` holds a NIfTI file (a case folder, not a folder of cases)."""
    return any(nifti_stem(p) is not None for p in folder.iterdir() if p.is_file())


def find_brats2020(root: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """BraTS 2020: one folder per subject, grades in ``name_mapping.csv``.

    The patient id is ``TCGA_TCIA_subject_ID`` where the CSV gives one (so that two scans of one
    patient, if any, land in the same fold), else the case id.
    """
    mapping_path = root / NAME_MAPPING
    rows, columns = read_csv(mapping_path)
    for column in ("Grade", "BraTS_2020_subject_ID"):
        if column not in columns:
            raise DataError(None, str(mapping_path), f"column {column!r} missing (found {list(columns)})")
    rows_by_id = {row["BraTS_2020_subject_ID"].strip(): row for row in rows}
    folders = {p.name: p for p in root.iterdir() if p.is_dir()}
    cases, errors = [], []
    for case_id in sorted(set(rows_by_id) | {n for n, p in folders.items() if has_nifti(p)}):
        row = rows_by_id.get(case_id)
        try:
            if row is None:
                raise DataError(case_id, str(folders[case_id]), f"unknown grade: subject not listed in {NAME_MAPPING}")
            if case_id not in folders:
                raise DataError(case_id, str(root / case_id), f"listed in {NAME_MAPPING} but its folder is missing")
            grade = row["Grade"].strip()
            _check_grade(case_id, grade, class_names, mapping_path)
            images, mask = find_case_files(folders[case_id], case_id)
        except DataError as error:
            errors.append(error)
            continue
        tcga = (row.get("TCGA_TCIA_subject_ID") or "").strip()
        cases.append(_case(case_id, tcga if tcga.lower() not in _MISSING else case_id, images, mask, grade))
    return cases, errors


def find_grade_folders(root: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """BraTS 2018/2019: ``root/<grade>/<case>/<case>_<sequence>.nii.gz``; the grade folder is the label."""
    cases, errors = [], []
    for grade_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for case_dir in sorted(p for p in grade_dir.iterdir() if p.is_dir()):
            case_id = case_dir.name
            try:
                _check_grade(case_id, grade_dir.name, class_names, case_dir)
                images, mask = find_case_files(case_dir, case_id)
            except DataError as error:
                errors.append(error)
                continue
            cases.append(_case(case_id, case_id, images, mask, grade_dir.name))
    return cases, errors


def find_csv(csv_path: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """A cohort CSV with columns ``case_id,t1,t1ce,t2,flair,label`` and optional ``mask``, ``patient_id``.

    Relative paths are taken relative to the CSV's folder; an empty ``mask`` cell means no mask.
    """
    rows, columns = read_csv(csv_path)
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
        raise DataError(None, str(csv_path), f"columns {missing} missing (found {list(columns)})")
    cases, errors, seen = [], [], set()
    for row in rows:
        case_id = row["case_id"].strip()
        try:
            if case_id in seen:
                raise DataError(case_id, str(csv_path), "case id appears more than once")
            seen.add(case_id)
            _check_grade(case_id, row["label"].strip(), class_names, csv_path)
            images = [_csv_file(csv_path, case_id, row.get(s) or "", f"{s} sequence") for s in SEQUENCES]
            mask_cell = (row.get("mask") or "").strip()
            mask = _csv_file(csv_path, case_id, mask_cell, "mask") if mask_cell else None
        except DataError as error:
            errors.append(error)
            continue
        patient_id = (row.get("patient_id") or "").strip() or case_id
        cases.append(_case(case_id, patient_id, images, mask, row["label"].strip()))
    return cases, errors


def _csv_file(csv_path: Path, case_id: str, cell: str, role: str) -> str:
    """Absolute path of one CSV cell, relative paths taken from the CSV's folder."""
    cell = cell.strip()
    if not cell:
        raise DataError(case_id, str(csv_path), f"missing {role} (empty cell)")
    path = Path(cell).expanduser()
    path = path if path.is_absolute() else csv_path.parent / path
    if not path.is_file():
        raise DataError(case_id, str(path), f"missing {role} (no such file)")
    return os.path.abspath(path)


def detect_layout(dataset_dir: str | Path, class_names: Sequence[str], layout: str = "auto") -> tuple[str, Path]:
    """Resolve ``layout`` and the folder (or CSV file) it applies to.

    ``auto`` picks ``csv`` for a ``.csv`` file, ``grade_folders`` when ``dataset_dir`` has a sub-folder
    named after a class, ``brats2020`` when it holds ``name_mapping.csv``, and otherwise looks inside a
    single sub-folder (the downloaded archives nest ``MICCAI_BraTS2020_TrainingData`` one level down).
    """
    layout = look_up_option(layout, LAYOUTS)
    path = Path(os.path.abspath(Path(dataset_dir).expanduser()))
    if not path.exists():
        raise DataError(None, str(path), "dataset path does not exist")
    if layout == "csv" or (layout == "auto" and path.is_file()):
        if path.suffix.lower() != ".csv" or not path.is_file():
            raise DataError(None, str(path), "the csv layout expects a .csv file")
        return "csv", path
    if not path.is_dir():
        raise DataError(None, str(path), f"layout {layout!r} expects a folder")
    if layout != "auto":
        if layout == "brats2020" and not (path / NAME_MAPPING).is_file():
            raise DataError(None, str(path / NAME_MAPPING), "BraTS 2020 layout needs this file")
        return layout, path
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if any(p.name in class_names for p in subdirs):
        return "grade_folders", path
    if (path / NAME_MAPPING).is_file():
        return "brats2020", path
    if len(subdirs) == 1:
        return detect_layout(subdirs[0], class_names, "auto")
    raise DataError(
        None,
        str(path),
        f"cannot tell the layout: expected {NAME_MAPPING} (BraTS 2020), sub-folders named after the classes "
        f"{list(class_names)} (BraTS 2018/2019) or a .csv file; pass layout= one of {LAYOUTS[1:]}",
    )


FINDERS = {"brats2020": find_brats2020, "grade_folders": find_grade_folders, "csv": find_csv}
