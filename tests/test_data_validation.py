"""Each kind of bad input gives a DataError naming the case and the file, or is listed and skipped."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest

from scripts.data import DataError, build_datalist, check_case, validate_cases
from scripts.data.synthetic import brats_affine

CASE = "BraTS20_Training_004"  # an HGG case of the tree, stored as .nii.gz


def _file(tree, sequence, case=CASE, extension="nii.gz"):
    return tree / case / f"{case}_{sequence}.{extension}"


def _assert_names(error: DataError, case_id: str, path) -> None:
    assert error.case_id == case_id and error.path == str(path)
    assert case_id in str(error) and str(path) in str(error)


def _build_error(tree, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        build_datalist(tree, num_folds=5, **kwargs)
    return info.value


def test_missing_sequence(data_brats2020_tree):
    _file(data_brats2020_tree, "t2").unlink()
    error = _build_error(data_brats2020_tree)
    _assert_names(error, CASE, _file(data_brats2020_tree, "t2"))
    assert "missing t2" in str(error)


def test_two_files_for_one_sequence(data_brats2020_tree):
    path = _file(data_brats2020_tree, "flair")
    (path.parent / f"{CASE}_flair.nii").write_bytes(gzip.decompress(path.read_bytes()))
    assert "several flair files" in str(_build_error(data_brats2020_tree))


def test_unreadable_file(data_brats2020_tree):
    path = _file(data_brats2020_tree, "t1ce")
    path.write_bytes(b"not a nifti file at all")
    error = _build_error(data_brats2020_tree, check_voxels=False)
    _assert_names(error, CASE, path)
    assert "unreadable" in str(error)


@pytest.mark.parametrize("case, extension", [(CASE, "nii.gz"), ("BraTS20_Training_006", "nii")])
def test_truncated_file(data_brats2020_tree, case, extension):
    path = _file(data_brats2020_tree, "flair", case, extension)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    error = _build_error(data_brats2020_tree)
    _assert_names(error, case, path)
    assert "truncated" in str(error)


@pytest.mark.parametrize(
    "shape, affine, expected",
    [((8, 8, 7), brats_affine((8, 8, 6)), "shape"), ((8, 8, 6), np.diag([1.0, 1.0, 1.0, 1.0]), "affine")],
)
def test_geometry_differs_between_sequences(data_brats2020_tree, shape, affine, expected):
    path = _file(data_brats2020_tree, "t2")
    nib.save(nib.Nifti1Image(np.ones(shape, np.int16), affine), path)
    error = _build_error(data_brats2020_tree)
    _assert_names(error, CASE, path)
    assert f"{expected} differs" in str(error)


def test_label_map_geometry_is_checked_too(data_brats2020_tree):
    path = _file(data_brats2020_tree, "seg")
    nib.save(nib.Nifti1Image(np.zeros((9, 8, 6), np.uint8), brats_affine((9, 8, 6))), path)
    _assert_names(_build_error(data_brats2020_tree, check_voxels=False), CASE, path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels(data_brats2020_tree, value):
    path = _file(data_brats2020_tree, "t1")
    volume = np.ones((8, 8, 6), np.float32)
    volume[2, 3, 4] = value
    nib.save(nib.Nifti1Image(volume, brats_affine((8, 8, 6))), path)
    error = _build_error(data_brats2020_tree)
    _assert_names(error, CASE, path)
    assert "1 non-finite voxels" in str(error)


def test_unknown_grade_in_name_mapping(data_brats2020_tree):
    mapping = data_brats2020_tree / "name_mapping.csv"
    mapping.write_text(mapping.read_text().replace(f"HGG,NA,NA,NA,NA,{CASE}", f"GBM,NA,NA,NA,NA,{CASE}"))
    error = _build_error(data_brats2020_tree)
    _assert_names(error, CASE, mapping)
    assert "unknown grade 'GBM'" in str(error)


def test_case_folder_missing_from_name_mapping(data_brats2020_tree, data_write_case):
    data_write_case(data_brats2020_tree / "BraTS20_Training_400", "BraTS20_Training_400")
    error = _build_error(data_brats2020_tree)
    _assert_names(error, "BraTS20_Training_400", data_brats2020_tree / "BraTS20_Training_400")
    assert "unknown grade" in str(error)


def test_unknown_grade_folder(tmp_path, data_write_case):
    for grade in ("LGG", "HGG", "GBM"):
        for n in range(2):
            data_write_case(tmp_path / grade / f"{grade}_{n}", f"{grade}_{n}")
    with pytest.raises(DataError) as info:
        build_datalist(tmp_path, num_folds=2)
    assert "2 bad cases" in str(info.value)
    for n in range(2):
        assert f"case 'GBM_{n}': unknown grade 'GBM'" in str(info.value)
        assert str(tmp_path / "GBM" / f"GBM_{n}") in str(info.value)


def test_class_with_fewer_cases_than_folds(data_brats2020_tree):
    with pytest.raises(DataError) as info:
        build_datalist(data_brats2020_tree, num_folds=6, check_voxels=False)
    assert "class 'LGG' has 5 patients, fewer than 6 folds" in str(info.value)
    assert str(data_brats2020_tree) in str(info.value) and info.value.case_id is None


def test_empty_dataset(tmp_path):
    (tmp_path / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\n")
    with pytest.raises(DataError, match="empty dataset") as info:
        build_datalist(tmp_path, layout="brats2020")
    assert str(tmp_path) in str(info.value)


def test_skip_bad_cases_lists_logs_and_skips_them(data_brats2020_tree, caplog):
    _file(data_brats2020_tree, "t2").unlink()
    nan_file = _file(data_brats2020_tree, "t1", "BraTS20_Training_008")
    nib.save(nib.Nifti1Image(np.full((8, 8, 6), np.nan, np.float32), brats_affine((8, 8, 6))), nan_file)
    with pytest.raises(DataError, match="2 bad cases") as info:
        build_datalist(data_brats2020_tree, num_folds=4)
    assert str(nan_file) in str(info.value) and CASE in str(info.value)
    with caplog.at_level(logging.WARNING):
        datalist = build_datalist(data_brats2020_tree, num_folds=4, skip_bad_cases=True)
    assert [(r["case_id"], r["file"]) for r in datalist["skipped"]] == [
        (CASE, str(_file(data_brats2020_tree, "t2"))),
        ("BraTS20_Training_008", str(nan_file)),
    ]
    assert len(datalist["training"]) == 9
    assert {CASE, "BraTS20_Training_008"}.isdisjoint(i["case_id"] for i in datalist["training"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("skipping bad case" in w for w in warned)


def test_validate_cases_and_check_case_on_items(data_brats2020_tree):
    good = {"case_id": "a", "image": [str(_file(data_brats2020_tree, s)) for s in ("t1", "t1ce", "t2", "flair")]}
    bad = {"case_id": "b", "image": [*good["image"][:3], str(data_brats2020_tree / "nowhere.nii.gz")]}
    check_case(good)
    kept, skipped = validate_cases([good, bad], skip_bad_cases=True)
    assert kept == [good] and [e.case_id for e in skipped] == ["b"]
    with pytest.raises(DataError, match="missing file") as info:
        validate_cases([good, bad])
    _assert_names(info.value, "b", data_brats2020_tree / "nowhere.nii.gz")
