"""Datalists from each layout, folds, splits, reuse and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from scripts.data import (
    DataError,
    assign_folds,
    build_datalist,
    ensure_datalist,
    load_datalist,
    split_fold,
    split_validation,
    write_datalist,
)

SUFFIXES = ("_t1", "_t1ce", "_t2", "_flair")


def _stem(path: str) -> str:
    return os.path.basename(path).split(".nii")[0]


def test_brats2020_tree_finds_every_case_with_its_files(data_brats2020_tree):
    datalist = build_datalist(data_brats2020_tree, num_folds=5)
    items = {i["case_id"]: i for i in datalist["training"]}
    assert datalist["layout"] == "brats2020"
    assert len(items) == 11
    for case_id, item in items.items():
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in item["image"])
        assert [_stem(p) for p in item["image"]] == [case_id + s for s in SUFFIXES]
    # subject 355's label file is found under its odd name, nothing renamed
    assert items["BraTS20_Training_355"]["mask"].endswith("BraTS20_Training_355/W39_1998.09.19_Segm.nii")
    assert items["BraTS20_Training_001"]["mask"].endswith("BraTS20_Training_001_seg.nii.gz")
    # .nii copies (cases 3, 6, 9) are read like .nii.gz ones
    assert items["BraTS20_Training_006"]["image"][0].endswith("BraTS20_Training_006_t1.nii")
    assert {c: i["label_name"] for c, i in items.items() if i["label"] == 1} == {
        c: "HGG" for c in ["BraTS20_Training_002", "BraTS20_Training_004", "BraTS20_Training_006",
                           "BraTS20_Training_008", "BraTS20_Training_010", "BraTS20_Training_355"]
    }
    assert items["BraTS20_Training_002"]["patient_id"] == "TCGA-2"
    assert items["BraTS20_Training_005"]["patient_id"] == "BraTS20_Training_005"


def test_auto_layout_looks_inside_a_single_subfolder(data_brats2020_tree):
    nested = build_datalist(data_brats2020_tree.parent, num_folds=5, check_voxels=False)
    direct = build_datalist(data_brats2020_tree, num_folds=5, check_voxels=False)
    assert nested == direct


def test_grade_folders_layout_with_three_classes_in_configured_order(tmp_path, data_write_case):
    for grade in ("A", "B", "C"):
        for n in range(2):
            data_write_case(tmp_path / grade / f"Brats18_{grade}_{n}", f"Brats18_{grade}_{n}", seed=n)
    datalist = build_datalist(tmp_path, class_names="C,A,B", num_folds=2)
    assert datalist["layout"] == "grade_folders"
    assert datalist["class_names"] == ["C", "A", "B"]
    labels = {i["case_id"]: (i["label"], i["label_name"]) for i in datalist["training"]}
    assert labels["Brats18_C_0"] == (0, "C") and labels["Brats18_A_1"] == (1, "A") and labels["Brats18_B_0"] == (2, "B")


def test_csv_layout_resolves_relative_paths_and_groups_patients(tmp_path, data_write_case):
    rows = ["case_id,t1,t1ce,t2,flair,mask,label,patient_id"]
    for n in range(6):
        paths = data_write_case(tmp_path / "files" / f"c{n}", f"c{n}", seed=n)
        cells = [os.path.relpath(paths[s], tmp_path) for s in ("t1", "t1ce", "t2", "flair")]
        mask = os.path.relpath(paths["seg"], tmp_path) if n else ""
        rows.append(",".join([f"c{n}", *cells, mask, "low" if n < 3 else "high", "p01" if n in (3, 4) else ""]))
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    datalist = build_datalist(tmp_path / "cohort.csv", class_names=["low", "high"], num_folds=2)
    items = {i["case_id"]: i for i in datalist["training"]}
    assert datalist["layout"] == "csv"
    assert items["c0"]["mask"] is None
    assert items["c1"]["image"][1] == str(tmp_path / "files" / "c1" / "c1_t1ce.nii.gz")
    assert items["c3"]["fold"] == items["c4"]["fold"]  # one patient, one fold
    assert items["c3"]["patient_id"] == "p01" and items["c5"]["patient_id"] == "c5"


def test_unknown_layout_names_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="cannot tell the layout") as info:
        build_datalist(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="brats2020"):
        build_datalist(tmp_path, layout="brats2021")


def _cases(counts: dict[str, int]) -> list[dict]:
    return [{"case_id": f"{name}{n:03d}", "label_name": name} for name, k in counts.items() for n in range(k)]


def test_folds_are_stratified_balanced_and_cover_each_case_once():
    cases = _cases({"LGG": 76, "HGG": 293})
    folds = assign_folds(cases, ["LGG", "HGG"], num_folds=5, seed=0)
    per = Counter((f, c["label_name"]) for f, c in zip(folds, cases))
    # 76 = 5 * 15 + 1 and 293 = 5 * 58 + 3: each class differs by at most one case between folds
    assert sorted(per[(f, "LGG")] for f in range(5)) == [15, 15, 15, 15, 16]
    assert sorted(per[(f, "HGG")] for f in range(5)) == [58, 58, 59, 59, 59]
    assert sorted(Counter(folds).values()) == [73, 74, 74, 74, 74]  # 369 = 5 * 73 + 4


def test_folds_keep_a_patients_cases_together_and_ignore_input_order():
    cases = _cases({"LGG": 10, "HGG": 20})
    for c in cases[:4]:
        c["patient_id"] = "shared-lgg"
    folds = assign_folds(cases, ["LGG", "HGG"], num_folds=5, seed=3)
    assert len({folds[i] for i in range(4)}) == 1
    reordered = assign_folds(cases[::-1], ["LGG", "HGG"], num_folds=5, seed=3)
    assert reordered[::-1] == folds
    assert assign_folds(cases, ["LGG", "HGG"], num_folds=5, seed=4) != folds


def test_datalist_file_is_byte_identical_for_one_seed_and_differs_for_another(data_brats2020_tree, tmp_path):
    for name, seed in (("a.json", 0), ("b.json", 0), ("c.json", 1)):
        write_datalist(build_datalist(data_brats2020_tree, num_folds=5, seed=seed, check_voxels=False), tmp_path / name)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    first, other = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "c.json"))
    assert [i["fold"] for i in first["training"]] != [i["fold"] for i in other["training"]]
    assert [i["case_id"] for i in first["training"]] == [i["case_id"] for i in other["training"]]


def test_split_fold_returns_disjoint_train_and_test():
    datalist = {"num_folds": 3, "training": [{"case_id": str(n), "fold": n % 3} for n in range(9)]}
    train, test = split_fold(datalist, 1)
    assert [i["case_id"] for i in test] == ["1", "4", "7"]
    assert [i["case_id"] for i in train] == ["0", "2", "3", "5", "6", "8"]
    with pytest.raises(ValueError, match="fold"):
        split_fold(datalist, 3)


def test_split_validation_is_stratified_patient_disjoint_and_seeded():
    items = [{"case_id": f"c{n}", "label": int(n >= 10), "patient_id": f"p{n // 2}"} for n in range(30)]
    train, val = split_validation(items, 0.2, seed=0)
    # per class: 5 patients of label 0 -> round(1.0) = 1; 10 patients of label 1 -> 2; 2 cases each
    assert Counter(i["label"] for i in val) == {0: 2, 1: 4}
    assert not {i["patient_id"] for i in val} & {i["patient_id"] for i in train}
    assert len(train) + len(val) == 30
    assert split_validation(items, 0.2, seed=0) == (train, val)
    assert split_validation(items, 0.0) == (items, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation(items, 1.0)


def test_ensure_datalist_builds_once_then_reuses_without_reading_images(data_brats2020_tree, tmp_path):
    path = tmp_path / "lists" / "datalist.json"
    built = ensure_datalist(data_brats2020_tree, path, num_folds=5)
    assert path.is_file()
    Path(built["training"][0]["image"][0]).unlink()  # a re-check would now fail
    assert ensure_datalist(data_brats2020_tree, path, num_folds=5) == built
    with pytest.raises(ValueError, match="seed"):
        ensure_datalist(data_brats2020_tree, path, num_folds=5, seed=1)


def test_load_datalist_resolves_relative_paths_against_its_folder(tmp_path):
    datalist = {"class_names": ["LGG", "HGG"], "num_folds": 2,
                "training": [{"case_id": "x", "image": ["d/t1.nii", "/abs/t1ce.nii", "d/t2.nii", "d/f.nii"],
                              "mask": "d/seg.nii", "label": 0, "fold": 0}]}
    (tmp_path / "dl.json").write_text(json.dumps(datalist))
    item = load_datalist(tmp_path / "dl.json")["training"][0]
    assert item["image"][:2] == [str(tmp_path / "d" / "t1.nii"), "/abs/t1ce.nii"]
    assert item["mask"] == str(tmp_path / "d" / "seg.nii")


def test_command_line_writes_the_same_file_as_the_function(data_brats2020_tree, tmp_path):
    out = tmp_path / "cli.json"
    subprocess.run(
        [sys.executable, "-m", "scripts.data.datalist", "--dataset_dir", str(data_brats2020_tree), "--out", str(out),
         "--class_names", "LGG,HGG", "--num_folds", "5"],
        check=True, cwd=Path(__file__).parents[1], capture_output=True,
    )
    write_datalist(build_datalist(data_brats2020_tree, num_folds=5), tmp_path / "fn.json")
    assert out.read_bytes() == (tmp_path / "fn.json").read_bytes()
