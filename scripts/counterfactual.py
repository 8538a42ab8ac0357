"""Counterfactual check: does the model change its mind, and its map, where the grade lives?

Two commands (from the bundle root)::

    python -m scripts.counterfactual pairs --out runs/pairs [--pairs 8] [--shape 72,72,54] [--seed 1] \\
        [--family quickstart|shifted]
    python -m scripts.counterfactual check --pairs_dir runs/pairs \\
        --config_file "['configs/train.json','configs/quickstart.json']" --model_file runs/quickstart/fold0/model.pt \\
        [--network network_def] [--class_map_method grad_cam] [--out counterfactual.json]

``pairs`` writes synthetic cases in the BraTS 2020 layout, each drawn case twice: as HGG and as LGG,
voxel-identical outside the whole tumour (:func:`scripts.data.synthetic.generate_pairs`). ``check``
preprocesses both versions as the config does, runs the model (``network`` names its definition in
the config: ``network_def`` for UM-ProtoShare and the prototype baselines, ``warmup_network_def`` for
the CNN; the class map is built as the config's ``scale_combination`` and ``brain_only`` say) and
reports per pair: both predictions, whether the prediction follows the grade (``flips``:
HGG version → HGG and LGG version → LGG), and where the class map of the HGG class changes:
``change_in_tumour`` = Σ|ΔM| inside the tumour / Σ|ΔM| over the volume. The level of a change spread
evenly over the brain is the tumour's share of the brain (``tumour_share_brain``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser
from torch import Tensor, nn

from scripts.cv import config_list
from scripts.data import build_datalist, preprocessing_transforms
from scripts.data.foreground import brain_mask
from scripts.data.synthetic import DEFAULT_SHAPE, generate_pairs
from scripts.engine.allocator import configure_allocator
from scripts.evaluate import load_fold_weights
from scripts.explain.attribution import class_map
from scripts.maps import DEFAULT_SCALE_COMBINATION

__all__ = ["change_in_tumour", "check_pairs", "pair_items"]


def change_in_tumour(first: Tensor, second: Tensor, tumour: Tensor) -> float:
    """Share of the map change that lies inside the tumour: Σ_tumour |ΔM| / Σ_volume |ΔM| (0 when nothing changes).

    Args:
        first, second: the two versions' class maps on one grid, (H, W, D).
        tumour: bool (H, W, D), the whole-tumour mask.
    """
    if not first.shape == second.shape == tumour.shape:
        raise ValueError(f"maps {tuple(first.shape)}, {tuple(second.shape)} and mask {tuple(tumour.shape)} differ.")
    change = (first - second).abs()
    return float(change[tumour.bool()].sum() / change.sum().clamp_min(1e-12))


def pair_items(pairs_dir: str | PathLike, class_names: Sequence[str] = ("LGG", "HGG")) -> list[tuple[dict, dict]]:
    """Datalist items of each counterfactual pair as ``(HGG version, LGG version)``, in draw order."""
    pairs_dir = Path(pairs_dir)
    info = pairs_dir / "synthetic_info.csv"
    if not info.is_file():
        raise FileNotFoundError(f"{info} not found: write the pairs with `python -m scripts.counterfactual pairs`.")
    with info.open(newline="") as handle:
        draws = {row["case_id"]: int(row["draw"]) for row in csv.DictReader(handle)}
    items = build_datalist(pairs_dir, list(class_names), layout="brats2020", num_folds=2)["training"]
    by_draw: dict[int, dict[str, dict]] = {}
    for item in items:
        by_draw.setdefault(draws[item["case_id"]], {})[item["label_name"]] = item
    pairs = [(versions["HGG"], versions["LGG"]) for _, versions in sorted(by_draw.items())]
    if not pairs or any(len(versions) != 2 for versions in by_draw.values()):
        raise ValueError(f"{pairs_dir} does not hold HGG/LGG pairs (synthetic_info.csv 'draw' column).")
    return pairs


def check_pairs(
    network: nn.Module,
    pairs: Sequence[tuple[dict, dict]],
    preprocessing: Any,
    class_names: Sequence[str] = ("LGG", "HGG"),
    class_map_method: str | None = None,
    device: str | torch.device = "cpu",
    combination: str = DEFAULT_SCALE_COMBINATION,
    brain_only: bool = False,
) -> dict[str, Any]:
    """Predictions and class-map change on each pair (see the module docstring); ``network`` is loaded.

    Args:
        network: the trained model, on ``device``.
        pairs: ``(HGG item, LGG item)`` datalist items with masks (:func:`pair_items`).
        preprocessing: ``preprocessing_transforms(with_mask=True, ...)`` as in training.
        class_names: names in label order; must contain ``"HGG"`` and ``"LGG"``.
        class_map_method, combination, brain_only: see :func:`scripts.explain.attribution.class_map`.
        device: where the forward passes run.
    """
    hgg = list(class_names).index("HGG")
    network.eval()
    rows = []
    for high_item, low_item in pairs:
        cases = [preprocessing(dict(item)) for item in (high_item, low_item)]
        images = torch.stack([torch.as_tensor(case["image"]) for case in cases]).float().to(device)
        with torch.no_grad():
            probs = torch.softmax(network(images).float(), dim=1).cpu()
        target = torch.full((2,), hgg, device=device)
        maps = class_map(network, images, target, class_map_method, combination, brain_only).float().cpu()
        tumour = torch.as_tensor(cases[0]["mask"])[0] > 0
        brain = brain_mask(images[0].cpu())
        predicted = probs.argmax(dim=1).tolist()
        rows.append({
            "cases": [high_item["case_id"], low_item["case_id"]],
            "predicted": [class_names[c] for c in predicted],
            "p_hgg": probs[:, hgg].tolist(),
            "flips": predicted == [hgg, list(class_names).index("LGG")],
            "change_in_tumour": change_in_tumour(maps[0], maps[1], tumour),
            "tumour_share_brain": float((tumour & brain).sum() / brain.sum().clamp_min(1)),
        })
    return {
        "pairs": rows,
        "flip_rate": sum(r["flips"] for r in rows) / len(rows),
        "change_in_tumour": sum(r["change_in_tumour"] for r in rows) / len(rows),
        "tumour_share_brain": sum(r["tumour_share_brain"] for r in rows) / len(rows),
    }


def pairs(
    out: str, pairs: int = 8, shape: str | Sequence[int] = DEFAULT_SHAPE, seed: int = 1, family: str = "quickstart"
) -> None:
    """Write counterfactual pairs of the phantom ``family`` (see the module docstring)."""
    records = generate_pairs(out, pairs, shape, seed, family=family)
    print(f"{out}: {len(records) // 2} {family} HGG/LGG pairs")


def check(
    pairs_dir: str,
    config_file: str | Sequence[str],
    model_file: str,
    network: str = "network_def",
    class_map_method: str | None = None,
    out: str | None = None,
) -> None:
    """Load the model of a config stack and print (and write) the pair report (see the module docstring)."""
    parser = ConfigParser()
    parser.read_config(config_list(config_file))
    configure_allocator(parser.get_parsed_content("allocator", default="retain"))
    class_names = parser.get_parsed_content("class_names")
    model = parser.get_parsed_content(network)
    load_fold_weights(model, model_file)
    preprocessing = preprocessing_transforms(
        with_mask=True,
        roi_size=parser.get_parsed_content("roi_size"),
        source_spacing=parser.get_parsed_content("source_spacing"),
        target_spacing=parser.get_parsed_content("target_spacing"),
    )
    combination = parser.get_parsed_content("scale_combination", default=DEFAULT_SCALE_COMBINATION)
    brain_only = bool(parser.get_parsed_content("brain_only", default=False))
    report = check_pairs(
        model, pair_items(pairs_dir, class_names), preprocessing, class_names, class_map_method, "cpu", combination,
        brain_only,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    fire.Fire({"pairs": pairs, "check": check})
