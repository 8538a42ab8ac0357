"""Small layer builders shared by the decoder, the fusion blocks and the heads."""

from __future__ import annotations

from monai.networks.layers.factories import Conv, Norm
from torch import nn

__all__ = ["check_spatial_dims", "conv_bn", "interpolation_mode"]


def conv_bn(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """A ``kernel_size``-cubed convolution (no bias, 'same' padding) and a batch norm, as a list of modules."""
    conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return [conv, Norm[Norm.BATCH, spatial_dims](out_channels)]


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a ValueError."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    return spatial_dims


def interpolation_mode(spatial_dims: int) -> str:
    """Linear interpolation mode of ``torch.nn.functional.interpolate`` for 2 or 3 spatial dimensions."""
    return "trilinear" if check_spatial_dims(spatial_dims) == 3 else "bilinear"
