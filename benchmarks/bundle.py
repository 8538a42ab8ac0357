"""The benchmarked parts, built from the bundle's own configs so that they are the trained code paths.

``full`` reads ``configs/train.json`` (ResNet-152 encoder, 4×128×128×96, 30 prototypes); ``tiny``
overlays ``configs/quickstart.json`` (the quick start's small network on 4×72×72×54). Networks,
optimisers, losses, the staged iteration, the stage-3 objects and the data transforms are the
configs' own items; only ``device`` (and any given overrides) are replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines.utils import default_prepare_batch
from monai.transforms import Compose
from monai.utils import look_up_option
from torch.optim import Optimizer

from scripts.data import find_case_files, generate_dataset, make_dataset
from scripts.engine import Schedule, StagedIteration, configure_allocator, plain_tensor
from scripts.losses import LastLayerLoss
from scripts.networks import BackboneCNN, UMProtoShare

__all__ = [
    "CONFIGURATIONS", "Parts", "batches_of", "build_parts", "engine_at", "load_config", "synthetic_cohort"
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGURATIONS = {"full": ("train.json",), "tiny": ("train.json", "quickstart.json")}
"""Benchmark configuration → config files merged in order (later files override earlier ones)."""


def load_config(
    configuration: str, device: str | torch.device, overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """The bundle's training config for ``configuration`` ("full" or "tiny") on ``device``.

    Args:
        configuration: a key of :data:`CONFIGURATIONS`.
        device: replaces the config's ``device``.
        overrides: config ids → values set after reading (e.g. ``{"amp": True}``).
    """
    files = look_up_option(configuration, CONFIGURATIONS)
    parser = ConfigParser()
    parser.read_config([str(CONFIG_DIR / name) for name in files])
    parser["device"] = f"$torch.device('{torch.device(device)}')"
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


@dataclass
class Parts:
    """What the benchmarks run, as the training config builds it."""

    device: torch.device
    network: UMProtoShare
    cnn: BackboneCNN
    iteration: StagedIteration
    schedule: Schedule
    stage3_optimizer: Optimizer
    stage3_loss: LastLayerLoss
    class_names: list[str]
    roi_size: tuple[int, ...]
    input_size: tuple[int, ...]
    batch_size: int
    num_workers: int
    preprocessing: Compose
    augmentation: Compose
    settings: dict[str, Any]
    """The config settings the report names (encoder, prototypes, switches)."""


SETTINGS = (
    "encoder_layers",
    "encoder_width",
    "prototypes_per_scale",
    "embed_dim",
    "mapping_dim",
    "fusion",
    "input_size",
    "batch_size",
    "num_workers",
    "amp",
    "allocator",
    "channels_last_3d",
    "cudnn_benchmark",
)
"""Config ids copied into :attr:`Parts.settings`."""


def build_parts(parser: ConfigParser) -> Parts:
    """Instantiate the training config's networks, staged iteration, stage-3 objects and transforms, and apply
    its process setting ``allocator`` as the config's ``initialize`` does."""
    settings = {key: parser.get_parsed_content(key) for key in SETTINGS}
    configure_allocator(settings["allocator"])
    for key, value in settings.items():
        settings[key] = list(value) if isinstance(value, (tuple, list)) else value
    iteration = parser.get_parsed_content("train#iteration")
    return Parts(
        device=torch.device(parser.get_parsed_content("device")),
        network=iteration.network,
        cnn=iteration.warmup_network,
        iteration=iteration,
        schedule=iteration.schedule,
        stage3_optimizer=parser.get_parsed_content("stage3_optimizer"),
        stage3_loss=parser.get_parsed_content("stage3_loss"),
        class_names=list(parser.get_parsed_content("class_names")),
        roi_size=tuple(parser.get_parsed_content("roi_size")),
        input_size=tuple(settings["input_size"]),
        batch_size=int(settings["batch_size"]),
        num_workers=int(settings["num_workers"]),
        preprocessing=parser.get_parsed_content("preprocessing"),
        augmentation=parser.get_parsed_content("train#augmentation"),
        settings=settings,
    )


def engine_at(epoch: int, device: torch.device) -> SimpleNamespace:
    """The attributes of an ignite engine that :class:`~scripts.engine.StagedIteration` reads."""
    return SimpleNamespace(
        state=SimpleNamespace(epoch=epoch, device=device), prepare_batch=default_prepare_batch, non_blocking=False
    )


def synthetic_cohort(
    directory: str | PathLike,
    cases: int,
    parts: Parts,
    cache_dir: str | PathLike,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Synthetic BraTS cases of the config's ROI size, as the plain and the augmented training datasets.

    Both datasets share one on-disk cache of the preprocessed cases, filled here (so that later
    fetches read the cache, as from the second training epoch on).

    Returns:
        (preprocessed dataset, preprocessed + augmented dataset), items with ``image``, ``label``, ``case_id``.
    """
    records = generate_dataset(directory, cases, parts.roi_size, seed=seed, hgg_fraction=0.5, ambiguous_fraction=0.0)
    items = []
    for record in records:
        images, _ = find_case_files(Path(directory) / record["case_id"], record["case_id"])
        label = parts.class_names.index(record["grade"]) if record["grade"] in parts.class_names else 0
        items.append({"case_id": record["case_id"], "image": images, "label": label})
    plain = make_dataset(items, parts.preprocessing, cache_dir=str(cache_dir))
    augmented = make_dataset(items, parts.preprocessing, parts.augmentation, cache_dir=str(cache_dir))
    for index in range(len(plain)):
        plain[index]
    return plain, augmented


def batches_of(dataset: Dataset, batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """The dataset in order as loader batches held in memory: ``image`` a plain tensor on ``device``.

    Returns:
        Dicts with ``image`` (b, C, H, W, D), ``label`` (b,) and ``case_id`` (b strings).
    """
    batches = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        batches.append({**batch, "image": plain_tensor(batch["image"]).to(device)})
    return batches
