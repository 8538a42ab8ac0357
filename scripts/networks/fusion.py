"""Per-scale fusion of encoder and decoder features: gated (Eq. 11), concatenation (ablation C), none."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from monai.utils import look_up_option
from torch import Tensor, nn

__all__ = ["FUSION_KINDS", "ConcatFusion", "GatedFusion", "build_fusion", "gated_fusion"]

FUSION_KINDS = ("gated", "concat", "none")
"""``gated``: Eq. 11 (UM-ProtoShare, ablations D, E); ``concat``: ablation C; ``none``: F_s = f_s, no decoder (A, B)."""


def gated_fusion(encoder_features: Tensor, decoder_features: Tensor, gate: Tensor) -> Tensor:
    """Channel-wise gated fusion F_s = α_s ⊙ f_s + (1 − α_s) ⊙ f̃_s (Eq. 11).

    Args:
        encoder_features: f_s, (B, C_s, H_s, W_s, D_s).
        decoder_features: f̃_s, (B, C_s, H_s, W_s, D_s).
        gate: α_s, (B, C_s, 1, 1, 1), values in (0, 1).

    Returns:
        F_s, (B, C_s, H_s, W_s, D_s).
    """
    return gate * encoder_features + (1.0 - gate) * decoder_features


class GatedFusion(nn.Module):
    """Gate α = σ(Conv1³(ReLU(Conv1³(GAP([f, f̃]))))), 2C → max(C // 8, 4) → C, then Eq. 11.

    GAP([f, f̃]) is computed as [GAP(f), GAP(f̃)] (the same numbers), so the full-size concatenation is
    never allocated.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        hidden = max(channels // 8, 4)
        self.gate_net = nn.Sequential(conv(2 * channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1))

    def gate(self, encoder_features: Tensor, decoder_features: Tensor) -> Tensor:
        """Per-channel gate α_s, (B, C_s, 1, 1, 1) in (0, 1), from f_s and f̃_s (B, C_s, *S)."""
        spatial = list(range(2, encoder_features.ndim))
        pooled = [encoder_features.mean(dim=spatial, keepdim=True), decoder_features.mean(dim=spatial, keepdim=True)]
        return torch.sigmoid(self.gate_net(torch.cat(pooled, dim=1)))

    def forward(self, encoder_features: Tensor, decoder_features: Tensor) -> Tensor:
        """F_s (B, C_s, *S) from f_s and f̃_s (B, C_s, *S)."""
        return gated_fusion(encoder_features, decoder_features, self.gate(encoder_features, decoder_features))


class ConcatFusion(nn.Module):
    """Conv1³(2C → C, no bias) on the channel concatenation [f, f̃] (ablation C)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.project = Conv[Conv.CONV, spatial_dims](2 * channels, channels, 1, bias=False)

    def forward(self, encoder_features: Tensor, decoder_features: Tensor) -> Tensor:
        """F_s (B, C_s, *S) from f_s and f̃_s (B, C_s, *S)."""
        return self.project(torch.cat([encoder_features, decoder_features], dim=1))


def build_fusion(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """Fusion block of ``kind`` ("gated" or "concat") for ``channels``; "none" builds no block."""
    builders = {"gated": GatedFusion, "concat": ConcatFusion}
    return look_up_option(kind, builders)(spatial_dims, channels)
