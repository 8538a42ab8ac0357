"""scripts.confidence on planted per-case tables: calibration pooled over runs and confidence by ambiguity."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from scripts.calibration import calibration_metrics
from scripts.confidence import confidence_summary, main, read_appearance
from scripts.evaluate import read_case_table, write_case_table


def _table(folder, rows):
    """rows: (case_id, label, calibrated p(HGG), raw p(HGG), caution 0/1)."""
    ids = [r[0] for r in rows]
    labels = torch.tensor([r[1] for r in rows])
    calibrated = torch.tensor([[1 - r[2], r[2]] for r in rows], dtype=torch.float64)
    raw = {"raw_prob_LGG": torch.tensor([1 - r[3] for r in rows]), "raw_prob_HGG": torch.tensor([r[3] for r in rows]),
           "caution": torch.tensor([float(r[4]) for r in rows])}
    write_case_table(folder / "per_case.csv", ids, labels, calibrated, torch.zeros(len(rows)), ["LGG", "HGG"], raw)


def test_pooled_calibration_and_confidence_by_ambiguity(tmp_path, capsys):
    info = tmp_path / "synthetic_info.csv"
    looks = {"a": 0.5, "b": 0.4, "c": 0.9, "d": 0.1, "e": 0.2, "f": 0.3}  # f: neither ambiguous nor clear
    with info.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "grade", "ambiguous", "appearance", "draw"])
        writer.writerows([k, "HGG", False, v, 0] for k, v in looks.items())
    (tmp_path / "s0").mkdir()
    (tmp_path / "s1").mkdir()
    # caution: the banner fired (c: for its flip spread, although its probability clears 0.8)
    _table(tmp_path / "s0", [("a", 1, 0.6, 0.9999, 1), ("b", 0, 0.7, 0.9999, 1), ("c", 1, 0.95, 1.0, 1)])
    _table(tmp_path / "s1", [("d", 0, 0.05, 0.0, 0), ("e", 0, 0.2, 0.001, 0), ("f", 1, 0.9, 0.99, 0)])
    rows = [*read_case_table(tmp_path / "s0" / "per_case.csv"), *read_case_table(tmp_path / "s1" / "per_case.csv")]
    summary = confidence_summary(rows, read_appearance(info), ["LGG", "HGG"])
    # ambiguous a (top 0.6, right) and b (top 0.7, wrong): mean 0.65, both flagged (< 0.8), accuracy 1/2
    assert summary["ambiguous"] == pytest.approx(
        {"cases": 2, "mean_top_probability": 0.65, "median_top_probability": 0.65, "flagged": 1.0, "cautioned": 1.0,
         "accuracy": 0.5}
    )
    # clear c (0.95), d (0.95), e (0.8): median 0.95, none below 0.8, all right
    assert summary["clear"] == pytest.approx(
        {"cases": 3, "mean_top_probability": 2.7 / 3, "median_top_probability": 0.95, "flagged": 0.0,
         "cautioned": 1 / 3, "accuracy": 1.0}
    )
    without = [{k: v for k, v in row.items() if k != "caution"} for row in rows]  # tables from before the column
    assert math.isnan(confidence_summary(without, read_appearance(info), ["LGG", "HGG"])["clear"]["cautioned"])
    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    calibrated = torch.tensor([[0.4, 0.6], [0.3, 0.7], [0.05, 0.95], [0.95, 0.05], [0.8, 0.2], [0.1, 0.9]])
    assert summary["ece"] == pytest.approx(calibration_metrics(calibrated, labels)["ece"], abs=1e-6)
    # the chance floor of the six top probabilities, in 15 bins 0.6 | 0.7 | 0.8 | 0.9 | 0.95, 0.95: a lone case
    # gives 2 p (1 - p) (0.48, 0.42, 0.32, 0.18); the pair at 0.95 gaps 0.95, 0.45, 0.05 for R = 0, 1, 2 with
    # P = 0.0025, 0.095, 0.9025: 0.09025. (1.4 + 2 × 0.09025) / 6 = 0.263417
    assert summary["ece_if_calibrated"] == pytest.approx(0.263417, abs=1e-6)
    assert summary["cases"] == 6 and len(summary["points"]) == 6
    main(runs=f"UM={tmp_path / 's0'},{tmp_path / 's1'}", info=str(info), plot=str(tmp_path / "c.png"))
    assert "| UM | 6 |" in capsys.readouterr().out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match=r"\['unknown'\] have no appearance"):
        confidence_summary([{**rows[0], "case_id": "unknown"}], read_appearance(info), ["LGG", "HGG"])
