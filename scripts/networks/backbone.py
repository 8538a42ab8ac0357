"""Backbone shared by UM-ProtoShare and its CNN: encoder taps, decoder, fusion → F_s (Section 2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from monai.utils import look_up_option
from torch import Tensor, nn

from .decoder import Decoder
from .encoder import ResNetEncoder
from .fusion import FUSION_KINDS, GatedFusion, build_fusion

__all__ = ["Backbone", "check_scales"]


def check_scales(scales: Sequence[int]) -> list[int]:
    """Scales as a sorted list of distinct values from {1, 2, 3}; ValueError if empty or out of range."""
    checked = sorted({int(s) for s in scales})
    if not checked or any(s not in (1, 2, 3) for s in checked) or len(checked) != len(scales):
        raise ValueError(f"scales must be distinct values from (1, 2, 3), at least one, got {tuple(scales)}.")
    return checked


class Backbone(nn.Module):
    """Encoder + decoder + fusion giving the fused features F_s of the requested scales.

    With ``fusion="none"`` no decoder is built and F_s = f_s. Otherwise the decoder runs down to the
    finest requested scale and a fusion block is built for each requested scale only.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels.
        encoder_layers: bottlenecks in layer1 and layer2 (ResNet-152: (3, 8)).
        encoder_width: encoder stem width (64 → C_s = 64, 256, 512).
        scales: scales s ∈ {1, 2, 3} whose F_s is returned, ascending.
        fusion: one of :data:`~scripts.networks.fusion.FUSION_KINDS`.
        pretrained_path: local torchvision ResNet state dict to inflate into the encoder, or None.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        encoder_layers: Sequence[int] = (3, 8),
        encoder_width: int = 64,
        scales: Sequence[int] = (1, 2, 3),
        fusion: str = "gated",
        pretrained_path: str | PathLike | None = None,
    ) -> None:
        super().__init__()
        self.scales = check_scales(scales)
        self.fusion_kind = look_up_option(fusion, FUSION_KINDS)
        self.encoder = ResNetEncoder(spatial_dims, in_channels, encoder_layers, encoder_width, pretrained_path)
        channels = self.encoder.channels
        self.decoder: Decoder | None = None
        self.fusion = nn.ModuleDict()
        if self.fusion_kind != "none":
            self.decoder = Decoder(spatial_dims, channels, finest_scale=self.scales[0])
            for s in self.scales:
                self.fusion[f"scale{s}"] = build_fusion(self.fusion_kind, spatial_dims, channels[s - 1])

    def encode_decode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Encoder taps [f1, f2, f3] and decoder features [f̃3, f̃2, …] (coarse to fine; empty without decoder)."""
        taps = self.encoder(x)
        decoded: list[Tensor] = []
        if self.decoder is not None:
            decoded = self.decoder(taps)
        return taps, decoded

    def fuse(self, taps: list[Tensor], decoded: list[Tensor]) -> list[Tensor]:
        """Fused features F_s, (B, C_s, H_s, W_s, D_s), one per entry of ``scales``."""
        if self.decoder is None:
            return [taps[s - 1] for s in self.scales]
        fused: list[Tensor] = []
        for i, block in enumerate(self.fusion.values()):
            s = self.scales[i]
            fused.append(block(taps[s - 1], decoded[3 - s]))
        return fused

    def gates(self, taps: list[Tensor], decoded: list[Tensor]) -> list[Tensor | None]:
        """Gates α_s (B, C_s, 1, 1, 1) per entry of ``scales`` for gated fusion, None for other kinds."""
        gates: list[Tensor | None] = [None] * len(self.scales)
        for i, (s, block) in enumerate(zip(self.scales, self.fusion.values())):
            if isinstance(block, GatedFusion):
                gates[i] = block.gate(taps[s - 1], decoded[3 - s])
        return gates

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C_in, H, W, D) → [F_s for s in scales]."""
        taps, decoded = self.encode_decode(x)
        return self.fuse(taps, decoded)
