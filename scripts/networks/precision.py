"""Inference precision: the networks' eval-mode forward and explanation in fp32 or under bf16 autocast.

bf16 autocast runs convolutions and matrix products in bfloat16 (AMX units on recent Intel CPUs, tensor
cores on GPUs) and keeps reductions in float32; what a network returns is float32 either way. Training
never uses this setting (its bf16 switch is the training config's ``amp``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, TypeVar

import torch
from monai.utils import look_up_option
from torch import Tensor, nn

__all__ = ["PRECISIONS", "autocast_for", "as_float32", "resolve_precision", "set_precision"]

PRECISIONS = ("fp32", "bf16", "auto")
"""``fp32``: full precision (the default); ``bf16``: bf16 autocast; ``auto``: bf16 where the hardware has
fast bf16 (a CUDA device that supports it, a CPU with ``amx_bf16``), fp32 elsewhere."""

NetworkT = TypeVar("NetworkT", bound=nn.Module)


def _cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


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
        return "bf16" if (_cpu_has_amx() if cpu_has_amx is None else cpu_has_amx) else "fp32"
    return "fp32"


def set_precision(network: NetworkT, precision: str = "fp32", device: str | torch.device | None = None) -> NetworkT:
    """Set the eval-mode precision of ``network`` (resolving ``auto`` for ``device``, default where it lives); returns it."""
    if device is None:
        device = next(network.parameters()).device
    network.precision = resolve_precision(precision, device)
    return network


def autocast_for(network: nn.Module, x: Tensor) -> contextlib.AbstractContextManager:
    """bf16 autocast for an eval-mode ``network`` set to ``bf16``; a no-op in training or at fp32."""
    if getattr(network, "precision", "fp32") == "bf16" and not network.training:
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def as_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor in it (nested tuples, lists, named tuples) made float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(as_float32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value
