"""Collapse diagnostics of stage 1 (hand-computed) and the side-by-side comparison tool."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scripts.compare import compare, parse_run_dirs, read_metrics
from scripts.engine.diagnostics import SPREAD_FLOOR, collapse_warnings, stage1_diagnostics, term_shares


def test_term_shares_are_weighted_magnitudes_over_their_sum():
    # |0.8 * -2| = 1.6, |1 * 0.3| = 0.3, |0.08 * 1.25| = 0.1 -> total 2.0; "extra" has no weight
    shares = term_shares({"cls": 1.0, "clst": 0.8, "sep": 0.08}, {"cls": 0.3, "clst": -2.0, "sep": 1.25, "extra": 9})
    assert shares == pytest.approx({"cls": 0.15, "clst": 0.8, "sep": 0.05})
    assert term_shares({"cls": 0.0}, {"cls": 1.0}) == {"cls": 0.0}


def test_stage1_diagnostics_hand_values():
    # S: prototype 0 = (0, 1) -> std 0.5; prototype 1 = (0.2, 0.2) -> 0. Both cases predicted class 1.
    # classifier w: column 0 -> zeta (0, 1) (class 1 owns it), column 1 -> zeta (0.5, 0.5) (nobody > 0.5)
    s = torch.tensor([[0.0, 0.2], [1.0, 0.2]])
    logits = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    w = torch.tensor([[-1.0, 1.0], [2.0, 1.0]])
    out = stage1_diagnostics(s, logits, w, {"cls": 1.0, "clst": 0.5}, {"cls": torch.tensor(1.0), "clst": torch.tensor(-2.0)})
    assert out["spread_min"] == 0.0 and out["spread_mean"] == pytest.approx(0.25) and out["spread_max"] == 0.5
    assert (out["pred_0"], out["pred_1"]) == (0.0, 1.0)
    assert (out["owned_0"], out["owned_1"]) == (0.0, 1.0)
    assert out["share_cls"] == pytest.approx(0.5) and out["share_clst"] == pytest.approx(0.5)


def test_collapse_warnings_name_the_spread_and_the_single_class():
    names = ["LGG", "HGG"]
    healthy = {"stage1/spread_mean": 0.2, "stage1/pred_0": 0.4, "stage1/pred_1": 0.6}
    assert collapse_warnings(healthy, names) == []
    collapsed = {"stage1/spread_mean": SPREAD_FLOOR / 2, "stage1/pred_0": 0.0, "stage1/pred_1": 1.0}
    warnings = collapse_warnings(collapsed, names)
    assert len(warnings) == 2
    assert "spread" in warnings[0] and "predicted HGG" in warnings[1]
    assert collapse_warnings({}, names) == []  # warm-up epochs carry no stage-1 read-outs


def _fold(tmp_path, name: str, bac: float, ap: float, spread: float | None) -> str:
    fold = tmp_path / name
    fold.mkdir()
    metrics = {
        "bac": bac, "ap": ap, "ids": 0.25,
        "localisation": {"region_share": 0.1, "tumour_share_volume": 0.02, "tumour_share_brain": 0.05,
                         "peak_in_tumour": 1.0},
        "similarity_spread": None if spread is None else {"min": spread / 2, "mean": spread, "max": 2 * spread},
    }
    (fold / "metrics.json").write_text(json.dumps(metrics))
    return str(fold)


def test_compare_gives_mean_and_population_std_and_writes_json(tmp_path):
    a1, a2 = _fold(tmp_path, "a1", 0.8, 0.6, 0.1), _fold(tmp_path, "a2", 1.0, 0.4, 0.3)
    cnn = _fold(tmp_path, "cnn", 0.9, 0.1, None)
    result = compare(f"UM={a1},{a2};CNN={cnn}", tmp_path / "cmp.json")
    um = result["runs"]["UM"]
    assert um["bac"]["mean"] == pytest.approx(0.9) and um["bac"]["std"] == pytest.approx(0.1)
    assert um["spread_mean"]["mean"] == pytest.approx(0.2) and um["random_map_ap"]["mean"] == pytest.approx(0.05)
    assert math.isnan(result["runs"]["CNN"]["spread_mean"]["mean"])
    assert "| UM | 2 | 0.900 ± 0.100 | 0.500 ± 0.100 |" in result["table"]
    assert json.loads((tmp_path / "cmp.json").read_text())["runs"]["CNN"]["spread_mean"]["mean"] is None


def test_compare_shows_the_prototype_read_outs_and_a_dash_for_the_cnn(tmp_path):
    um = _fold(tmp_path, "um", 0.9, 0.6, 0.2)
    metrics = json.loads((tmp_path / "um" / "metrics.json").read_text())
    readouts = {"ap_eq28": 0.25, "topk_peak_in_brain": 5 / 6, "topk_peak_in_tumour_correct": 0.5,
                "topk_peak_tumour_distance_correct": 1.25, "prototype_source_agrees": 0.75,
                "prototype_separates": 0.6, "topk_separating_correct": 0.5}
    (tmp_path / "um" / "metrics.json").write_text(json.dumps({**metrics, **readouts}))
    cnn = _fold(tmp_path, "cnn", 0.9, 0.1, None)
    result = compare({"UM": [um], "CNN": [cnn]})
    assert {key: result["runs"]["UM"][key]["mean"] for key in readouts} == readouts
    header, _, um_row, cnn_row = result["table"].splitlines()
    cells = dict(zip(header.split("|"), um_row.split("|")))
    assert cells[" AP (Eq. 28) "].strip() == "0.250" and cells[" top-k peaks in brain "].strip() == "0.833"
    assert cells[" top-k peaks in tumour (correct) "].strip() == "0.500"
    assert cells[" top-k peaks' distance to tumour, voxels (correct) "].strip() == "1.250"
    assert cells[" source class = weights' class "].strip() == "0.750"
    assert cells[" prototypes that separate the classes "].strip() == "0.600"
    assert cells[" top-k that separate the classes (correct) "].strip() == "0.500"
    assert cnn_row.endswith("| – | – | – | – | – | – | – | – | – |")  # spreads and the seven prototype read-outs


def test_compare_errors_name_the_missing_file_and_bad_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        read_metrics(tmp_path)
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_run_dirs("just_a_dir")
