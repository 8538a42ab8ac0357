"""How fast UM-ProtoShare runs at full size: the forward in fp32 and bf16 and the stage-1 step, as ratios.

Command (from the bundle root)::

    python -m benchmarks.speed [--tiny] [--repeats 3] [--official_src PATH] [--reference FILE]
                               [--save_reference FILE] [--overrides "{'decoder_kind': 'lite'}"] [--out report.json]
                               [--ids_cases N [--workdir DIR]]

One process builds the training config's network (``configs/train.json``: ResNet-152 encoder,
4×128×128×96, 30 prototypes; ``--tiny`` overlays the quick start's) and times, interleaved round by round
so that machine drift hits every variant alike:

- ``forward``: the eval-mode forward without gradient, batch 1: fp32; fp32 with batch norms folded
  into the convolutions (:func:`~scripts.networks.folding.fold_batch_norms`); bf16 autocast; the
  same-backbone CNN; and, with ``--official_src`` pointing at the ``src`` folder of a checkout of the
  authors' code (``AliGolbaf/um-protoshare``, which imports torchvision), their UM-ProtoShare
  (``p_mode=5``, the paper's model) in fp32 and bf16. Printed beside each: achieved GFLOP/s (the
  forward's FLOPs from ``torch.utils.flop_counter``), the machine's measured throughput of a lone
  3×3×3 convolution, peak resident memory, and how far folded and bf16 outputs are from fp32.
- ``ids`` (with ``--ids_cases N``): IDS per case (:func:`~scripts.metrics.deletion_curve`, 50 steps) on N
  synthetic phantoms with the evaluation's class map, as this version runs it, with every copy run, and as
  the bundle ran it before 0.11.0 (:data:`IDS_VARIANTS`); minutes per case and variant at full size.
- ``stage1_step``: one stage-1 training step of the configured iteration (every stage-1 loss term,
  decoder frozen, optimiser step) at batch 1 and 2, in fp32 and under bf16 autocast (``amp``); with
  ``--official_src``, also the authors' own stage-1 step (their ``train.py``'s joint stage, every loss
  term of theirs, their optimiser and schedule) on the same batches, which needs their ``train.py``'s
  imports (torchio, torchmetrics, scikit-learn, pandas, joblib, matplotlib, tqdm) beside torchvision.

Every variant runs with the CPU allocator the config names (``allocator``, :mod:`scripts.engine.allocator`:
``retain`` by default), except where its name says otherwise: ``fp32_system_allocator`` and the stage-1
steps ``batch<b>_system_allocator`` run ours with the C library's default, ``official_fp32`` and
``official_bf16`` (and the steps ``official_batch<b>``) run the authors' code as released (the default
allocator), and ``official_fp32_bundle_allocator`` (``official_batch<b>_bundle_allocator``) runs it with
ours. ``fp32_channels_last`` and ``bf16_channels_last`` run a copy placed channels-last, as
``configs/inference.json`` places its network (``channels_last_3d``); the other forwards run contiguous
copies. The ``bf16`` variants run bf16 alone; ``bf16_channels_last_rechecked`` is what ``--precision bf16``
costs for a case whose logits fall under ``bf16_recheck_margin`` (bf16, then fp32 again). The stage-1
steps run the network as ``configs/train.json`` places it: channels-last on a CPU since 0.13.0. The mode
is switched, untimed, before each call (:func:`_allocator_switches`).

``--save_reference`` writes the medians to a JSON file; ``--reference`` reads such a file (for example
one written on an earlier commit) and prints today's medians over it. Every section says whether the
machine was quiet: other processes' CPU time during it, from ``/proc/stat``, above 5 % of one core marks
the section ``"quiet": false`` and its ratios are not to be reported.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scripts.data.foreground import foreground_mask
from scripts.engine import place, plain_tensor
from scripts.engine.allocator import configure_allocator
from scripts.explain.attribution import class_map
from scripts.metrics import deletion_curve
from scripts.networks.folding import fold_batch_norms
from scripts.networks.precision import autocast, cpu_info, set_precision

from .bundle import build_parts, engine_at, load_config, synthetic_cohort
from .measure import command_signature, emit, median, side_by_side

__all__ = ["OtherLoad", "conv_throughput", "official_network", "peak_rss", "report"]

logger = logging.getLogger("benchmarks.speed")

QUIET_SHARE = 0.05
"""Largest share of one core that other processes may use during a section for it to count as quiet."""


class OtherLoad:
    """CPU seconds that processes other than this one used between ``start`` and ``stop`` (Linux /proc)."""

    def __init__(self) -> None:
        self.other = 0.0
        self.wall = 0.0

    @staticmethod
    def _busy_seconds() -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> OtherLoad:
        self._start = (self._busy_seconds(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *_: object) -> None:
        busy, own, wall = self._busy_seconds(), time.process_time(), time.perf_counter()
        self.other = max(0.0, (busy - self._start[0]) - (own - self._start[1]))
        self.wall = wall - self._start[2]

    def as_dict(self) -> dict[str, Any]:
        share = self.other / self.wall if self.wall > 0 else 0.0
        return {"other_processes_cpu_s": round(self.other, 2), "other_share_of_a_core": round(share, 3),
                "quiet": share <= QUIET_SHARE}


def peak_rss(fn: Callable[[], object]) -> int | None:
    """Peak resident bytes of this process during ``fn()`` (Linux: VmHWM after resetting it); None elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        fn()
        return None
    fn()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def conv_throughput(repeats: int = 3, bf16: bool = False) -> float:
    """GFLOP/s of a lone 64→64 3×3×3 convolution on 1×64×64×64×48 (the decoder's largest), median of ``repeats``."""
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 64, 64, 64, 48)
    flops = 2 * 64 * 64 * 27 * 64 * 64 * 48
    seconds = []
    with torch.no_grad(), autocast(x.device, bf16):
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            seconds.append(time.perf_counter() - start)
    return flops / median(seconds) / 1e9


def _official_module(src: str | Path, name: str) -> Any:
    """The module ``name`` (``models``, ``train``, ``utils``) of the authors' ``src`` folder."""
    folder = Path(src).resolve()
    if not (folder / "models.py").is_file():
        raise FileNotFoundError(f"--official_src must be the authors' src folder with models.py; got {folder}.")
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def official_network(src: str | Path, input_shape: tuple[int, ...]) -> nn.Module:
    """The authors' UM-ProtoShare from their ``src`` folder, in eval mode, as their ``main_Code.py`` builds it
    with its defaults: ``p_mode=5`` (the full model), cosine distances, 30 prototypes, the decoder frozen."""
    models = _official_module(src, "models")
    return models.UM_Proto_Share(in_size=tuple(input_shape), p_mode=5, f_dist="cos", freeze_unet=True).eval()


def official_stage1_step(src: str | Path, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One step of the authors' joint stage (their stage 1) as their ``main_Code.py`` sets it up and their
    ``train.py`` runs it: ``train_one_epoch_UM_ProtoShare("joint", ...)`` over a one-batch loader, with their
    defaults (focal loss weighted by BraTS 2020's 293 / 76 grades, AdamW at lr 1e-3 and weight decay 1e-2
    over every parameter, their warm-up cosine schedule, a disabled GradScaler, soft class assignment,
    ``get_loss_coefs``'s coefficients: classification, clustering, separation, map, online CAM, diversity).
    Their ``train.py`` and ``utils.py`` also import torchio, torchmetrics, scikit-learn, pandas, joblib,
    matplotlib and tqdm. Their progress bar and epoch line are discarded."""
    network = official_network(src, tuple(images.shape[1:])).to(images.device).train()
    train, utils = _official_module(src, "train"), _official_module(src, "utils")
    weights = torch.tensor([293 / 369, 76 / 369], device=images.device)
    loss = utils.FocalLoss(weight=weights)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2)
    scheduler = utils.warmup_cosine_scheduler(optimiser, num_epochs=100, use_warmup=True, warmup_ratio=0.2)
    scaler = torch.amp.GradScaler(enabled=False)
    loader = [([f"case{i}" for i in range(len(labels))], images, nn.functional.one_hot(labels, 2).float(), None)]

    def step() -> None:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            train.train_one_epoch_UM_ProtoShare(
                "joint", network, loader, optimiser, weights, loss, utils.get_loss_coefs(), True, scaler, scheduler,
                "soft",
            )

    return step


def _logits(output: Any) -> torch.Tensor:
    return (output[0] if isinstance(output, (tuple, list)) else output).float()


def _forward(network: nn.Module, x: torch.Tensor, bf16: bool = False) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, bf16):
            return _logits(network(x))

    return run


def _allocator_switches(
    allocators: dict[str, str], calls: dict[str, Callable[[], Any]]
) -> dict[str, Callable[[], None]]:
    """name → what runs, untimed, before each of that name's calls: set its allocator mode and, for a mode that
    keeps memory (``retain``), run the call once more whenever a ``system``-mode call has run since this
    name's own last call, so that the heap it keeps is as large as this call needs before the clock starts.
    A ``system``-mode call returns the kept heap to the kernel, and the next call to need it faults every
    page in anew: a full-size stage-1 step at batch 2 took 14.2–14.7 s with 0.25–0.37 million minor page
    faults (2.0–3.9 s of system time) right after the authors' step and a batch-1 step, against 13.1 s in
    steady ``retain``, where training runs. Regrowing by another name's call is not enough: the batch-1
    step leaves a heap too small for batch 2."""
    state: dict[str, Any] = {"mode": None, "system_calls": 0, "seen": {}}

    def prepare(name: str) -> None:
        mode = allocators[name]
        configure_allocator(mode)
        state["mode"] = mode
        if mode == "system":
            state["system_calls"] += 1
            return
        if state["seen"].get(name, 0) != state["system_calls"]:
            calls[name]()
        state["seen"][name] = state["system_calls"]

    return {name: functools.partial(prepare, name) for name in allocators}


def _each_switched(switches: dict[str, Callable[[], None]], calls: dict[str, Callable[[], Any]],
                   fn: Callable[[Callable[[], Any]], Any]) -> dict[str, Any]:
    """name → ``fn(call)``, each with its allocator mode set first (so ``system`` has returned kept memory)."""
    results = {}
    for name, call in calls.items():
        switches[name]()
        results[name] = fn(call)
    return results


def _restore_placement(parts: Any) -> None:
    """Put both networks back in the memory layout training places them in (``channels_last_3d``)."""
    layout = torch.channels_last_3d if parts.settings["channels_last_3d"] else torch.contiguous_format
    for network in (parts.network, parts.cnn):
        network.to(memory_format=layout)


def forward_section(parts: Any, repeats: int, official_src: str | None, seed: int) -> dict[str, Any]:
    """Eval forwards at batch 1, interleaved: fp32, folded fp32, bf16, the CNN and (given) the authors' model."""
    shape = (1, 4, *parts.input_size)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(parts.device)
    # the plain variants are contiguous whatever training's placement; inference.json places channels-last
    network = parts.network.eval().to(memory_format=torch.contiguous_format)
    configured = parts.settings["allocator"]
    channels_last = place(copy.deepcopy(network), parts.device, channels_last_3d=True)
    calls = {
        "fp32": _forward(network, x),
        "folded_fp32": _forward(fold_batch_norms(network), x),
        "bf16": _forward(network, x, bf16=True),
        "cnn_fp32": _forward(parts.cnn.eval().to(memory_format=torch.contiguous_format), x),
        "fp32_channels_last": _forward(channels_last, x),
        "bf16_channels_last": _forward(channels_last, x, True),
        # --precision bf16 on a case that falls under bf16_recheck_margin: bf16, then fp32 again
        "bf16_channels_last_rechecked": _forward(
            set_precision(copy.deepcopy(channels_last), "bf16", parts.device, recheck_margin=math.inf), x
        ),
    }
    allocators = dict.fromkeys(calls, configured)
    if configured != "system":
        calls["fp32_system_allocator"], allocators["fp32_system_allocator"] = calls["fp32"], "system"
    parameters = {"umprotoshare": sum(p.numel() for p in network.parameters())}
    if official_src is not None:
        official = official_network(official_src, shape[1:]).to(parts.device)
        parameters["official"] = sum(p.numel() for p in official.parameters())
        # as released (the C library's default allocator), and with this bundle's allocator setting
        calls |= {"official_fp32": _forward(official, x), "official_bf16": _forward(official, x, bf16=True)}
        allocators |= {"official_fp32": "system", "official_bf16": "system"}
        if configured != "system":
            calls["official_fp32_bundle_allocator"] = calls["official_fp32"]
            allocators["official_fp32_bundle_allocator"] = configured
    switches = _allocator_switches(allocators, calls)
    outputs = _each_switched(switches, calls, lambda call: call())  # untimed first calls (oneDNN set-up)
    with FlopCounterMode(display=False) as counter:
        calls["fp32"]()
    with OtherLoad() as load:
        runs = side_by_side(calls, repeats, parts.device, prepare=switches)
    memory = _each_switched(switches, calls, peak_rss)
    configure_allocator(configured)
    _restore_placement(parts)
    seconds = {name: runs.median(name) for name in calls}
    gflop = counter.get_total_flops() / 1e9
    fp32 = outputs["fp32"]
    section: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": {name: runs.median(name, "cpu") for name in calls},
        "peak_rss_mib": {name: None if m is None else round(m / 2**20) for name, m in memory.items()},
        "gflop": round(gflop, 1),
        "achieved_gflops": {
            name: round(gflop / seconds[name], 1)
            for name in seconds if not name.startswith(("cnn", "official")) and not name.endswith("_rechecked")
        },
        "conv_gflops_fp32": round(conv_throughput(), 1),
        "conv_gflops_bf16": round(conv_throughput(bf16=True), 1),
        "speedup_over_fp32": {name: round(seconds["fp32"] / s, 3) for name, s in seconds.items()},
        "folded_max_abs_logit_difference": float((outputs["folded_fp32"] - fp32).abs().max()),
        "bf16_max_probability_difference": float(
            (outputs["bf16"].softmax(1) - fp32.softmax(1)).abs().max()
        ),
        "channels_last_max_abs_logit_difference": float(
            (outputs["fp32_channels_last"] - fp32).abs().max()
        ),
        "parameters": parameters,
        "allocators": allocators,
        "runs": runs.as_dict(),
        **load.as_dict(),
    }
    if official_src is not None:
        section["speedup_over_official_fp32"] = {
            name: round(seconds["official_fp32"] / s, 3) for name, s in seconds.items()
        }
    return section


def stage1_section(
    parts: Any, repeats: int, batch_sizes: tuple[int, ...], seed: int, official_src: str | None = None
) -> dict[str, Any]:
    """One stage-1 step of the configured iteration (loss terms, backward, optimiser) per batch size, fp32 and
    bf16 autocast, interleaved; given ``official_src``, also the authors' own stage-1 step in fp32
    (:func:`official_stage1_step`) as released and with this bundle's allocator setting."""
    generator = torch.Generator().manual_seed(seed)
    engine = engine_at(parts.schedule.warmup_epochs + 1, parts.device)
    parts.network.set_trainable(parts.schedule.trainable_groups("stage1"))
    batches = {
        b: {"image": torch.randn(b, 4, *parts.input_size, generator=generator).to(parts.device),
            "label": torch.arange(b) % len(parts.class_names)}
        for b in batch_sizes
    }
    def step(batch: dict[str, Any], amp: bool) -> None:
        parts.iteration.amp, configured = amp, parts.iteration.amp
        try:
            parts.iteration(engine, batch)
        finally:
            parts.iteration.amp = configured

    configured = parts.settings["allocator"]
    variants = [("", False, configured), ("_bf16", True, configured)]
    if configured != "system":
        variants.append(("_system_allocator", False, "system"))
    calls, allocators = {}, {}
    for b, batch in batches.items():
        for suffix, amp, allocator in variants:
            name = f"batch{b}{suffix}"
            calls[name] = lambda batch=batch, amp=amp: step(batch, amp)
            allocators[name] = allocator
        if official_src is not None:
            calls[f"official_batch{b}"] = official_stage1_step(official_src, batch["image"], batch["label"])
            allocators[f"official_batch{b}"] = "system"
            if configured != "system":
                calls[f"official_batch{b}_bundle_allocator"] = calls[f"official_batch{b}"]
                allocators[f"official_batch{b}_bundle_allocator"] = configured
    switches = _allocator_switches(allocators, calls)
    _each_switched(switches, calls, lambda call: call())  # untimed first calls
    with OtherLoad() as load:
        runs = side_by_side(calls, repeats, parts.device, prepare=switches)
    memory = _each_switched(switches, calls, peak_rss)
    configure_allocator(configured)
    seconds = {name: runs.median(name) for name in calls}
    official = {
        name: round(seconds[f"official_batch{b}"] / s, 3)
        for b in batches for name, s in seconds.items()
        if f"official_batch{b}" in seconds and (name == f"batch{b}" or name.startswith(f"batch{b}_"))
    }
    return {
        "allocators": allocators,
        "seconds": seconds,
        **({"speedup_over_official_fp32": official} if official else {}),
        "cpu_seconds": {name: runs.median(name, "cpu") for name in calls},
        "peak_rss_mib": {name: None if m is None else round(m / 2**20) for name, m in memory.items()},
        "runs": runs.as_dict(),
        **load.as_dict(),
    }


IDS_VARIANTS = {
    "each_distinct_copy_once": (True, 3, None, True),
    "every_copy": (False, 3, None, True),
    "before_0.11": (False, 17, "system", False),
}
"""IDS variant → (reuse identical copies, copies per forward, allocator (None: the config's), channels-last):
this version as ``configs/evaluate.json`` runs it on a CPU; the same running all 51 copies (0.11.0); the
bundle before 0.11.0 (batch 17, the C library's allocator, contiguous)."""


def ids_section(parts: Any, cases: int, workdir: str | Path, seed: int) -> dict[str, Any]:
    """IDS per case as the evaluation runs it, on ``cases`` synthetic phantoms of the config's ROI size with the
    class map the evaluation computes (brain only), for each of :data:`IDS_VARIANTS`: one timed call per case
    and variant (each takes minutes at full size), and whether their deletion curves are equal."""
    plain, _ = synthetic_cohort(Path(workdir) / "ids_phantoms", cases, parts, Path(workdir) / "ids_cache", seed=seed)
    network, configured = parts.network.eval(), parts.settings["allocator"]
    rows = []
    with OtherLoad() as load:
        for index in range(len(plain)):
            item = plain[index]
            image, label = plain_tensor(item["image"]).float().to(parts.device), int(item["label"])
            with torch.no_grad():
                attribution = class_map(network, image[None], [label], brain_only=True)[0]
            row: dict[str, Any] = {
                "brain_share": round(float(foreground_mask(image[None]).float().mean()), 3), "seconds": {}, "copies": {}
            }
            curves = []
            for name, (reuse, batch, allocator, channels_last) in IDS_VARIANTS.items():
                configure_allocator(allocator or configured)
                network.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
                sizes: list[int] = []

                def predict(x: torch.Tensor) -> torch.Tensor:
                    sizes.append(len(x))
                    return network(x)

                start = time.perf_counter()
                curves.append(deletion_curve(predict, [image], [attribution], [label], batch, 50, reuse))
                row["seconds"][name], row["copies"][name] = round(time.perf_counter() - start, 2), sum(sizes)
            row["curves_equal"] = all(torch.equal(curves[0], curve) for curve in curves[1:])
            rows.append(row)
    configure_allocator(configured)
    _restore_placement(parts)
    mean = {name: sum(row["seconds"][name] for row in rows) / len(rows) for name in IDS_VARIANTS}
    return {
        "cases": rows,
        "mean_seconds_per_case": {name: round(value, 2) for name, value in mean.items()},
        "ratio_over_before_0.11": {name: round(value / mean["before_0.11"], 3) for name, value in mean.items()},
        "curves_equal": all(row["curves_equal"] for row in rows),
        **load.as_dict(),
    }


def _against(current: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Today's medians over the reference's, for every section and variant both have (< 1: faster today)."""
    ratios = {}
    for section in ("forward", "stage1_step"):
        for name, seconds in current.get(section, {}).get("seconds", {}).items():
            before = reference.get(section, {}).get("seconds", {}).get(name)
            if before:
                ratios[f"{section}.{name}"] = round(seconds / before, 3)
    return ratios


def report(
    configuration: str = "full",
    repeats: int = 3,
    official_src: str | None = None,
    reference: str | None = None,
    batch_sizes: tuple[int, ...] = (1, 2),
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    ids_cases: int = 0,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Build the configuration's parts and run the sections; see the module docstring.

    ``overrides`` are config ids → values set on the training config (e.g. ``{"decoder_kind": "lite"}``).
    ``ids_cases`` > 0 adds the IDS section on that many phantoms written under ``workdir`` (a temporary
    folder if None).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    start = time.perf_counter()
    torch.manual_seed(seed)
    parts = build_parts(load_config(configuration, "cpu", overrides))
    model, flags = cpu_info()
    logger.info("forward: %d rounds", repeats)
    forward = forward_section(parts, repeats, official_src, seed)
    logger.info("stage-1 step: %d rounds at batch %s", repeats, list(batch_sizes))
    stage1 = stage1_section(parts, repeats, tuple(int(b) for b in batch_sizes), seed, official_src)
    ids = None
    if ids_cases > 0:
        logger.info("IDS: %d case(s), one call per variant", ids_cases)
        with tempfile.TemporaryDirectory() as temporary:
            ids = ids_section(parts, ids_cases, workdir or temporary, seed)
    result: dict[str, Any] = {
        "settings": {
            "configuration": configuration, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": model, "cpu_flags": flags, "repeats": repeats,
            "input_shape": [4, *parts.input_size], "official_src": official_src, "overrides": overrides or {},
        },
        "forward": forward,
        "stage1_step": stage1,
        **({"ids": ids} if ids is not None else {}),
    }
    if reference is not None:
        result["reference"] = {"file": reference, "ratio": _against(result, json.loads(Path(reference).read_text()))}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(tiny: bool = False, out: str | None = None, save_reference: str | None = None, **options: Any) -> None:
    """Print the report as JSON (and write it to ``out``); ``save_reference`` also keeps its medians for later runs."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = report("tiny" if tiny else "full", **options)
    for name in ("forward", "stage1_step", "ids"):
        if name in result and not result[name]["quiet"]:
            logger.warning("%s: other processes used %.0f%% of a core; do not report its ratios",
                           name, 100 * result[name]["other_share_of_a_core"])
    if save_reference is not None:
        Path(save_reference).write_text(json.dumps(
            {k: {"seconds": result[k]["seconds"]} for k in ("forward", "stage1_step")} | {"settings": result["settings"]},
            indent=2) + "\n")
    emit(result, out)


main.__signature__ = command_signature(main, report)  # --help lists report's flags too

if __name__ == "__main__":
    fire.Fire(main)
