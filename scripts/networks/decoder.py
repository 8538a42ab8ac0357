"""UNet-style decoder without skips: bottleneck Q3 and trilinear up-blocks (Section 2.2, Appendix A.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv_bn, interpolation_mode

__all__ = ["Decoder", "DecoderBlock"]


class DecoderBlock(nn.Module):
    """Optional linear upsampling to a target size, then Conv3³ + BN + ReLU.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels.
        out_channels: output channels.
        upsample: resize the input to the ``size`` given to :meth:`forward` first (up-block); the
            bottleneck block Q3 does not.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.mode = interpolation_mode(spatial_dims)
        self.conv = nn.Sequential(*conv_bn(spatial_dims, in_channels, out_channels, 3), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, size: list[int]) -> Tensor:
        """(B, C_in, *S_in) → (B, C_out, *size) for an up-block, (B, C_out, *S_in) otherwise."""
        if self.upsample:
            x = F.interpolate(x, size=size, mode=self.mode, align_corners=False)
        return self.conv(x)


class Decoder(nn.Module):
    """Decoder features f̃_s for the scales from 3 down to ``finest_scale``.

    Q3 (Conv3³ C3→C3, no upsampling) gives f̃3; each up-block doubles the resolution (to the size of
    the matching encoder tap, so odd sizes work) and maps C_{s+1}→C_s. Only the blocks needed down to
    ``finest_scale`` are built, so every parameter is used.

    Args:
        spatial_dims: 3 (or 2).
        channels: encoder channels per scale (C1, C2, C3).
        finest_scale: 1, 2 or 3, the finest scale whose decoder feature is needed.
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], finest_scale: int = 1) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must give C1, C2, C3, got {tuple(channels)}.")
        if finest_scale not in (1, 2, 3):
            raise ValueError(f"finest_scale must be 1, 2 or 3, got {finest_scale}.")
        blocks = {"scale3": DecoderBlock(spatial_dims, channels[2], channels[2], upsample=False)}
        for scale in range(2, finest_scale - 1, -1):
            blocks[f"scale{scale}"] = DecoderBlock(spatial_dims, channels[scale], channels[scale - 1], upsample=True)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, taps: list[Tensor]) -> list[Tensor]:
        """Encoder taps [f1, f2, f3] → decoder features ordered coarse to fine: [f̃3, f̃2, f̃1][: 4 − finest_scale]."""
        x = taps[2]
        decoded: list[Tensor] = []
        for i, block in enumerate(self.blocks.values()):
            x = block(x, taps[2 - i].shape[2:])
            decoded.append(x)
        return decoded
