"""UNet-style decoder without skips: bottleneck Q3 and trilinear up-blocks (Section 2.2, Appendix A.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from monai.utils import look_up_option
from torch import Tensor, nn

from .layers import conv_bn, interpolation_mode

__all__ = ["DECODER_KINDS", "Decoder", "DecoderBlock"]

DECODER_KINDS = ("paper", "lite")
"""``paper``: each up-block upsamples, then convolves at the finer resolution (Appendix A.1); ``lite``:
it convolves at the coarser resolution, then upsamples (the same weights' shapes, about an eighth of
the up-blocks' arithmetic in 3-D; a different function, so a named option with its measured cost)."""


class DecoderBlock(nn.Module):
    """Optional linear upsampling to a target size and Conv3³ + BN + ReLU, in the order ``kind`` says.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels.
        out_channels: output channels.
        upsample: resize to the ``size`` given to :meth:`forward` (up-block); the bottleneck block Q3 does not.
        kind: one of :data:`DECODER_KINDS`: upsample first (``paper``) or convolve first (``lite``).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, upsample: bool, kind: str = "paper"
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.convolve_first = look_up_option(kind, DECODER_KINDS) == "lite"
        self.mode = interpolation_mode(spatial_dims)
        self.conv = nn.Sequential(*conv_bn(spatial_dims, in_channels, out_channels, 3), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, size: list[int]) -> Tensor:
        """(B, C_in, *S_in) → (B, C_out, *size) for an up-block, (B, C_out, *S_in) otherwise."""
        if not self.upsample:
            return self.conv(x)
        if self.convolve_first:
            return F.interpolate(self.conv(x), size=size, mode=self.mode, align_corners=False)
        return self.conv(F.interpolate(x, size=size, mode=self.mode, align_corners=False))


class Decoder(nn.Module):
    """Decoder features f̃_s for the scales from 3 down to ``finest_scale``.

    Q3 (Conv3³ C3→C3, no upsampling) gives f̃3; each up-block doubles the resolution (to the size of
    the matching encoder tap, so odd sizes work) and maps C_{s+1}→C_s. Only the blocks needed down to
    ``finest_scale`` are built, so every parameter is used.

    Args:
        spatial_dims: 3 (or 2).
        channels: encoder channels per scale (C1, C2, C3).
        finest_scale: 1, 2 or 3, the finest scale whose decoder feature is needed.
        kind: one of :data:`DECODER_KINDS`.
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], finest_scale: int = 1, kind: str = "paper") -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must give C1, C2, C3, got {tuple(channels)}.")
        if finest_scale not in (1, 2, 3):
            raise ValueError(f"finest_scale must be 1, 2 or 3, got {finest_scale}.")
        blocks = {"scale3": DecoderBlock(spatial_dims, channels[2], channels[2], upsample=False)}
        for scale in range(2, finest_scale - 1, -1):
            blocks[f"scale{scale}"] = DecoderBlock(
                spatial_dims, channels[scale], channels[scale - 1], upsample=True, kind=kind
            )
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, taps: list[Tensor]) -> list[Tensor]:
        """Encoder taps [f1, f2, f3] → decoder features ordered coarse to fine: [f̃3, f̃2, f̃1][: 4 − finest_scale]."""
        x = taps[2]
        decoded: list[Tensor] = []
        for i, block in enumerate(self.blocks.values()):
            x = block(x, taps[2 - i].shape[2:])
            decoded.append(x)
        return decoded
