"""Side-by-side held-out results of several runs: ``python -m scripts.compare``.

Each run is one or more evaluated fold directories (their ``metrics.json``, written by
``configs/evaluate.json``); several directories of one run (seeds, folds) give mean ± std (population)::

    python -m scripts.compare --runs "UM-ProtoShare=runs/a/fold0;CNN=runs/a/fold0/cnn_gradcam" --out cmp.json

The table has BAC, AP, the random-map AP (the tumour's share of the brain: what a map uniform inside
the brain scores), IDS, the >= 0.5 map region's share of the volume, the rate of cases whose map peaks
inside the tumour, the mean / minimum per-prototype similarity spread, and for prototype models (– for a
CNN) the AP of the paper's own read-out (Eq. 28: the scales summed over the whole volume), the share of the
top prototypes' map peaks inside the brain (all cases) and inside the tumour (correctly classified cases),
and the share of prototypes whose push source's class is the class their weights favour; last the held-out
calibration: top-label ECE (15 bins) and NLL before and after the fold's calibration, the ECE that perfectly
calibrated probabilities would show on the same cases (:func:`scripts.calibration.ece_if_calibrated`: what
chance alone gives on a fold this size), and the calibrated Brier score (– for folds evaluated before these
existed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fire
import numpy as np

from scripts.evaluate import METRICS_JSON, write_json

__all__ = ["COLUMNS", "compare", "format_comparison", "parse_run_dirs", "read_metrics", "summarise_run"]

COLUMNS = {
    "bac": "BAC",
    "ap": "AP",
    "random_map_ap": "random-map AP",
    "ids": "IDS",
    "region_share": "map region",
    "peak_in_tumour": "peak in tumour",
    "spread_mean": "S spread (mean)",
    "spread_min": "S spread (min)",
    "ap_eq28": "AP (Eq. 28)",
    "tumour_in_support": "tumour in map support",
    "topk_peak_in_brain": "top-k peaks in brain",
    "topk_peak_in_tumour_correct": "top-k peaks in tumour (correct)",
    "topk_peak_tumour_distance_correct": "top-k peaks' distance to tumour, voxels (correct)",
    "prototype_source_agrees": "source class = weights' class",
    "prototype_separates": "prototypes that separate the classes",
    "topk_separating_correct": "top-k that separate the classes (correct)",
    "ece_raw": "ECE (raw)",
    "ece": "ECE",
    "ece_if_calibrated": "ECE if calibrated",
    "nll_raw": "NLL (raw)",
    "nll": "NLL",
    "brier": "Brier",
}
"""Summary keys → table headers, in table order."""


def read_metrics(fold_dir: str | PathLike) -> dict[str, float]:
    """The comparison's numbers from one evaluated fold directory (NaN where the model has none)."""
    path = Path(fold_dir) / METRICS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate that fold first (configs/evaluate.json).")
    metrics = json.loads(path.read_text())
    localisation = metrics.get("localisation") or {}
    spread = metrics.get("similarity_spread") or {}

    def number(value: Any) -> float:
        return math.nan if value is None else float(value)

    return {
        "bac": number(metrics.get("bac")),
        "ap": number(metrics.get("ap")),
        "random_map_ap": number(localisation.get("tumour_share_brain")),
        "ids": number(metrics.get("ids")),
        "region_share": number(localisation.get("region_share")),
        "peak_in_tumour": number(localisation.get("peak_in_tumour")),
        "spread_mean": number(spread.get("mean")),
        "spread_min": number(spread.get("min")),
        **{key: number(metrics.get(key)) for key in
           ("ap_eq28", "tumour_in_support", "topk_peak_in_brain", "topk_peak_in_tumour_correct",
            "topk_peak_tumour_distance_correct", "prototype_source_agrees", "prototype_separates",
            "topk_separating_correct", "ece_raw", "ece", "ece_if_calibrated", "nll_raw", "nll", "brier")},
    }


def summarise_run(fold_dirs: Sequence[str | PathLike]) -> dict[str, Any]:
    """Mean, population std and per-directory values of every column over a run's directories."""
    if not fold_dirs:
        raise ValueError("a run needs at least one evaluated fold directory.")
    rows = [read_metrics(d) for d in fold_dirs]
    summary: dict[str, Any] = {"dirs": [str(d) for d in fold_dirs]}
    for key in COLUMNS:
        values = np.array([row[key] for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "values": values.tolist(),
        }
    return summary


def parse_run_dirs(runs: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``"A=dir1,dir2;B=dir3"`` (or a mapping) → ``{"A": ["dir1", "dir2"], "B": ["dir3"]}``."""
    if isinstance(runs, Mapping):
        return {str(k): [str(d) for d in v] for k, v in runs.items()}
    parsed: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in str(runs).split(";"))):
        name, sep, dirs = part.partition("=")
        if not sep or not name.strip() or not dirs.strip():
            raise ValueError(f"each run must read NAME=DIR[,DIR...], got {part!r}.")
        parsed[name.strip()] = [d.strip() for d in dirs.split(",") if d.strip()]
    if not parsed:
        raise ValueError("no runs given.")
    return parsed


def format_comparison(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: one row per run, ``mean ± std`` (a single directory shows its value)."""

    def cell(entry: Mapping[str, Any]) -> str:
        if math.isnan(entry["mean"]):
            return "–"
        if len(entry["values"]) == 1:
            return f"{entry['mean']:.3f}"
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}"

    lines = ["| run | n | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, summary in summaries.items():
        cells = [cell(summary[key]) for key in COLUMNS]
        lines.append(f"| {name} | {len(summary['dirs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(runs: str | Mapping[str, Sequence[str]], out: str | PathLike | None = None) -> dict[str, Any]:
    """Summarise each run, print the table, and write ``{"runs": ..., "table": ...}`` to ``out`` if given."""
    summaries = {name: summarise_run(dirs) for name, dirs in parse_run_dirs(runs).items()}
    table = format_comparison(summaries)
    print(table)
    result = {"runs": summaries, "table": table}
    if out is not None:
        write_json(Path(out), result)
    return result


def main(runs: str, out: str | None = None) -> None:
    """Command line: see the module docstring."""
    compare(runs, out)


if __name__ == "__main__":
    fire.Fire(main)
