"""Quadruplet attention inside the encoder's bottlenecks (MAProtoNet, SPEC §8)."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import Tensor, nn

from .layers import check_spatial_dims

__all__ = ["AxisGate", "QuadrupletAttention", "max_mean_pool"]


def max_mean_pool(x: Tensor) -> Tensor:
    """Max and mean along dim 1, concatenated: (B, N, *S) → (B, 2, *S)."""
    return torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)


class AxisGate(nn.Module):
    """Gate along dim 1: max+mean pool → Conv(2→1, k7, p3, no bias) → BN → sigmoid, multiplied back.

    Args:
        spatial_dims: 3 (or 2).
        zero_init: start the BN weight at 0 (the gate is then σ(0) = 0.5 everywhere).
    """

    def __init__(self, spatial_dims: int, zero_init: bool = False) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, 7, padding=3, bias=False)
        self.norm = Norm[Norm.BATCH, spatial_dims](1)
        if zero_init:
            nn.init.zeros_(self.norm.weight)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, *S) → same shape, each position scaled by its gate in (0, 1)."""
        return x * torch.sigmoid(self.norm(self.conv(max_mean_pool(x))))


class QuadrupletAttention(nn.Module):
    """Mean of four gated copies of x, each gate pooling one axis of (C, H, W, D) (MAProtoNet).

    Branch ``i`` moves axis ``i + 1`` of (B, C, H, W, D) to dim 1, pools it (max and mean), and gates
    the tensor along the other three axes. Branch 0 pools the channels (a spatial gate); its BN
    weight starts at 0. With ``spatial_dims`` = 2 there are three branches (C, H, W).

    Args:
        spatial_dims: 3 (or 2).
    """

    def __init__(self, spatial_dims: int = 3) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.gates = nn.ModuleList(
            [AxisGate(spatial_dims, zero_init=axis == 0) for axis in range(spatial_dims + 1)]
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, *S) → (B, C, *S)."""
        gated: list[Tensor] = []
        for axis, gate in enumerate(self.gates):
            moved = x.transpose(1, axis + 1)
            gated.append(gate(moved).transpose(1, axis + 1))
        return torch.stack(gated).mean(dim=0)
