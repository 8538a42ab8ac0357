"""The synthetic BraTS generator: layout, reproducibility, grade evidence only inside the tumour, phantom families."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from scripts.data import build_datalist, generate_case, generate_dataset
from scripts.data.synthetic import TUMOUR_SHARE, brats_affine, generate_pairs
from scripts.engine import ensure_synthetic_dataset

SHAPE = (48, 48, 36)
SPEC_COLUMNS = ["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"]


def _info(root: Path) -> list[dict[str, str]]:
    with open(root / "synthetic_info.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_brats_affine_is_lps_with_the_brats_origin():
    affine = brats_affine((240, 240, 155))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert np.array_equal(affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])


def test_output_follows_the_brats2020_layout(data_synthetic_root):
    root = data_synthetic_root
    with open(root / "name_mapping.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == SPEC_COLUMNS
    assert [r[5] for r in rows[1:]] == [f"BraTS20_Training_{n:03d}" for n in range(1, 13)]
    case = root / "BraTS20_Training_007"
    assert sorted(p.name for p in case.iterdir()) == sorted(
        f"BraTS20_Training_007_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")
    )
    for sequence in ("t1", "t1ce", "t2", "flair"):
        image = nib.load(case / f"BraTS20_Training_007_{sequence}.nii.gz")
        assert image.shape == SHAPE and image.get_data_dtype() == np.int16
        assert np.array_equal(image.affine, brats_affine(SHAPE)) and image.header.get_zooms() == (1.0, 1.0, 1.0)
        data = np.asanyarray(image.dataobj)
        assert data.min() == 0 and data.max() > 100  # skull-stripped: zero background
    seg = nib.load(case / "BraTS20_Training_007_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.dataobj)) <= {0, 1, 2, 4}


def test_output_loads_with_the_brats2020_datalist_unchanged(data_synthetic_root):
    datalist = build_datalist(data_synthetic_root, num_folds=2)
    grades = {r["case_id"]: r["grade"] for r in _info(data_synthetic_root)}
    assert datalist["layout"] == "brats2020" and len(datalist["training"]) == 12
    assert {i["case_id"]: i["label_name"] for i in datalist["training"]} == grades
    assert all(i["mask"].endswith("_seg.nii.gz") for i in datalist["training"])


def test_labels_follow_the_grade(data_synthetic_root):
    for row in _info(data_synthetic_root):
        seg = np.asanyarray(nib.load(data_synthetic_root / row["case_id"] / f"{row['case_id']}_seg.nii.gz").dataobj)
        present = set(np.unique(seg).tolist())
        assert present == ({0, 1, 2, 4} if row["grade"] == "HGG" else {0, 1, 2})


def test_seeded_and_reproducible(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_dataset(tmp_path / name, cases=2, shape=(24, 24, 16), seed=seed, extension="nii")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii"))
    assert len(files) == 10 and all(str(f).endswith(".nii") for f in files)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


@pytest.mark.parametrize(
    "layout", [{}, {"family": "shifted"}, {"family": "shifted", "edge": True}, {"family": "shifted", "foci": 2}]
)
def test_grade_does_not_change_any_voxel_outside_the_tumour(layout):
    for seed in range(3):
        high, high_labels, _ = generate_case(np.random.default_rng(seed), True, shape=SHAPE, **layout)
        low, low_labels, _ = generate_case(np.random.default_rng(seed), False, shape=SHAPE, **layout)
        assert np.array_equal(high_labels > 0, low_labels > 0)
        outside = high_labels == 0
        assert np.array_equal(high[:, outside], low[:, outside])
        assert not np.array_equal(high[:, ~outside], low[:, ~outside])


def _core_contrast(images: np.ndarray, labels: np.ndarray, sequence: int) -> float:
    """Mean of a sequence in the tumour core (labels 1, 4) over its mean in the normal brain."""
    brain = (images[sequence] > 0) & (labels == 0)
    return float(images[sequence][np.isin(labels, (1, 4))].mean() / images[sequence][brain].mean())


def _outside_statistic(images: np.ndarray, labels: np.ndarray) -> float:
    """T1-CE over T1 in the brain outside the tumour: would show contrast uptake if any leaked out."""
    brain = (images[0] > 0) & (labels == 0)
    return float(images[1][brain].mean() / images[0][brain].mean())


def test_grades_differ_inside_the_tumour_and_not_outside():
    stats = {True: ([], []), False: ([], [])}
    for seed in range(16):
        high = seed % 2 == 0
        images, labels, _ = generate_case(np.random.default_rng(100 + seed), high, shape=SHAPE)
        stats[high][0].append(_core_contrast(images, labels, 1))
        stats[high][1].append(_outside_statistic(images, labels))
    inside_high, inside_low = np.array(stats[True][0]), np.array(stats[False][0])
    assert inside_high.min() > inside_low.max()  # enhancing rim only in HGG: perfectly separable
    outside_high, outside_low = np.array(stats[True][1]), np.array(stats[False][1])
    pooled = np.sqrt((outside_high.var(ddof=1) + outside_low.var(ddof=1)) / 8)
    assert abs(outside_high.mean() - outside_low.mean()) / pooled < 2.0  # Welch t well inside chance
    assert outside_high.max() > outside_low.min() and outside_low.max() > outside_high.min()  # overlapping


def test_ambiguous_cases_blend_the_two_looks(tmp_path):
    clear = generate_dataset(tmp_path / "clear", cases=10, shape=(24, 24, 16), seed=1, ambiguous_fraction=0.0)
    assert all((r["appearance"] >= 0.75) == (r["grade"] == "HGG") for r in clear)
    blended = generate_dataset(tmp_path / "amb", cases=10, shape=(24, 24, 16), seed=1, ambiguous_fraction=1.0)
    assert all(0.35 <= r["appearance"] <= 0.65 and r["ambiguous"] for r in blended)
    assert [r["grade"] for r in blended] == [r["grade"] for r in clear]  # same grades, other looks


def test_hgg_fraction_sets_the_grade_ratio(tmp_path):
    records = generate_dataset(tmp_path, cases=60, shape=(16, 16, 16), seed=0, hgg_fraction=0.8)
    hgg = sum(r["grade"] == "HGG" for r in records)
    assert 38 <= hgg <= 58  # binomial(60, 0.8): mean 48, sd 3.1
    assert all(r["grade"] == "LGG" for r in generate_dataset(tmp_path / "lgg", 4, (16, 16, 16), hgg_fraction=0.0))


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        generate_dataset(tmp_path, cases=1, shape="64,64")
    with pytest.raises(ValueError, match="nii.gz"):
        generate_dataset(tmp_path, cases=1, shape=(16, 16, 16), extension="mha")


@pytest.mark.parametrize("family", ["quickstart", "shifted"])
def test_command_line(tmp_path, family):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.synthetic", "--out", str(tmp_path), "--cases", "2", "--shape", "24,24,16",
         *(["--family", family] if family != "quickstart" else [])],
        check=True, cwd=Path(__file__).parents[1], capture_output=True, text=True,
    )
    assert f"2 cases of the {family} family" in result.stdout and "s per case" in result.stdout
    assert nib.load(tmp_path / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz").shape == (24, 24, 16)
    assert {r["family"] for r in _info(tmp_path)} == {family}


def test_tumour_is_brats_sized_and_the_brain_fills_the_grid():
    # whole tumour (core + oedema) drawn at 2-15 % of the brain volume (clipped to the brain, wobbly
    # edges); the brain ellipsoid fills about 40 % of the grid (BraTS crops: background under 2/3).
    tumour_share, brain_share = [], []
    for seed in range(12):
        images, labels, _ = generate_case(np.random.default_rng([7, seed]), seed % 2 == 0, shape=SHAPE)
        brain = images.max(axis=0) > 0
        tumour_share.append((labels > 0).sum() / brain.sum())
        brain_share.append(brain.mean())
    assert 0.01 <= min(tumour_share) and max(tumour_share) <= 0.2
    assert 0.04 <= np.mean(tumour_share) <= 0.12
    assert min(brain_share) >= 0.3


def test_counterfactual_pairs_differ_only_inside_the_tumour(tmp_path):
    records = generate_pairs(tmp_path / "pairs", 2, SHAPE, seed=3)
    assert [(r["grade"], r["draw"]) for r in records] == [("HGG", 0), ("LGG", 0), ("HGG", 1), ("LGG", 1)]
    for high, low in ((records[0], records[1]), (records[2], records[3])):
        load = lambda r, name: np.asarray(  # noqa: E731
            nib.load(tmp_path / "pairs" / r["case_id"] / f"{r['case_id']}_{name}.nii.gz").dataobj
        )
        assert np.array_equal(load(high, "seg") > 0, load(low, "seg") > 0)
        outside = load(high, "seg") == 0
        for sequence in ("t1", "t1ce", "t2", "flair"):
            assert np.array_equal(load(high, sequence)[outside], load(low, sequence)[outside])
        assert not np.array_equal(load(high, "t1ce")[~outside], load(low, "t1ce")[~outside])
    datalist = build_datalist(tmp_path / "pairs", num_folds=2)
    assert sorted(i["label_name"] for i in datalist["training"]) == ["HGG", "HGG", "LGG", "LGG"]


def _components(mask: np.ndarray) -> int:
    """Number of 26-connected components of a 3D mask (each voxel takes the largest id of its neighbourhood)."""
    inside = torch.from_numpy(mask)[None, None].float()
    ids = torch.arange(1, inside.numel() + 1, dtype=torch.float32).reshape(inside.shape) * inside
    while not torch.equal(grown := F.max_pool3d(ids, 3, 1, 1) * inside, ids):
        ids = grown
    return len(torch.unique(ids)) - 1


def _touches_background(tumour: np.ndarray, brain: np.ndarray) -> bool:
    """Whether a tumour voxel has a 26-neighbour outside the brain."""
    grown = F.max_pool3d(torch.from_numpy(tumour)[None, None].float(), 3, 1, 1)[0, 0].numpy() > 0
    return bool((grown & ~brain).any())


def test_shifted_family_has_smaller_brains_smaller_tumours_edge_tumours_and_two_foci():
    layouts = [{"edge": i % 3 == 0, "foci": 2 if i % 3 == 1 else 1} for i in range(12)]
    measured = {}
    for family in ("quickstart", "shifted"):
        rows = []
        for i, layout in enumerate(layouts if family == "shifted" else [{}] * len(layouts)):
            images, labels, _ = generate_case(np.random.default_rng([5, i]), i % 2 == 0, shape=SHAPE, family=family,
                                              **layout)
            brain, tumour = images.max(axis=0) > 0, labels > 0
            rows.append((brain.mean(), tumour.sum() / brain.sum(), _components(tumour),
                         _touches_background(tumour, brain)))
        measured[family] = rows
    quick, shifted = (np.array(measured[f], dtype=float) for f in ("quickstart", "shifted"))
    assert shifted[:, 0].max() < quick[:, 0].min()  # another brain size: a smaller brain in the same grid
    assert shifted[:, 1].min() < min(quick[:, 1].min(), TUMOUR_SHARE[0] / 2)  # smaller tumours
    assert quick[:, 2].tolist() == [1] * 12
    assert shifted[:, 2].tolist() == [layout["foci"] for layout in layouts]  # two separate foci where planted
    assert all(shifted[i, 3] for i, layout in enumerate(layouts) if layout["edge"])  # edge tumours reach it
    assert shifted[:, 3].sum() > quick[:, 3].sum()


def test_shifted_cohort_draws_the_brats2020_class_balance_and_its_layouts(tmp_path):
    hgg_fraction = 293 / 369
    quick = generate_dataset(tmp_path / "quick", 80, (16, 16, 16), seed=2, hgg_fraction=hgg_fraction)
    records = generate_dataset(tmp_path / "shifted", 80, (16, 16, 16), seed=2, hgg_fraction=hgg_fraction,
                               family="shifted")
    with open(tmp_path / "shifted" / "name_mapping.csv", newline="") as f:
        grades = [row["Grade"] for row in csv.DictReader(f)]
    assert 52 <= grades.count("HGG") <= 75  # binomial(80, 0.794): mean 63.5, sd 3.6
    assert grades == [r["grade"] for r in quick]  # a seed's grades do not depend on the family
    info = _info(tmp_path / "shifted")
    assert {r["family"] for r in info} == {"shifted"} and {r["family"] for r in quick} == {"quickstart"}
    assert 14 <= sum(r["edge"] == "True" for r in info) <= 42  # binomial(80, 0.35): mean 28, sd 4.3
    assert 12 <= sum(r["foci"] == "2" for r in info) <= 36  # binomial(80, 0.3): mean 24, sd 4.1
    assert not any(r["edge"] or r["foci"] > 1 for r in quick)
    datalist = build_datalist(tmp_path / "shifted", num_folds=5, check_voxels=False)
    for fold in range(5):  # the stratified folds all hold both grades
        assert {i["label_name"] for i in datalist["training"] if i["fold"] == fold} == {"HGG", "LGG"}
    assert records[0]["family"] == "shifted"


def test_shifted_counterfactual_pairs_differ_only_inside_the_tumour(tmp_path):
    records = generate_pairs(tmp_path, 3, SHAPE, seed=4, family="shifted")
    for high, low in zip(records[::2], records[1::2]):
        assert (high["draw"], high["foci"], high["edge"]) == (low["draw"], low["foci"], low["edge"])
        load = lambda r, name: np.asarray(  # noqa: E731
            nib.load(tmp_path / r["case_id"] / f"{r['case_id']}_{name}.nii.gz").dataobj
        )
        outside = load(high, "seg") == 0
        assert np.array_equal(outside, load(low, "seg") == 0)
        assert all(np.array_equal(load(high, s)[outside], load(low, s)[outside]) for s in ("t1", "t1ce", "t2", "flair"))


def test_a_folder_of_another_family_is_refused(tmp_path):
    directory = tmp_path / "MICCAI_BraTS2020_TrainingData"
    ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16), family="shifted")
    assert ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16), family="shifted") == str(directory)
    with pytest.raises(ValueError, match="holds 'shifted' phantoms, not 'quickstart'"):
        ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16))
    with pytest.raises(ValueError, match="shifted"):
        generate_dataset(tmp_path / "bad", cases=1, shape=(16, 16, 16), family="shfted")


PATHS = ("synthetic_root", "output_dir", "datalist_file", "cache_dir")
TINY_RUN = ("roi_size", "encoder_layers", "encoder_width", "embed_dim", "warmup_epochs", "stage1_epochs", "push_every",
            "stage3_epochs", "batch_size", "num_threads")


def test_shifted_quick_start_keeps_its_data_and_outputs_apart_from_the_quick_start():
    resolved = []
    for overlays in (["configs/quickstart.json"], ["configs/quickstart.json", "configs/quickstart_shifted.json"]):
        parser = ConfigParser()
        parser.read_config(["configs/train.json", *overlays])
        resolved.append({key: parser.get_parsed_content(key) for key in (*PATHS, *TINY_RUN)})
    quick, shifted = resolved
    for key in PATHS:
        assert Path(quick[key]) != Path(shifted[key]) and Path(quick["synthetic_root"]) not in Path(shifted[key]).parents
    assert all(quick[key] == shifted[key] for key in TINY_RUN)  # the same tiny network and schedule
