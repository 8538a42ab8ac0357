"""Timing and peak-memory helpers: wall-clock seconds of a call, medians, side-by-side repeats.

Peak memory is what torch allocates during a call above what was allocated when it started (weights
and inputs already in memory are not counted), so CPU and CUDA figures mean the same thing:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes
  allocated before the call.
- CPU: torch's CPU allocations are invisible to ``tracemalloc`` and the process's resident size
  mixes in the allocator's cache and other threads, so the profiler's memory events
  (``profile_memory=True``, one event per allocation and per free) are replayed in time order and
  the running total's maximum is taken. Memory that oneDNN allocates outside torch's allocator
  (scratch pads) is not included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["MIB", "median", "peak_memory", "seconds", "side_by_side", "synchronize"]

MIB = 2**20
"""Bytes per MiB."""


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence of numbers."""
    if not values:
        raise ValueError("median of no values: run at least one repeat.")
    return float(statistics.median(values))


def side_by_side(
    calls: Mapping[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each call per repeat, interleaved (A, B, ... then ..., B, A) so drifts hit all alike.

    Args:
        calls: name → call to time; every call runs once per repeat.
        repeats: number of rounds, at least 1.
        device: where the calls run (for synchronisation).

    Returns:
        name → ``repeats`` seconds, in round order.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            times[name].append(seconds(calls[name], device))
    return times


def _cpu_peak(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes torch allocates on ``device`` during ``fn()`` above the bytes allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on 'cpu' or 'cuda' devices, got {device}.")
    return _cpu_peak(fn)
