"""How the class map should be built: AP of each scale combination, with and without the brain restriction.

Command (from the bundle root), on folds trained with a config stack (e.g. by ``benchmarks.objectives``)::

    python -m benchmarks.class_maps --fold_dirs runs/objectives/max/seed0/fold0,runs/objectives/max/seed1/fold0
        [--config_file "['configs/train.json','configs/quickstart.json']"] [--out class_maps.json]

Loads each fold's ``model.pt`` (UM-ProtoShare) and, over its held-out cases, computes the mean AP and the
map-region and peak-in-tumour read-outs for every (``scale_combination``, ``brain_only``) pair, plus the
AP of each scale's map alone. Prints one JSON report (mean over the folds, and per fold).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from scripts.cv import config_list
from scripts.evaluate import load_fold_weights, predict_fold
from scripts.maps import SCALE_COMBINATIONS, class_attention_map
from scripts.metrics import activation_precision
from scripts.prototypes import soft_class_coefficients


def fold_report(parser: ConfigParser, fold_dir: Path) -> dict[str, Any]:
    """AP and read-outs of every class-map option on one fold (its model and held-out cases)."""
    network = parser.get_parsed_content("network_def")
    load_fold_weights(network, fold_dir / "model.pt")
    dataset = parser.get_parsed_content("evaluate#evaluator").dataset
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0)
    report: dict[str, Any] = {}
    for combination, brain_only in itertools.product(SCALE_COMBINATIONS, (False, True)):
        result = predict_fold(network, loader, "cpu", None, None, combination, brain_only)
        report[f"{combination}{'+brain' if brain_only else ''}"] = {
            "ap": float(result.ap.mean()),
            **{key: float(values.mean()) for key, values in result.localisation.items()},
        }
    report.update(_per_scale_ap(network, loader))
    return report


def _per_scale_ap(network: torch.nn.Module, loader: DataLoader) -> dict[str, dict[str, float]]:
    """Mean AP of each scale's class map alone (Eq. 27 of that scale), the stride's own localisation."""
    zeta = soft_class_coefficients(network.classifier.effective_weight)
    values: dict[int, list[float]] = {s: [] for s in network.scales}
    network.eval()
    for batch in loader:
        images, target = torch.as_tensor(batch["image"]).float(), torch.as_tensor(batch["label"]).long().reshape(-1)
        with torch.no_grad():
            explanation = network.explain(images)
        for entry in explanation.per_scale:
            maps = class_attention_map([entry.maps], zeta[:, network.columns(entry.scale)], target, images.shape[2:])
            values[entry.scale] += [activation_precision(m, mask) for m, mask in zip(maps, batch["mask"])]
    return {f"scale{s} alone": {"ap": float(np.mean(v))} for s, v in values.items()}


def main(
    fold_dirs: str | Sequence[str],
    config_file: str | Sequence[str] = "['configs/train.json','configs/quickstart.json']",
    out: str | None = None,
) -> None:
    """Report every option on every fold, and the mean over the folds (see the module docstring)."""
    dirs = [Path(d) for d in (fold_dirs.split(",") if isinstance(fold_dirs, str) else fold_dirs)]
    configs = config_list(config_file)
    per_fold = {}
    for fold_dir in dirs:
        parser = ConfigParser()
        parser.read_config(configs)
        parser["output_dir"] = str(fold_dir.parent)
        per_fold[str(fold_dir)] = fold_report(parser, fold_dir)
    options = next(iter(per_fold.values())).keys()
    mean = {
        option: {k: float(np.mean([f[option][k] for f in per_fold.values()])) for k in per_fold[str(dirs[0])][option]}
        for option in options
    }
    report = {"mean": mean, "per_fold": per_fold}
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    fire.Fire(main)
