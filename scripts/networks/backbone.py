"""Backbone shared by UM-ProtoShare and its CNN: encoder taps, decoder, fusion → F_s (Section 2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Pool
from monai.utils import look_up_option
from torch import Tensor, nn

from .decoder import Decoder
from .encoder import ResNetEncoder
from .fusion import FUSION_KINDS, GatedFusion, build_fusion
from .layers import interpolation_mode

__all__ = ["FEATURE_FUSION_KINDS", "Backbone", "StemPoolConcat", "check_scales"]

FEATURE_FUSION_KINDS = ("none", "stem_pool_concat")
"""``none``: F_s from :data:`~scripts.networks.fusion.FUSION_KINDS` only; ``stem_pool_concat``: MAProtoNet's
multi-scale fusion, F_2 = [avg-pool(f_1), max-pool(f_1), f_2] (see :class:`StemPoolConcat`)."""


def check_scales(scales: Sequence[int]) -> list[int]:
    """Scales as a sorted list of distinct values from {1, 2, 3}; ValueError if empty or out of range."""
    checked = sorted({int(s) for s in scales})
    if not checked or any(s not in (1, 2, 3) for s in checked) or len(checked) != len(scales):
        raise ValueError(f"scales must be distinct values from (1, 2, 3), at least one, got {tuple(scales)}.")
    return checked


class StemPoolConcat(nn.Module):
    """MAProtoNet's fusion: [AvgPool3³/s2(f_1), MaxPool3³/s2(f_1), f_2] along channels (2·C_1 + C_2).

    Pools use padding 1 (PyTorch defaults otherwise: the average counts the zero padding), so the
    pooled stem lands on the grid of f_2. When a resize of both inputs (the multi-scale mapping loss)
    leaves them one voxel apart by rounding, the pooled stem is resized linearly to the grid of f_2.
    The layer1 features are the last C_2 channels.
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.avg = Pool[Pool.AVG, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.max = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.mode = interpolation_mode(spatial_dims)

    def forward(self, stem: Tensor, layer1: Tensor) -> Tensor:
        """f_1 (B, C_1, *S_1) and f_2 (B, C_2, *S_2) → (B, 2·C_1 + C_2, *S_2)."""
        pooled = torch.cat([self.avg(stem), self.max(stem)], dim=1)
        if pooled.shape[2:] != layer1.shape[2:]:
            pooled = F.interpolate(pooled, size=layer1.shape[2:], mode=self.mode, align_corners=True)
        return torch.cat([pooled, layer1], dim=1)


class Backbone(nn.Module):
    """Encoder + decoder + fusion giving the fused features F_s of the requested scales.

    With ``fusion="none"`` no decoder is built and F_s = f_s. Otherwise the decoder runs down to the
    finest requested scale and a fusion block is built for each requested scale only. With
    ``feature_fusion="stem_pool_concat"`` (MAProtoNet: scales (2,), no decoder) F_2 is
    :class:`StemPoolConcat` of f_1 and f_2. ``out_channels`` gives the channels of each F_s.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels.
        encoder_layers: bottlenecks per kept encoder stage (ResNet-152: (3, 8); (3,) without layer2).
        encoder_width: encoder stem width (64 → C_s = 64, 256, 512).
        scales: scales s ∈ {1, 2, 3} whose F_s is returned, ascending.
        fusion: one of :data:`~scripts.networks.fusion.FUSION_KINDS`.
        pretrained_path: local torchvision ResNet state dict to inflate into the encoder, or None.
        encoder_last_layer: "layer2" or "layer1" (no scale 3, no decoder).
        encoder_attention: "none" or "quadruplet" (every bottleneck).
        feature_fusion: one of :data:`FEATURE_FUSION_KINDS`.
        decoder_kind: one of :data:`~scripts.networks.decoder.DECODER_KINDS` (``paper``: upsample, then convolve).
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
        encoder_last_layer: str = "layer2",
        encoder_attention: str = "none",
        feature_fusion: str = "none",
        decoder_kind: str = "paper",
    ) -> None:
        super().__init__()
        self.scales = check_scales(scales)
        self.fusion_kind = look_up_option(fusion, FUSION_KINDS)
        self.feature_fusion = look_up_option(feature_fusion, FEATURE_FUSION_KINDS)
        self.encoder = ResNetEncoder(
            spatial_dims,
            in_channels,
            encoder_layers,
            encoder_width,
            pretrained_path,
            last_layer=encoder_last_layer,
            attention=encoder_attention,
        )
        channels = self.encoder.channels
        if self.scales[-1] > len(channels) or (len(channels) < 3 and self.fusion_kind != "none"):
            raise ValueError(
                f"an encoder ending at {self.encoder.last_layer} gives scales 1-{len(channels)} and no decoder "
                f"input; got scales {tuple(self.scales)} with fusion='{self.fusion_kind}'."
            )
        if self.feature_fusion == "stem_pool_concat" and (self.scales != [2] or self.fusion_kind != "none"):
            raise ValueError(
                f"feature_fusion='stem_pool_concat' builds F_2 from f_1 and f_2: it needs scales (2,) and "
                f"fusion='none', got scales {tuple(self.scales)} and fusion='{self.fusion_kind}'."
            )
        self.decoder: Decoder | None = None
        self.fusion = nn.ModuleDict()
        self.stem_pool: StemPoolConcat | None = None
        self.out_channels = [channels[s - 1] for s in self.scales]
        if self.feature_fusion == "stem_pool_concat":
            self.stem_pool = StemPoolConcat(spatial_dims)
            self.out_channels = [2 * channels[0] + channels[1]]
        if self.fusion_kind != "none":
            self.decoder = Decoder(spatial_dims, channels, finest_scale=self.scales[0], kind=decoder_kind)
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
        """Fused features F_s, (B, out_channels[i], H_s, W_s, D_s), one per entry of ``scales``."""
        fused: list[Tensor] = []
        for s, inputs in zip(self.scales, self.fusion_inputs(taps, decoded)):
            fused.append(self.refuse(s, inputs))
        return fused

    def fusion_inputs(self, taps: list[Tensor], decoded: list[Tensor]) -> list[list[Tensor]]:
        """Per entry of ``scales``, the tensors F_s is fused from: [f_1, f_2] (stem_pool_concat), [f_s, f̃_s]
        (decoder) or [f_s]; :meth:`refuse` maps them (possibly resized) back to F_s."""
        if self.stem_pool is not None:
            return [[taps[0], taps[1]]]
        if self.decoder is None:
            return [[taps[s - 1]] for s in self.scales]
        return [[taps[s - 1], decoded[3 - s]] for s in self.scales]

    def refuse(self, scale: int, inputs: list[Tensor]) -> Tensor:
        """F_s of ``scale`` from its :meth:`fusion_inputs` (the multi-scale mapping loss resizes them first)."""
        if self.stem_pool is not None:
            return self.stem_pool(inputs[0], inputs[1])
        if self.decoder is None:
            return inputs[0]
        for i, block in enumerate(self.fusion.values()):
            if self.scales[i] == scale:
                return block(inputs[0], inputs[1])
        raise ValueError(f"scale {scale} is not fused by this backbone; its scales are {self.scales}.")

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
