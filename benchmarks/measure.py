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

import inspect
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.utils import look_up_option
from torch.profiler import ProfilerActivity, profile

__all__ = ["MIB", "Runs", "command_signature", "emit", "median", "peak_memory", "seconds", "side_by_side", "synchronize", "timed"]

MIB = 2**20
"""Bytes per MiB."""


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, the device's queue drained before and after."""
    return timed(fn, device)[0]


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds) of ``fn()``, the device's queue drained around it.

    CPU seconds (all threads of this process) do not grow while other processes hold the cores, so
    their ratios stay meaningful on a shared machine; on CUDA they count the host's work only.
    """
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence of numbers."""
    if not values:
        raise ValueError("median of no values: run at least one repeat.")
    return float(statistics.median(values))


@dataclass
class Runs:
    """Seconds per call name and round: wall clock and this process's CPU time."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: tuple[float, float]) -> None:
        """Record one (wall, cpu) measurement of ``name``."""
        self.wall.setdefault(name, []).append(seconds[0])
        self.cpu.setdefault(name, []).append(seconds[1])

    def median(self, name: str, clock: str = "wall") -> float:
        """Median seconds of ``name`` on ``clock`` ("wall" or "cpu")."""
        return median(getattr(self, look_up_option(clock, ("wall", "cpu")))[name])

    def ratio(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """Median of ``numerator`` over median of ``denominator`` on ``clock``."""
        below = self.median(denominator, clock)
        return self.median(numerator, clock) / below if below > 0 else math.inf

    def as_dict(self, names: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
        """JSON-ready ``{"wall": {name: [...]}, "cpu": {...}}`` for ``names`` (default all)."""
        names = list(self.wall) if names is None else list(names)
        return {"wall": {n: self.wall[n] for n in names}, "cpu": {n: self.cpu[n] for n in names}}


def side_by_side(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    prepare: Mapping[str, Callable[[], object]] | None = None,
) -> Runs:
    """Seconds of each call per repeat, interleaved (A, B, ... then ..., B, A) so drifts hit all alike.

    Args:
        calls: name → call to time; every call runs once per repeat.
        repeats: number of rounds, at least 1.
        device: where the calls run (for synchronisation).
        prepare: name → untimed call run just before each timed call of that name (a process setting, say).

    Returns:
        Wall and CPU seconds per name, ``repeats`` each, in round order.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    names = list(calls)
    runs = Runs()
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            if prepare is not None and name in prepare:
                prepare[name]()
            runs.add(name, timed(calls[name], device))
    return runs


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


def emit(report: Mapping[str, Any], out: str | None = None) -> None:
    """Print ``report`` as indented JSON on stdout and, when ``out`` is given, write the same text there."""
    text = json.dumps(report, indent=2)
    if out is not None:
        Path(out).write_text(text + "\n")
    print(text)


def command_signature(main: Callable[..., Any], forwarded: Callable[..., Any], drop: Sequence[str] = ("configuration",)) -> inspect.Signature:
    """What ``fire`` should read for ``main(own..., **options)`` that hands ``options`` to ``forwarded``.

    ``main``'s own parameters, then ``forwarded``'s less ``drop``, all keyword-only: ``--help`` then lists
    every flag with its default, and fire passes each as a keyword (so ``--help`` is never an option).
    """
    own = [p for p in inspect.signature(main).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    more = [p for name, p in inspect.signature(forwarded).parameters.items() if name not in drop]
    return inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own + more])
