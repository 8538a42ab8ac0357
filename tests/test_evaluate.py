"""evaluate.json on a micro-trained fold: files, metrics recomputed from them, saved maps, robustness option."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import DATA_SMALL_SHAPE
from helpers import mirror_probabilities
from monai.bundle import ConfigWorkflow, run
from test_engine_micro import MICRO, micro_workflow, run_micro

from scripts.calibration import Calibration, calibration_metrics, ece_if_calibrated
from scripts.data import preprocessing_transforms, split_fold
from scripts.data.synthetic import generate_dataset
from scripts.evaluate import missing_sequence_bac, missing_subsets, read_case_table, replace_missing
from scripts.explain.attribution import class_map
from scripts.explain.evidence import LOW_PROBABILITY
from scripts.metrics import activation_precision
from scripts.networks import BF16_RECHECK_MARGIN
from scripts.prototypes import SEPARATION_FLOOR, class_separation, reference_similarity
from scripts.uncertainty import FLIP_SPREAD_CAUTION

SHORT = {
    "target_spacing": 3.0,
    "batch_size": 3,
    "warmup_epochs": 1,
    "stage1_epochs": 1,
    "push_every": 1,
    "stage3_epochs": 1,
    "evaluate_test_fold": False,
}
"""The micro settings on a 16^3 grid, one epoch of each stage; batches of 3 split the 9 training cases evenly
(a batch of one would meet a 1-voxel BatchNorm input at this size)."""
IDS_STEPS = 10
CALIBRATION = Calibration(temperature=2.5, method="platt_targets", cases=3, separated=True)
"""A fitted calibration, written beside the micro fold's weights before it is evaluated."""


def _evaluation(workdir: Path, dataset_dir: Path, **overrides) -> ConfigWorkflow:
    """train.json + evaluate.json on the micro settings, one epoch of each stage (:data:`SHORT`)."""
    return micro_workflow(
        workdir, dataset_dir, "run", ["configs/train.json", "configs/evaluate.json"], None, **{**SHORT, **overrides}
    )


@pytest.fixture(scope="module")
def evaluated(data_synthetic_root, tmp_path_factory):
    """A micro fold 0 trained through train.json, then evaluated with maps and missing sequences."""
    workdir = tmp_path_factory.mktemp("evaluate") / "run"
    run_micro(workdir, data_synthetic_root, **SHORT)
    fold_dir = workdir / "out" / "fold0"
    CALIBRATION.save(fold_dir)  # over the identity that training wrote (the micro runs hold no validation split)
    workflow = _evaluation(workdir, data_synthetic_root, save_maps="true", missing_sequences=True, ids_steps=IDS_STEPS)
    workflow.initialize()
    workflow.run()
    parser = workflow.parser
    workflow.finalize()
    network = parser.get_parsed_content("fold_model").eval()
    _, test_items = split_fold(parser.get_parsed_content("datalist"), 0)
    spacing = SHORT["target_spacing"]
    preprocessing = preprocessing_transforms(with_mask=True, roi_size=MICRO["roi_size"], target_spacing=spacing)
    cases = {item["case_id"]: preprocessing(item) for item in test_items}
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    return SimpleNamespace(fold_dir=fold_dir, network=network, cases=cases, metrics=metrics, workdir=workdir)


def _bac(labels: list[int], predictions: list[int]) -> float:
    recalls = []
    for c in sorted(set(labels)):
        rows = [p for y, p in zip(labels, predictions) if y == c]
        recalls.append(sum(p == c for p in rows) / len(rows))
    return sum(recalls) / len(recalls)


def test_metrics_json_agrees_with_the_per_case_csv(evaluated):
    rows = read_case_table(evaluated.fold_dir / "per_case.csv")
    metrics = evaluated.metrics
    assert {row["case_id"] for row in rows} == set(evaluated.cases) and metrics["cases"] == len(rows)
    labels, predictions = [r["label"] for r in rows], [r["prediction"] for r in rows]
    assert predictions == [int(r["prob_HGG"] > r["prob_LGG"]) for r in rows]
    assert all(abs(r["prob_LGG"] + r["prob_HGG"] - 1) < 1e-6 for r in rows)
    assert metrics["bac"] == pytest.approx(_bac(labels, predictions), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean([y == p for y, p in zip(labels, predictions)]), abs=1e-12)
    positives = [r["prob_HGG"] for r in rows if r["label"] == 1]
    negatives = [r["prob_HGG"] for r in rows if r["label"] == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(positives, negatives)]
    assert metrics["roc_auc"] == pytest.approx(np.mean(pairs), abs=1e-9)
    assert metrics["sensitivity"] == pytest.approx(np.mean([r["prediction"] == 1 for r in rows if r["label"] == 1]))
    assert metrics["specificity"] == pytest.approx(np.mean([r["prediction"] == 0 for r in rows if r["label"] == 0]))
    assert metrics["ap"] == pytest.approx(np.mean([r["ap"] for r in rows]), abs=1e-12)


def test_flip_spread_and_caution_per_case_recomputed_from_the_network(evaluated):
    rows = {r["case_id"]: r for r in read_case_table(evaluated.fold_dir / "per_case.csv")}
    for case_id, case in evaluated.cases.items():
        mirrored = mirror_probabilities(evaluated.network, case["image"].as_tensor()[None], CALIBRATION.temperature)
        spread = float(mirrored[:, rows[case_id]["prediction"]].std(unbiased=False))
        assert rows[case_id]["flip_spread"] == pytest.approx(spread, abs=1e-6)
        shown = {"LGG": rows[case_id]["prob_LGG"], "HGG": rows[case_id]["prob_HGG"]}
        caution = shown[max(shown, key=shown.get)] < LOW_PROBABILITY or spread > FLIP_SPREAD_CAUTION
        assert rows[case_id]["caution"] == 1.0 or not caution  # (the similarity spread may fire it too)
    metrics = evaluated.metrics
    # the fold's mean is taken in float32: equal to the CSV's float64 mean to float32 precision
    assert metrics["flip_spread"] == pytest.approx(np.mean([r["flip_spread"] for r in rows.values()]), rel=1e-6)
    assert metrics["caution_rate"] == pytest.approx(np.mean([r["caution"] for r in rows.values()]), abs=1e-12)


def test_ids_is_the_trapezoid_of_the_normalised_deletion_curve(evaluated):
    curve = evaluated.metrics["deletion_curve"]
    assert len(curve) == IDS_STEPS + 1 and evaluated.metrics["ids_batch_size"] == 3  # evaluate.json's, on a CPU
    # step 0 deletes nothing; the curve scores the image as given (argmax of the logits), as the single-pass BAC does
    assert curve[0] == evaluated.metrics["bac_single"]
    assert curve[-1] == 0.5  # everything deleted: one input, one prediction for both classes
    lo, hi = min(curve[0], curve[-1]), max(curve[0], curve[-1])
    ratios = [(min(max(c, lo), hi) - lo) / max(hi - lo, 1e-12) for c in curve]
    expected = sum((a + b) / 2 for a, b in zip(ratios, ratios[1:])) / IDS_STEPS
    assert evaluated.metrics["ids"] == pytest.approx(expected, abs=1e-12)
    png = (evaluated.fold_dir / "deletion_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_maps_reproduce_ap_and_are_the_ground_truth_class_maps(evaluated):
    rows = {r["case_id"]: r for r in read_case_table(evaluated.fold_dir / "per_case.csv")}
    for case_id, case in evaluated.cases.items():
        saved = nib.load(evaluated.fold_dir / "maps" / f"{case_id}_class_map.nii.gz")
        np.testing.assert_allclose(saved.affine, case["image"].affine.numpy(), atol=1e-6)
        volume = torch.from_numpy(np.asarray(saved.dataobj))
        assert volume.shape == case["image"].shape[1:]
        assert activation_precision(volume, case["mask"]) == pytest.approx(rows[case_id]["ap"], abs=1e-12)
        saved_mask = np.asarray(nib.load(evaluated.fold_dir / "maps" / f"{case_id}_mask.nii.gz").dataobj)
        np.testing.assert_array_equal(saved_mask, case["mask"][0].numpy())
        image = case["image"].as_tensor()[None]
        options = (evaluated.metrics["scale_combination"], evaluated.metrics["brain_only"])  # as evaluate.json sets
        expected = class_map(evaluated.network, image, [case["label"]], None, *options)[0]
        scale = expected.abs().max()  # the maps' values are ~1e-5: compare them relative to their maximum
        assert scale > 0
        torch.testing.assert_close(volume / scale, expected / scale, rtol=0, atol=1e-4)


def test_prototype_read_outs_are_written_and_recomputed_from_the_network_and_push_record(evaluated):
    rows = read_case_table(evaluated.fold_dir / "per_case.csv")
    metrics = evaluated.metrics
    assert metrics["top_prototypes"] == 6
    for key in ("ap_eq28", "topk_peak_in_brain", "topk_peak_in_tumour", "tumour_in_support"):
        assert metrics[key] == pytest.approx(np.mean([row[key] for row in rows]), abs=1e-12)
    assert all(0 <= row["tumour_in_support"] <= 1 for row in rows)
    correct = [row for row in rows if row["label"] == row["prediction"]]
    for key in ("topk_peak_in_brain", "topk_peak_in_tumour"):
        expected = np.mean([row[key] for row in correct]) if correct else None
        assert metrics[f"{key}_correct"] == pytest.approx(expected, abs=1e-12)
    by_case = {row["case_id"]: row for row in rows}
    for case_id, case in evaluated.cases.items():  # Eq. 28: the scales summed, over the whole volume
        eq28 = class_map(evaluated.network, case["image"].as_tensor()[None], [case["label"]], None, "sum", False)[0]
        assert activation_precision(eq28, case["mask"]) == pytest.approx(by_case[case_id]["ap_eq28"], abs=1e-6)
    push = json.loads((evaluated.fold_dir / "push.json").read_text())
    active = evaluated.network.active_columns.tolist()  # training pruned the rest after its last push
    assert [r.get("pruned", False) for r in push["records"]] == [not a for a in active] and any(active)
    records = [r for r, a in zip(push["records"], active) if a]
    favoured = [c for c, a in zip(evaluated.network.classifier.weight.argmax(dim=0).tolist(), active) if a]
    agrees = [record["label"] == cls for record, cls in zip(records, favoured)]
    assert [entry["agrees"] for entry in metrics["prototype_sources"]] == agrees
    assert [entry["column"] for entry in metrics["prototype_sources"]] == [c for c, a in enumerate(active) if a]
    assert metrics["prototype_source_agrees"] == pytest.approx(sum(agrees) / len(agrees))
    names = push["class_names"]
    separates = [class_separation(r["class_similarity"], names[c]) >= SEPARATION_FLOOR for r, c in zip(records, favoured)]
    assert [entry["separates"] for entry in metrics["prototype_sources"]] == separates
    assert metrics["prototype_separates"] == pytest.approx(sum(separates) / len(separates))
    shares = [row["topk_separating"] for row in rows]  # of each case's 6 top prototypes
    assert all(round(6 * share) == pytest.approx(6 * share, abs=1e-9) for share in shares)
    assert metrics["topk_separating"] == pytest.approx(np.mean(shares), abs=1e-12)
    expected = np.mean([row["topk_separating"] for row in correct]) if correct else None
    assert metrics["topk_separating_correct"] == pytest.approx(expected, abs=1e-12)
    # the top 6 (the default ranking): the predicted class's voters (w > 0) first, each group by w·(S − S̄), S̄
    # from the push record's class means
    assert metrics["evidence_ranking"] == "relative"
    reference = reference_similarity([r["class_similarity"] for r in push["records"]]).float()
    weight = evaluated.network.classifier.effective_weight.detach()
    separates_column = {entry["column"]: entry["separates"] for entry in metrics["prototype_sources"]}
    for case_id, case in evaluated.cases.items():
        with torch.no_grad():
            explanation = evaluated.network.explain(case["image"].as_tensor()[None])
        predicted = int(explanation.logits[0].argmax())
        score = (explanation.similarities[0] - reference) * weight[predicted]
        order = [c for c in torch.sort(score, descending=True, stable=True).indices.tolist() if active[c]]
        top = ([c for c in order if weight[predicted, c] > 0] + [c for c in order if weight[predicted, c] <= 0])[:6]
        share = sum(separates_column[c] for c in top) / len(top)
        assert by_case[case_id]["topk_separating"] == pytest.approx(share, abs=1e-9)


def test_one_calibration_for_evaluation_inference_and_their_files(evaluated, tmp_path):
    rows = read_case_table(evaluated.fold_dir / "per_case.csv")
    metrics = evaluated.metrics
    assert metrics["calibration"] == CALIBRATION.to_dict()
    for row in rows:
        image = evaluated.cases[row["case_id"]]["image"].as_tensor()[None]
        with torch.no_grad():
            logits = evaluated.network(image)[0]
        assert [row["logit_LGG"], row["logit_HGG"]] == pytest.approx(logits.tolist(), abs=1e-5)
        single = torch.softmax(logits / 2.5, 0)
        assert [row["single_prob_LGG"], row["single_prob_HGG"]] == pytest.approx(single.tolist(), abs=1e-6)
        assert [row["raw_prob_LGG"], row["raw_prob_HGG"]] == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-6)
        # flip_average (the default): the mean of the 8 mirror images' calibrated probabilities
        averaged = mirror_probabilities(evaluated.network, image, 2.5).mean(0)
        assert [row["prob_LGG"], row["prob_HGG"]] == pytest.approx(averaged.tolist(), abs=1e-6)
    labels = torch.tensor([row["label"] for row in rows])
    assert metrics["flip_average"] is True
    for suffix, prefix in (("", "prob"), ("_raw", "raw_prob"), ("_single", "single_prob")):
        probs = torch.tensor([[row[f"{prefix}_LGG"], row[f"{prefix}_HGG"]] for row in rows], dtype=torch.float64)
        for key, value in calibration_metrics(probs, labels).items():
            assert metrics[f"{key}{suffix}"] == pytest.approx(value, abs=1e-6)
    shown = torch.tensor([[row["prob_LGG"], row["prob_HGG"]] for row in rows], dtype=torch.float64)
    assert metrics["ece_if_calibrated"] == pytest.approx(ece_if_calibrated(shown), abs=1e-6)
    singles = [int(row["single_prob_HGG"] > row["single_prob_LGG"]) for row in rows]
    assert metrics["bac_single"] == pytest.approx(_bac(labels.tolist(), singles), abs=1e-12)
    assert (evaluated.fold_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # inference on a held-out case with the same weights reads the same calibration beside them
    case_id, item = next((row["case_id"], row) for row in rows)
    folder = Path(evaluated.cases[case_id]["image"].meta["filename_or_obj"]).parent
    network = {key: MICRO[key] for key in ("roi_size", "encoder_layers", "encoder_width", "embed_dim", "mapping_dim")}
    run(config_file="configs/inference.json", logging_file=False, input_dir=str(folder), output_dir=str(tmp_path),
        ckpt_path=str(evaluated.fold_dir / "model.pt"), target_spacing=SHORT["target_spacing"], device="cpu",
        write_report=False, **network)
    prediction = json.loads((tmp_path / case_id / "prediction.json").read_text())
    assert prediction["calibration"] == CALIBRATION.to_dict()
    assert [prediction["probabilities"][n] for n in ("LGG", "HGG")] == pytest.approx(
        [item["prob_LGG"], item["prob_HGG"]], abs=1e-5
    )
    assert [prediction["raw_probabilities"][n] for n in ("LGG", "HGG")] == pytest.approx(
        [item["raw_prob_LGG"], item["raw_prob_HGG"]], abs=1e-5
    )


def test_a_trained_fold_is_evaluated_on_every_case_of_another_cohort(evaluated, tmp_path):
    cohort = tmp_path / "MICCAI_BraTS2020_TrainingData"
    generate_dataset(cohort, cases=6, shape=DATA_SMALL_SHAPE, seed=3, hgg_fraction=0.5, ambiguous_fraction=0.5)
    workflow = micro_workflow(
        tmp_path / "external", cohort, "run", ["configs/train.json", "configs/evaluate.json",
                                               "configs/evaluate_external.json"], None,
        **{**SHORT, "model_file": str(evaluated.fold_dir / "model.pt"), "ids_steps": 2, "num_folds": 2},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = read_case_table(tmp_path / "external" / "out" / "per_case.csv")
    assert sorted(row["case_id"] for row in rows) == sorted(p.name for p in cohort.glob("BraTS20_Training_*"))
    metrics = json.loads((tmp_path / "external" / "out" / "metrics.json").read_text())
    assert metrics["cases"] == 6 and metrics["calibration"] == CALIBRATION.to_dict()  # the fold's, beside its weights


def test_a_bf16_evaluation_follows_fp32_and_leaves_the_network_at_fp32(evaluated, data_synthetic_root, tmp_path):
    full = {row["case_id"]: row for row in read_case_table(evaluated.fold_dir / "per_case.csv")}
    gaps = {c: abs(float(row["logit_HGG"]) - float(row["logit_LGG"])) for c, row in full.items()}
    margin = max(gaps.values()) / 2  # some cases run in bf16, the closer ones again in fp32
    workflow = _evaluation(tmp_path / "bf16", data_synthetic_root, precision="bf16", ids_steps=IDS_STEPS,
                           model_file=str(evaluated.fold_dir / "model.pt"), bf16_recheck_margin=margin)
    workflow.initialize()
    workflow.run()
    network = workflow.parser.get_parsed_content("fold_model")
    workflow.finalize()
    out = tmp_path / "bf16" / "out" / "fold0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and evaluated.metrics["precision"] == "fp32"
    assert metrics["bf16_recheck_margin"] == pytest.approx(margin) and evaluated.metrics["bf16_recheck_margin"] is None
    assert network.precision == "fp32" and network.bf16_recheck_margin == BF16_RECHECK_MARGIN  # restored
    low = {row["case_id"]: row for row in read_case_table(out / "per_case.csv")}
    assert low.keys() == full.keys()
    changed = {c: float(low[c]["logit_LGG"]) != float(full[c]["logit_LGG"]) for c in full}
    assert any(changed[c] for c in full if gaps[c] > margin + 0.1)  # bf16 really ran on the clear cases
    assert not any(changed[c] for c in full if gaps[c] < margin - 0.1)  # the close ones were rerun in fp32
    for case in full:
        assert float(low[case]["prob_HGG"]) == pytest.approx(float(full[case]["prob_HGG"]), abs=0.02), case
    assert metrics["bac"] == evaluated.metrics["bac"]


def test_a_bad_calibration_file_stops_the_evaluation_before_any_forward_pass(evaluated, data_synthetic_root, tmp_path):
    fold = tmp_path / "fold"
    shutil.copytree(evaluated.fold_dir, fold)  # weights, push record
    (fold / "calibration.json").write_text(json.dumps({"temperature": -1.0, "method": "nll"}))
    workflow = _evaluation(tmp_path / "bad", data_synthetic_root, ids_steps=IDS_STEPS, model_file=str(fold / "model.pt"),
                           save_maps="true")  # maps are written during the forward passes
    workflow.initialize()
    with pytest.raises(RuntimeError) as stopped:  # the bundle's config wraps what the evaluator raised
        workflow.run()
    assert isinstance(stopped.value.__cause__, ValueError)
    assert "calibration.json: not a readable calibration file" in str(stopped.value.__cause__)
    out = tmp_path / "bad" / "out" / "fold0"
    assert not (out / "maps").exists() and not (out / "per_case.csv").exists()


def test_missing_sequence_report_covers_every_subset(evaluated):
    report = json.loads((evaluated.fold_dir / "missing_sequences.json").read_text())
    assert report["bac_all_present"] == evaluated.metrics["bac"]
    subsets = [tuple(entry["missing"]) for entry in report["missing"]]
    assert len(subsets) == len(set(subsets)) == 14 and all(0 < len(s) < 4 for s in subsets)
    # recompute one subset by hand: FLAIR replaced by the mean of T1, T1-CE and T2
    flair = next(entry for entry in report["missing"] if entry["missing"] == ["flair"])
    labels, predictions = [], []
    for case in evaluated.cases.values():
        image = case["image"].as_tensor()[None].clone()
        image[:, 3] = image[:, :3].mean(dim=1)
        with torch.no_grad():
            predictions.append(int(evaluated.network(image).argmax(dim=1)))
        labels.append(int(case["label"]))
    assert flair["bac"] == pytest.approx(_bac(labels, predictions), abs=1e-12)


def test_missing_weights_name_the_file_and_say_to_train(data_synthetic_root, tmp_path):
    workflow = _evaluation(tmp_path / "untrained", data_synthetic_root, fold=1)
    workflow.initialize()
    expected = tmp_path / "untrained" / "out" / "fold1" / "model.pt"
    with pytest.raises(FileNotFoundError, match=rf"{expected}.*train this fold first"):
        workflow.parser.get_parsed_content("evaluate#evaluator")()


def test_replace_missing_is_the_mean_of_the_present_channels():
    images = torch.stack([torch.full((2, 2, 2), float(v)) for v in (1, 2, 3, 7)])[None]  # (1, 4, 2, 2, 2)
    one = replace_missing(images, [0])
    assert one[0, :, 0, 0, 0].tolist() == [4, 2, 3, 7]  # (2 + 3 + 7) / 3
    two = replace_missing(images, [3, 1])
    assert two[0, :, 0, 0, 0].tolist() == [1, 2, 3, 2]  # (1 + 3) / 2
    three = replace_missing(images, [0, 1, 2])
    assert three[0, :, 0, 0, 0].tolist() == [7, 7, 7, 7]
    assert images[0, :, 0, 0, 0].tolist() == [1, 2, 3, 7]  # input untouched
    random = torch.randn(2, 4, 3, 3, 3)
    torch.testing.assert_close(replace_missing(random, [2])[:, 2], random[:, [0, 1, 3]].mean(dim=1))
    for bad in ([], [0, 1, 2, 3], [4]):
        with pytest.raises(ValueError, match="proper subset"):
            replace_missing(random, bad)


def test_missing_subsets_and_bac_with_a_constructed_model():
    assert missing_subsets(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert len(missing_subsets(4)) == 2**4 - 2

    def predict(x: torch.Tensor) -> torch.Tensor:  # HGG iff channel 0 has a positive mean
        score = x[:, 0].flatten(1).mean(dim=1)
        return torch.stack([-score, score], dim=1)

    # case 0 (LGG): channels (-1, 3, 3, 3); case 1 (HGG): (1, 1, 1, 1); case 2 (HGG): (2, -4, -4, -4)
    values = [(-1, 3, 3, 3), (1, 1, 1, 1), (2, -4, -4, -4)]
    images = [torch.tensor(v, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 2, 2) for v in values]
    results = missing_sequence_bac(predict, images, torch.tensor([0, 1, 1]), ["t1", "t1ce", "t2", "flair"], 5)
    by_subset = {tuple(r["missing"]): r["bac"] for r in results}
    # T1 missing: channel 0 becomes 3, 1, -4 -> predictions HGG, HGG, LGG -> recalls LGG 0, HGG 1/2
    assert by_subset[("t1",)] == 0.25
    # T1 present: predictions LGG, HGG, HGG -> BAC 1
    assert by_subset[("t2",)] == by_subset[("t1ce", "t2", "flair")] == 1.0
    assert math.isclose(sum(r["bac"] for r in results), 7 * 0.25 + 7 * 1.0)


def test_a_held_out_case_that_fails_is_listed_the_others_evaluated_and_the_run_exits_1(
    evaluated, data_synthetic_root, tmp_path, capsys
):
    _, test_items = split_fold(json.loads((evaluated.workdir.parent / "datalist.json").read_text()), 0)
    broken = {**test_items[0], "case_id": "broken", "image": [*test_items[0]["image"][:3], str(tmp_path / "gone.nii")]}
    workflow = _evaluation(tmp_path / "again", data_synthetic_root, model_file=str(evaluated.fold_dir / "model.pt"),
                           ids_steps=2, **{"evaluate#items": [*test_items, broken]})
    workflow.initialize()
    with pytest.raises(SystemExit) as stopped:
        workflow.run()
    assert stopped.value.code == 1
    fold_dir = tmp_path / "again" / "out" / "fold0"
    errors = json.loads((fold_dir / "errors.json").read_text())
    assert errors["failed"][0]["case_id"] == "broken" and errors["failed"][0]["file"] == str(tmp_path / "gone.nii")
    assert sorted(errors["done"]) == sorted(evaluated.cases)
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["cases"] == len(evaluated.cases) and metrics["bac"] == evaluated.metrics["bac"]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: 1 case(s) failed (broken)")


@pytest.mark.parametrize("option", ["dataset_dir", "model_file"])
def test_a_bad_dataset_dir_or_model_file_is_one_line_exit_2(evaluated, data_synthetic_root, tmp_path, capsys, option):
    settings = {"dataset_dir": data_synthetic_root, "model_file": str(evaluated.fold_dir / "model.pt"),
                option: str(tmp_path / "nowhere")}
    workflow = _evaluation(tmp_path / "bad", settings.pop("dataset_dir"), **settings)
    workflow.initialize()
    with pytest.raises(SystemExit) as stopped:
        workflow.run()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --{option} {tmp_path / 'nowhere'}: does not exist"


@pytest.mark.parametrize("device, expected", [("$torch.device('cpu')", 3), ("cpu", 3), ("$torch.device('cuda:0')", 17)])
def test_ids_batch_size_follows_the_device(device, expected):
    # a full-size batch of 17 is slower per volume than batches of 3 on a CPU and needs ~15 GiB there
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(["configs/train.json", "configs/evaluate.json"])
    parser["device"] = device  # a torch.device, or a string as `--device cpu` gives
    assert parser.get_parsed_content("ids_batch_size") == expected
