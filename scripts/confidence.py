"""How confident a model is on cases of known ambiguity: ``python -m scripts.confidence``.

The phantoms record how ambiguous each case looks (``appearance`` in ``synthetic_info.csv``: 0 = LGG
look, 1 = HGG look; ambiguous cases lie in [0.35, 0.65]). This pools the per-case tables
(``per_case.csv``) of one or more evaluated runs (seeds, folds) and reports, per run, the held-out
calibration (top-label ECE, NLL, Brier; raw and calibrated) and the calibrated top probability on
ambiguous and on clear cases, the numbers the low-confidence banner (top probability < 0.8) depends on::

    python -m scripts.confidence --runs "UM-ProtoShare=runs/s0/fold0,runs/s1/fold0;CNN=runs/s0/fold0/cnn_gradcam" \\
        --info runs/synthetic/v2/MICCAI_BraTS2020_TrainingData/synthetic_info.csv --plot confidence.png
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

from scripts.calibration import calibration_metrics, ece_if_calibrated
from scripts.compare import parse_run_dirs
from scripts.evaluate import CASES_CSV, read_case_table, write_json
from scripts.explain.evidence import LOW_PROBABILITY

__all__ = ["AMBIGUOUS", "CLEAR", "confidence_summary", "format_confidence", "main", "plot_confidence", "read_appearance"]

AMBIGUOUS = (0.35, 0.65)
"""Appearance range of an ambiguous case (inclusive)."""
CLEAR = (0.25, 0.75)
"""A clear case's appearance lies below the first or above the second value."""


def read_appearance(info_file: str | PathLike) -> dict[str, float]:
    """case id → ``appearance`` from a phantom cohort's ``synthetic_info.csv``."""
    with Path(info_file).open(newline="") as handle:
        return {row["case_id"]: float(row["appearance"]) for row in csv.DictReader(handle)}


def _rows(run_dirs: Sequence[str | PathLike], class_names: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for folder in run_dirs:
        path = Path(folder) / CASES_CSV
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: evaluate that fold first (configs/evaluate.json).")
        rows += read_case_table(path)
    missing = [f"raw_prob_{n}" for n in class_names if f"raw_prob_{n}" not in rows[0]] if rows else []
    if missing:
        raise ValueError(f"per-case tables lack {missing}: evaluate again with this version (calibration columns).")
    return rows


def confidence_summary(
    rows: Sequence[Mapping[str, Any]], appearance: Mapping[str, float], class_names: Sequence[str]
) -> dict[str, Any]:
    """Pooled calibration and top probability by ambiguity of per-case rows (:func:`read_case_table`).

    Returns:
        ``cases``; ``ece``/``nll``/``brier`` and their ``_raw`` forms; ``ece_if_calibrated``, the ECE that
        perfectly calibrated probabilities with these top values would show on these cases in expectation
        (:func:`~scripts.calibration.ece_if_calibrated`: the floor that chance sets on a set this size);
        for ``ambiguous`` and ``clear`` cases the count, mean and median calibrated top probability, the share flagged (< :data:`LOW_PROBABILITY`),
        the share ``cautioned`` (the report's banner fires for any reason, the flip spread included; NaN for
        tables without the ``caution`` column) and the accuracy; ``points``: (appearance, calibrated top
        probability, correct) per case.

    Raises:
        KeyError: a case has no appearance (another cohort's info file).
    """
    labels = torch.tensor([int(row["label"]) for row in rows])
    calibrated = torch.tensor([[row[f"prob_{n}"] for n in class_names] for row in rows], dtype=torch.float64)
    raw = torch.tensor([[row[f"raw_prob_{n}"] for n in class_names] for row in rows], dtype=torch.float64)
    top = calibrated.max(dim=1).values.numpy()
    correct = (calibrated.argmax(dim=1) == labels).numpy()
    unknown = [row["case_id"] for row in rows if row["case_id"] not in appearance]
    if unknown:
        raise KeyError(f"cases {unknown} have no appearance in the info file: is it another cohort's synthetic_info.csv?")
    look = np.array([appearance[row["case_id"]] for row in rows])
    groups = {
        "ambiguous": (look >= AMBIGUOUS[0]) & (look <= AMBIGUOUS[1]),
        "clear": (look < CLEAR[0]) | (look > CLEAR[1]),
    }
    summary: dict[str, Any] = {
        "cases": len(rows),
        **calibration_metrics(calibrated, labels),
        "ece_if_calibrated": ece_if_calibrated(calibrated),
    }
    summary.update({f"{key}_raw": value for key, value in calibration_metrics(raw, labels).items()})
    for name, chosen in groups.items():
        values = top[chosen]
        summary[name] = {
            "cases": int(chosen.sum()),
            "mean_top_probability": float(values.mean()) if values.size else math.nan,
            "median_top_probability": float(np.median(values)) if values.size else math.nan,
            "flagged": float((values < LOW_PROBABILITY).mean()) if values.size else math.nan,
            "cautioned": float(np.mean([rows[i]["caution"] for i in np.flatnonzero(chosen)]))
            if values.size and "caution" in rows[0] else math.nan,
            "accuracy": float(correct[chosen].mean()) if values.size else math.nan,
        }
    summary["points"] = [[float(a), float(p), bool(c)] for a, p, c in zip(look, top, correct)]
    return summary


def format_confidence(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per run."""
    lines = [
        "| run | cases | ECE raw → cal. (if calibrated) | NLL raw → cal. | Brier (cal.) "
        "| ambiguous: n, mean top p, flagged, acc. | clear: n, median top p, flagged, acc. "
        "| banner (all signals): ambiguous, clear |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        a, c = s["ambiguous"], s["clear"]
        lines.append(
            f"| {name} | {s['cases']} | {s['ece_raw']:.3f} → {s['ece']:.3f} ({s['ece_if_calibrated']:.3f}) | "
            f"{s['nll_raw']:.3f} → {s['nll']:.3f} | "
            f"{s['brier']:.3f} | {a['cases']}, {a['mean_top_probability']:.3f}, {a['flagged']:.2f}, "
            f"{a['accuracy']:.2f} | {c['cases']}, {c['median_top_probability']:.3f}, {c['flagged']:.2f}, "
            f"{c['accuracy']:.2f} | {a['cautioned']:.2f}, {c['cautioned']:.2f} |"
        )
    return "\n".join(lines)


def plot_confidence(path: str | PathLike, summaries: Mapping[str, Mapping[str, Any]]) -> Path:
    """Calibrated top probability against appearance, one panel per run; wrong answers as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 3.4), squeeze=False)
    for axis, (name, summary) in zip(axes[0], summaries.items()):
        points = np.array(summary["points"], dtype=np.float64).reshape(-1, 3)
        right = points[:, 2] > 0
        axis.axvspan(*AMBIGUOUS, color="#eeeeee", label="ambiguous look")
        axis.axhline(LOW_PROBABILITY, color="#a00000", linestyle="--", linewidth=1, label="banner below")
        axis.scatter(points[right, 0], points[right, 1], s=16, color="#1f77b4", label="correct")
        axis.scatter(points[~right, 0], points[~right, 1], s=30, marker="x", color="#d62728", label="wrong")
        axis.set(xlim=(0, 1), ylim=(0.45, 1.02), xlabel="appearance (0 LGG look, 1 HGG look)",
                 title=f"{name} ({summary['cases']} cases)")
        axis.set_ylabel("calibrated top probability")
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(runs: str, info: str, class_names: Sequence[str] = ("LGG", "HGG"), plot: str | None = None,
         out: str | None = None) -> None:
    """Command line: see the module docstring."""
    appearance = read_appearance(info)
    summaries = {name: confidence_summary(_rows(dirs, class_names), appearance, class_names)
                 for name, dirs in parse_run_dirs(runs).items()}
    print(format_confidence(summaries))
    if plot:
        plot_confidence(plot, summaries)
    if out:
        write_json(Path(out), summaries)


if __name__ == "__main__":
    fire.Fire(main)
