"""GPU throughput of the full-size configuration: training and inference volumes/s and peak memory, as JSON.

Command (from the bundle root, on a machine with CUDA)::

    python -m benchmarks.gpu [--batch 32] [--amp True] [--channels_last_3d True] [--cudnn_benchmark True]
                             [--compile False] [--steps 5] [--warmup 2] [--budget_s 240] [--out gpu.json]

Builds ``configs/train.json`` (ResNet-152 encoder, 4×128×128×96, 30 prototypes) with the four GPU
switches set as given, then times, on random volumes already on the GPU (data loading excluded):
UM-ProtoShare and CNN inference (eval, no gradient, under the ``amp`` autocast as the evaluators run),
and one stage-1 and one CNN warm-up training iteration through the configured
:class:`~scripts.engine.StagedIteration`. Each measurement runs ``warmup`` untimed calls, then up to
``steps`` timed ones while the ``budget_s`` time budget lasts, so the whole run stays under 5 minutes
(with ``--compile`` the first calls also compile). Peak memory is ``torch.cuda.max_memory_allocated``
during the timed calls above what was allocated before them. A measurement that runs out of memory is
reported as such and the others go on (on an H200 a stage-1 step at batch 32 peaked at 72 GiB in fp32
and 44 GiB with bf16 and channels-last; see docs/README.md). Refuses to run without CUDA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import fire
import torch

from scripts.engine import compiled, configure_backends
from scripts.networks.precision import autocast

from .bundle import Parts, build_parts, engine_at, load_config
from .measure import MIB, emit, median, peak_memory, seconds

__all__ = ["NO_CUDA", "main", "throughput_report"]

NO_CUDA = (
    "benchmarks.gpu measures GPU throughput and needs a CUDA device; torch.cuda.is_available() is False here. "
    "For the CPU report run: python -m benchmarks.run"
)


def _measure(
    call: Callable[[], object], device: torch.device, batch: int, steps: int, warmup: int, deadline: float
) -> dict[str, Any]:
    """Volumes/s, median seconds per batch and peak memory of ``call`` (one batch per call)."""
    try:
        for _ in range(warmup):
            seconds(call, device)
        times: list[float] = []

        def timed() -> None:
            while len(times) < steps and (not times or time.perf_counter() < deadline):
                times.append(seconds(call, device))

        peak = peak_memory(timed, device)
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return {"error": f"out of memory at batch {batch}: {str(error).splitlines()[0]}"}
    return {
        "volumes_per_s": batch * len(times) / sum(times),
        "s_per_batch": median(times),
        "peak_mib": peak / MIB,
        "timed_batches": len(times),
    }


def _inference(model: torch.nn.Module, images: torch.Tensor, amp: bool) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad(), autocast(images.device, amp):
            return model(images)

    return run


def throughput_report(
    configuration: str = "full",
    device: str = "cuda",
    batch: int = 32,
    amp: bool = True,
    channels_last_3d: bool = True,
    cudnn_benchmark: bool = True,
    compile: bool = False,
    steps: int = 5,
    warmup: int = 2,
    budget_s: float = 240.0,
) -> dict[str, Any]:
    """The report of this module on ``device`` (any device: the tests run it on the CPU, tiny).

    Args:
        configuration: "full" (``train.json``) or "tiny" (with ``quickstart.json``).
        device: where everything runs.
        batch: volumes per batch (the paper trains at 32).
        amp: bf16 autocast (the config's ``amp``; effective on CUDA only).
        channels_last_3d: channels-last weights and inputs.
        cudnn_benchmark: cuDNN autotuning.
        compile: ``torch.compile`` the training forwards and the inference networks.
        steps: timed batches per measurement at most.
        warmup: untimed batches per measurement first.
        budget_s: seconds after which measurements stop timing new batches (each keeps at least one).
    """
    start = time.perf_counter()
    deadline = start + budget_s
    configure_backends(cudnn_benchmark=cudnn_benchmark, deterministic=False)
    overrides = {"batch_size": batch, "amp": amp, "channels_last_3d": channels_last_3d, "compile": compile}
    parts: Parts = build_parts(load_config(configuration, device, overrides))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 4, *parts.input_size, generator=generator).to(parts.device)
    labels = torch.arange(batch) % len(parts.class_names)
    training_batch = {"image": images, "label": labels}
    use_amp = parts.iteration.amp
    schedule, iteration = parts.schedule, parts.iteration
    inference_inputs = images.contiguous(memory_format=torch.channels_last_3d) if channels_last_3d else images

    def train(stage: str) -> Callable[[], object]:
        target, groups, epoch = (
            (parts.cnn, "warmup", 1) if stage == "cnn" else (parts.network, "stage1", schedule.warmup_epochs + 1)
        )
        target.set_trainable(schedule.trainable_groups(groups))
        engine = engine_at(epoch, parts.device)
        return lambda: iteration(engine, training_batch)

    results: dict[str, Any] = {"inference": {}, "training": {}}
    for name, model in (("umprotoshare", parts.network), ("cnn", parts.cnn)):
        call = _inference(compiled(model.eval(), compile), inference_inputs, use_amp)
        results["inference"][name] = _measure(call, parts.device, batch, steps, warmup, deadline)
    for name in ("stage1", "cnn"):
        results["training"][name] = _measure(train(name), parts.device, batch, steps, warmup, deadline)
    name = torch.cuda.get_device_name(parts.device) if parts.device.type == "cuda" else str(parts.device)
    settings = {
        "configuration": configuration,
        "device": name,
        "torch": torch.__version__,
        "batch": batch,
        "amp": use_amp,
        "channels_last_3d": channels_last_3d,
        "cudnn_benchmark": cudnn_benchmark,
        "compile": compile,
        "input_shape": [4, *parts.input_size],
    }
    return {"settings": settings, **results, "seconds": time.perf_counter() - start}


def main(out: str | None = None, **options: Any) -> None:
    """Print the GPU report as JSON (``options``: :func:`throughput_report`'s arguments after ``device``,
    e.g. ``--batch 16 --amp False``), and write it to ``out`` if given; exit with a message without CUDA."""
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    emit(throughput_report("full", "cuda", **options), out)


if __name__ == "__main__":
    fire.Fire(main)
