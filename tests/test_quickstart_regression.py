"""Quick-start regression: a tiny quick-start run learns, does not collapse, and passes the counterfactual check.

One module-scoped run of ``configs/train.json`` + ``configs/quickstart.json`` (the bundle's defaults for
the objective and the class map) on a small synthetic cohort at a smaller grid, trained in about a
minute on 2 CPU cores. It would have failed on the 0.1.0 defaults (held-out BAC 0.5, similarity spread
about 0.001).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigWorkflow

from scripts.counterfactual import check_pairs, pair_items
from scripts.data import generate_dataset, preprocessing_transforms
from scripts.data.synthetic import generate_pairs
from scripts.evaluate import load_fold_weights, read_case_table

SHAPE = (48, 48, 36)
TINY = {
    "device": "cpu",
    "roi_size": list(SHAPE),
    "target_spacing": 1.5,  # resampled to 32 x 32 x 24, as before the quick start kept its phantoms' 1 mm
    "check_voxels": False,
    "progress_bar": False,
    "warmup_epochs": 20,
    "stage1_epochs": 10,
    "push_every": 5,
    "stage3_epochs": 5,
    "ids_steps": 10,
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The tiny quick-start run (UM-ProtoShare and the CNN evaluated) and its counterfactual pairs."""
    root = tmp_path_factory.mktemp("quickstart")
    data = root / "data"
    generate_dataset(data, cases=48, shape=SHAPE, seed=0, hgg_fraction=0.5, ambiguous_fraction=0.0)
    workflow = ConfigWorkflow(
        config_file=["configs/train.json", "configs/quickstart.json"], workflow_type="train", run_id="training",
        logging_file=False, dataset_dir=str(data), datalist_file=str(root / "datalist.json"),
        cache_dir=str(root / "cache"), output_dir=str(root / "out"), **TINY,
    )
    threads = torch.get_num_threads()  # quickstart.json fixes 2, for this module's tests; later modules keep theirs
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        generate_pairs(root / "pairs", 8, SHAPE, seed=5)
        yield SimpleNamespace(parser=workflow.parser, fold=root / "out" / "fold0", pairs=root / "pairs", root=root)
    finally:
        torch.set_num_threads(threads)


def _metrics(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_tiny_quickstart_learns_without_collapse(quickstart):
    metrics = _metrics(quickstart.fold)
    assert metrics["bac"] > 0.5
    spread = metrics["similarity_spread"]
    # The collapse this guards against left every prototype's similarity flat (spread about 0.001). With
    # add-ons on the encoder tap, a prototype matching tissue every case has is nearly flat on its own
    # (min 0.002-0.013 on the full quick start) while the others vary: the mean carries the guard.
    assert spread["mean"] >= 0.05 and spread["min"] > 0.0005
    comparison = json.loads((quickstart.root / "out" / "comparison.json").read_text())
    assert set(comparison["runs"]) == {"UM-ProtoShare", "CNN + Grad-CAM"}
    assert comparison["runs"]["UM-ProtoShare"]["bac"]["mean"] == pytest.approx(metrics["bac"])
    for key in ("ap_eq28", "topk_peak_in_brain", "topk_peak_in_tumour_correct", "topk_peak_tumour_distance_correct",
                "prototype_source_agrees", "prototype_separates", "topk_separating_correct"):
        assert comparison["runs"]["UM-ProtoShare"][key]["mean"] == pytest.approx(metrics[key])
        assert comparison["runs"]["CNN + Grad-CAM"][key]["mean"] is None  # the CNN has no prototypes


def test_tiny_quickstart_calibrates_both_models_on_the_held_in_split(quickstart):
    """UM-ProtoShare and its CNN each get a temperature fitted on the validation split alone, which their
    evaluations apply: the CSV's single-pass probabilities are softmax(logits / T) (those shown average the
    mirror images, tests/test_evaluate.py) and the comparison carries the ECE."""
    parser = quickstart.parser
    validation = {item["case_id"] for item in parser.get_parsed_content("validate#items")}
    trained = {item["case_id"] for item in parser.get_parsed_content("train#items")}
    tested = {item["case_id"] for item in parser.get_parsed_content("test#items")}
    assert validation and not validation & trained and not validation & tested
    comparison = json.loads((quickstart.root / "out" / "comparison.json").read_text())
    for name, folder in (("UM-ProtoShare", quickstart.fold), ("CNN + Grad-CAM", quickstart.fold / "cnn_gradcam")):
        saved = json.loads((folder / "calibration.json").read_text())
        assert set(saved["validation"]["case_ids"]) == validation and saved["method"] == "prior_nll"
        metrics = _metrics(folder)
        assert metrics["calibration"]["temperature"] == saved["temperature"]
        temperature = saved["temperature"]
        rows = read_case_table(folder / "per_case.csv")
        for row in rows:
            logits = torch.tensor([row["logit_LGG"], row["logit_HGG"]])
            assert row["single_prob_HGG"] == pytest.approx(float(torch.softmax(logits / temperature, 0)[1]), abs=1e-6)
        assert comparison["runs"][name]["ece"]["mean"] == pytest.approx(metrics["ece"])


def test_tiny_quickstart_top_prototypes_never_peak_outside_the_brain(quickstart):
    """Brain-supported maps (the default): every held-out case's top prototypes peak inside its brain."""
    metrics = _metrics(quickstart.fold)
    assert metrics["top_prototypes"] == 6
    assert metrics["topk_peak_in_brain"] == 1.0
    rows = (quickstart.fold / "per_case.csv").read_text().splitlines()
    column = rows[0].split(",").index("topk_peak_in_brain")
    assert len(rows) > 2 and all(float(row.split(",")[column]) == 1.0 for row in rows[1:])


def test_counterfactual_pairs_flip_the_prediction(quickstart):
    # 8 pairs, each drawn case as HGG and as LGG (identical outside the tumour). Both versions right by
    # chance: 1/4 of the pairs; a model that ignores the tumour (or predicts one class): none.
    parser = quickstart.parser
    network = parser.get_parsed_content("network_def")
    load_fold_weights(network, quickstart.fold / "model.pt")
    preprocessing = preprocessing_transforms(with_mask=True, roi_size=list(SHAPE), target_spacing=1.5)
    combination, brain_only = parser.get_parsed_content("scale_combination"), parser.get_parsed_content("brain_only")
    report = check_pairs(network, pair_items(quickstart.pairs), preprocessing, combination=combination,
                         brain_only=brain_only)
    assert report["flip_rate"] >= 0.5
    assert report["flip_rate"] == sum(p["predicted"] == ["HGG", "LGG"] for p in report["pairs"]) / 8
    for pair in report["pairs"]:
        assert 0.0 <= pair["change_in_tumour"] <= 1.0 and 0.0 < pair["tumour_share_brain"] < 0.25


def test_class_map_benchmark_reproduces_the_evaluated_ap(quickstart):
    # benchmarks.class_maps rebuilds every option on the trained fold; the configured one (product of the
    # scales, inside the brain) must give exactly the AP that evaluate.json wrote.
    from benchmarks.class_maps import fold_report

    report = fold_report(quickstart.parser, quickstart.fold)
    metrics = _metrics(quickstart.fold)
    option = f"{metrics['scale_combination']}{'+brain' if metrics['brain_only'] else ''}"
    assert report[option]["ap"] == pytest.approx(metrics["ap"], abs=1e-9)
    assert {"sum", "density", "product+brain", "scale1 alone"} <= set(report)
