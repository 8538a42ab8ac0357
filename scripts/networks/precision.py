"""Precision: bf16 autocast for the networks' eval-mode forward and explanation, and for training.

bf16 autocast runs convolutions and matrix products in bfloat16 (AMX units on recent Intel CPUs, tensor
cores on GPUs) and keeps reductions in float32; what a network returns is float32 either way. A
network's ``precision`` is for inference only; training's bf16 switch is the config's ``amp``, which
uses the same :func:`autocast`. :func:`cpu_info` reads the CPU flags that decide ``auto`` (and that
the run fingerprints record).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from monai.utils import look_up_option
from torch import Tensor, nn

__all__ = [
    "BF16_RECHECK_MARGIN", "CPU_FLAGS", "PRECISIONS", "as_float32", "autocast", "checked_recheck_margin", "cpu_info",
    "rerun_rows", "resolve_precision", "set_precision",
]

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
"""/proc/cpuinfo flags oneDNN and MKL choose kernels by (oneDNN's ISA levels AVX2 ... AVX512_CORE_AMX)."""

BF16_RECHECK_MARGIN = 2.0
"""Default logit margin below which a case's bf16 forward is run again in fp32 (:func:`set_precision`)."""

PRECISIONS = ("fp32", "bf16", "auto")
"""``fp32``: full precision (the default); ``bf16``: bf16 autocast; ``auto``: bf16 where the hardware has
fast bf16 (a CUDA device that supports it, a CPU with ``amx_bf16``), fp32 elsewhere."""

NetworkT = TypeVar("NetworkT", bound=nn.Module)


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and which of :data:`CPU_FLAGS` it has (unknown off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", []
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return (model.group(1).strip() if model else "unknown"), [f for f in CPU_FLAGS if f in present]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA or the CPU when ``enabled``; a no-op otherwise."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: str | torch.device, cpu_has_amx: bool | None = None) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``.

    Args:
        precision: ``fp32``, ``bf16`` or ``auto``.
        device: where the network runs.
        cpu_has_amx: whether the CPU has AMX bf16 units; None reads ``/proc/cpuinfo``.
    """
    precision = look_up_option(precision, PRECISIONS)
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        amx = "amx_bf16" in cpu_info()[1] if cpu_has_amx is None else cpu_has_amx
        return "bf16" if amx else "fp32"
    return "fp32"


def set_precision(
    network: NetworkT,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    recheck_margin: float = BF16_RECHECK_MARGIN,
) -> NetworkT:
    """Set the eval-mode precision of ``network`` (resolving ``auto`` for ``device``, default where it lives); returns it.

    Args:
        recheck_margin: at bf16, a case whose two largest logits lie closer than this is run again in fp32
            (its outputs are then fp32's); 0 turns the check off, ``inf`` runs every case in fp32 too.
    """
    margin = checked_recheck_margin(recheck_margin)
    if device is None:
        device = next(network.parameters()).device
    network.precision = resolve_precision(precision, device)
    network.bf16_recheck_margin = margin
    return network


def checked_recheck_margin(margin: float) -> float:
    """``margin`` as a float, refused when negative (0: bf16 alone, ``inf``: every case again in fp32)."""
    if margin < 0:
        raise ValueError(f"bf16 recheck margin must be >= 0, got {margin}.")
    return float(margin)


def rerun_rows(first: Any, rerun: Any, rows: Tensor, batch: int) -> Any:
    """``first`` (a network's output for a batch of ``batch`` cases: a tensor or nested tuples, lists and named
    tuples of them) with the cases ``rows`` taken from ``rerun``, the same output for ``x[rows]`` only.

    A tensor whose first dimension is the batch in ``first`` and ``len(rows)`` in ``rerun`` is per case and
    gets those rows replaced; one of equal shape on both sides (prototypes, weights: not per case) is taken
    from ``rerun``; anything else (ints, strings) is kept.
    """
    if isinstance(first, Tensor):
        if first.shape == rerun.shape:
            return rerun
        if first.shape[0] == batch and rerun.shape[0] == len(rows) and first.shape[1:] == rerun.shape[1:]:
            spliced = first.clone()
            spliced[rows] = rerun.to(first.dtype)
            return spliced
        raise ValueError(f"cannot replace rows of a {tuple(first.shape)} output by a {tuple(rerun.shape)} one.")
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(rerun_rows(a, b, rows, batch) for a, b in zip(first, rerun)))
    if isinstance(first, (list, tuple)):
        return type(first)(rerun_rows(a, b, rows, batch) for a, b in zip(first, rerun))
    return first


def as_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor in it (nested tuples, lists, named tuples) made float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(as_float32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value
