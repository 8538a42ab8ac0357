"""The report's sections; each pits UM-ProtoShare's cost against its reference in one process, side by side.

Every section returns plain JSON data: medians over repeats of wall-clock seconds (``*_s``) and of this
process's CPU seconds (``*_cpu_s``), their ratios (``ratio``, ``cpu_ratio``) and the raw seconds
(``runs``). The CPU-time ratio does not move when other processes share the cores. Targets (issue 7)
are attached by :func:`benchmarks.run.report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.data.utils import set_rnd
from monai.engines.utils import default_prepare_batch
from torch import Tensor

from scripts.engine import train_last_layer_epoch
from scripts.metrics import deletion_curve
from scripts.push import push_prototypes

from .bundle import Parts, engine_at
from .measure import MIB, Runs, peak_memory, side_by_side, timed

__all__ = ["ids_section", "inference_section", "training_section"]


def _warm_up(calls: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> None:
    if rounds > 0:
        side_by_side(calls, rounds, device)


def _comparison(runs: Runs, numerator: str, denominator: str) -> dict[str, float]:
    """Median seconds of both calls (wall and CPU) and their ratios."""
    return {
        f"{numerator}_s": runs.median(numerator),
        f"{denominator}_s": runs.median(denominator),
        "ratio": runs.ratio(numerator, denominator),
        f"{numerator}_cpu_s": runs.median(numerator, "cpu"),
        f"{denominator}_cpu_s": runs.median(denominator, "cpu"),
        "cpu_ratio": runs.ratio(numerator, denominator, "cpu"),
    }


def _forward_pass(model: torch.nn.Module, batches: list[dict[str, Any]]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                model(batch["image"])

    return run


def inference_section(parts: Parts, batches: list[dict[str, Any]], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Inference per volume (UM-ProtoShare vs the CNN), peak memory, and push vs one inference pass.

    Both networks are in eval mode without gradient. Push is :func:`~scripts.push.push_prototypes` over
    the same in-memory batches; the prototypes it overwrites are restored after each push.

    Args:
        parts: the benchmarked parts.
        batches: loader batches in memory (``image`` on the device), N cases in all.
        repeats: timed rounds.
        warmup: untimed rounds first.
    """
    network, cnn = parts.network.eval(), parts.cnn.eval()
    cases = sum(len(batch["case_id"]) for batch in batches)
    prototypes = {name: p.detach().clone() for name, p in network.named_parameters() if name.endswith("prototypes")}

    def push() -> None:
        push_prototypes(network, batches, parts.class_names, input_size=parts.input_size)
        network.load_state_dict(prototypes, strict=False)

    calls = {"cnn": _forward_pass(cnn, batches), "umprotoshare": _forward_pass(network, batches), "push": push}
    _warm_up(calls, warmup, parts.device)
    runs = side_by_side(calls, repeats, parts.device)
    first = batches[0]["image"]
    with torch.no_grad():
        memory = {name: peak_memory(lambda m=model: m(first), parts.device) / MIB for name, model in
                  (("cnn", cnn), ("umprotoshare", network))}
    per_volume = first.shape[0]
    inference = _comparison(runs, "umprotoshare", "cnn")
    runs.wall["inference_pass"], runs.cpu["inference_pass"] = runs.wall["umprotoshare"], runs.cpu["umprotoshare"]
    return {
        "inference": {
            **inference,
            "umprotoshare_s_per_volume": inference["umprotoshare_s"] / cases,
            "cnn_s_per_volume": inference["cnn_s"] / cases,
            "umprotoshare_peak_mib_per_volume": memory["umprotoshare"] / per_volume,
            "cnn_peak_mib_per_volume": memory["cnn"] / per_volume,
            "memory_ratio": memory["umprotoshare"] / memory["cnn"] if memory["cnn"] > 0 else math.inf,
            "cases": cases,
            "batch_size": per_volume,
            "runs": runs.as_dict(["umprotoshare", "cnn"]),
        },
        "push": {**_comparison(runs, "push", "inference_pass"), "cases": cases, "runs": runs.as_dict(["push"])},
    }


def training_section(
    parts: Parts, dataset: Dataset, repeats: int, warmup: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Stage-1 vs CNN (warm-up) iterations, stage-3 vs stage-1 epochs, and batch fetch vs model time.

    Each round runs one stage-1 epoch and one CNN epoch through the configured
    :class:`~scripts.engine.StagedIteration` (what ignite's ``iteration_update`` runs) and one stage-3
    epoch (:func:`~scripts.engine.train_last_layer_epoch`), all over the same loader of cached,
    augmented cases (``num_workers=0``, so fetching is timed, not overlapped). Trainable groups are set
    as :class:`~scripts.engine.StageHandler` sets them. An epoch's time includes its fetches; the
    iteration and data figures are medians over all iterations of all rounds.

    Args:
        parts: the benchmarked parts.
        dataset: the augmented training dataset (N cases, N ≥ batch size).
        repeats: timed rounds.
        warmup: untimed rounds first.
        seed: seeds the augmentation and the shuffling.
    """
    if len(dataset) < parts.batch_size:
        raise ValueError(f"training needs at least one full batch: {len(dataset)} cases for batch {parts.batch_size}.")
    set_rnd(dataset, seed)
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=parts.batch_size, shuffle=True, num_workers=0, drop_last=True)
    schedule, device = parts.schedule, parts.device
    engines = {"stage1": engine_at(schedule.warmup_epochs + 1, device), "cnn": engine_at(1, device)}
    steps = Runs()

    def iterations(stage: str) -> Callable[[], None]:
        def run() -> None:
            target, groups = (parts.cnn, "warmup") if stage == "cnn" else (parts.network, "stage1")
            target.set_trainable(schedule.trainable_groups(groups))
            batches = iter(loader)
            while True:
                fetched: list[dict[str, Any] | None] = []
                fetch = timed(lambda: fetched.append(next(batches, None)), device)
                if fetched[0] is None:
                    return
                steps.add("fetch", fetch)
                steps.add(stage, timed(lambda: parts.iteration(engines[stage], fetched[0]), device))

        return run

    def stage3() -> None:
        parts.network.set_trainable(schedule.trainable_groups("stage3"))
        amp, channels_last = parts.iteration.amp, parts.iteration.channels_last_3d
        train_last_layer_epoch(
            parts.network, loader, parts.stage3_optimizer, parts.stage3_loss, device, default_prepare_batch,
            amp=amp, channels_last_3d=channels_last,
        )

    calls = {"stage1": iterations("stage1"), "cnn": iterations("cnn"), "stage3": stage3}
    _warm_up(calls, warmup, device)
    steps.wall.clear()
    steps.cpu.clear()
    epochs = side_by_side(calls, repeats, device)
    return {
        "training_iteration": {
            **_comparison(steps, "stage1", "cnn"),
            "batch_size": parts.batch_size,
            "runs": steps.as_dict(["stage1", "cnn"]),
        },
        "epochs": {
            **_comparison(epochs, "stage3", "stage1"),
            "cases": len(loader) * parts.batch_size,
            "runs": epochs.as_dict(["stage3", "stage1"]),
        },
        "data": {
            **_comparison(steps, "fetch", "stage1"),
            "fetch_max_s": max(steps.wall["fetch"]),
            "loader_workers": 0,
            "configured_workers": parts.num_workers,
            "runs": steps.as_dict(["fetch"]),
        },
    }


def ids_section(
    parts: Parts,
    images: Tensor,
    labels: Tensor,
    repeats: int,
    steps: int,
    batch_size: int,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """IDS (:func:`~scripts.metrics.deletion_curve`) on N cases vs the (steps + 1)·N forward passes it needs.

    The reference runs the same network on preallocated inputs in batches of the same sizes, so the
    ratio is the cost of building the deleted copies and scoring them. Attributions are seeded random
    maps on the input grid, which have no ties: IDS runs every copy but the all-zero last step, run once
    for all N cases (N − 1 copies fewer than the reference).

    Args:
        parts: the benchmarked parts.
        images: (N, C, H, W, D) on the CPU, as an evaluation dataset gives them.
        labels: (N,) class indices.
        repeats: timed rounds.
        steps: deletion steps (50 in the paper: 51 copies per case).
        batch_size: copies per forward pass.
        warmup: untimed rounds first.
        seed: seeds the attribution maps.
    """
    network, device = parts.network.eval(), parts.device
    maps = torch.rand(images.shape[0], *images.shape[2:], generator=torch.Generator().manual_seed(seed))
    copies = images.shape[0] * (steps + 1)
    sizes = [batch_size] * (copies // batch_size) + ([copies % batch_size] if copies % batch_size else [])
    inputs = {size: torch.zeros(size, *images.shape[1:]) for size in set(sizes)}

    def predict(x: Tensor) -> Tensor:
        return network(x.to(device))

    def forwards() -> None:
        with torch.no_grad():
            for size in sizes:
                predict(inputs[size])

    def ids() -> None:
        deletion_curve(predict, images, maps, labels, batch_size, steps)

    calls = {"forward_passes": forwards, "ids": ids}
    _warm_up(calls, warmup, device)
    runs = side_by_side(calls, repeats, device)
    return {
        **_comparison(runs, "ids", "forward_passes"),
        "cases": int(images.shape[0]),
        "steps": steps,
        "copies": copies,
        "batch_size": batch_size,
        "forward_passes": len(sizes),
        "runs": runs.as_dict(),
    }
