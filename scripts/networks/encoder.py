"""3D ResNet encoder in torchvision's layout, truncated after layer2, with three feature taps (SPEC §1–2)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from monai.networks.layers.factories import Conv, Norm, Pool
from monai.utils import look_up_option
from torch import Tensor, nn

from .attention import QuadrupletAttention
from .inflate import load_imagenet_weights
from .layers import check_spatial_dims

__all__ = ["ENCODER_ATTENTION", "ENCODER_LAST_LAYERS", "Bottleneck", "ResNetEncoder"]

ENCODER_ATTENTION = ("none", "quadruplet")
"""Attention on each bottleneck's last BN output before the residual add: none, or MAProtoNet's quadruplet."""

ENCODER_LAST_LAYERS = ("layer2", "layer1")
"""Last torchvision stage kept: ``layer2`` (taps s1–s3, UM-ProtoShare) or ``layer1`` (taps s1–s2, MAProtoNet)."""


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3×3 conv) with k×k kernels made k×k×k.

    Attribute names follow torchvision (conv1/bn1/conv2/bn2/conv3/bn3/relu/downsample) so that a
    torchvision state dict maps onto it key for key. With ``attention="quadruplet"`` an extra
    ``attention`` module (:class:`~scripts.networks.attention.QuadrupletAttention`) acts on bn3's
    output before the residual add; its keys are not torchvision's and are never inflated.
    """

    expansion = 4

    def __init__(
        self, spatial_dims: int, in_channels: int, planes: int, stride: int = 1, attention: str = "none"
    ) -> None:
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        out_channels = planes * self.expansion
        self.conv1 = conv(in_channels, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.attention: QuadrupletAttention | None = None
        if look_up_option(attention, ENCODER_ATTENTION) == "quadruplet":
            self.attention = QuadrupletAttention(spatial_dims)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, *S) → (B, 4·planes, *S / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attention is not None:
            out = self.attention(out)
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Bottleneck ResNet (default: ResNet-152's first two stages) returning the scale taps.

    Taps: s1 after the stem's ReLU (before max-pool, ``width`` channels, stride 2); s2 after max-pool
    and layer1 (``4·width``, stride 4); s3 after layer2 (``8·width``, stride 8), absent when the
    encoder stops after layer1. Convolutions have no bias and use the same kernel size and stride on
    every axis.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels (4 MRI sequences).
        layers: number of bottlenecks per kept stage: (layer1, layer2), ResNet-152 keeps (3, 8); one
            count (layer1) when ``last_layer="layer1"``.
        width: stem channels and layer1 bottleneck width (torchvision: 64).
        pretrained_path: local torchvision-format 2D ResNet state dict to inflate into this encoder
            (see :func:`scripts.networks.inflate.load_imagenet_weights`); ``None`` keeps the random init.
        last_layer: one of :data:`ENCODER_LAST_LAYERS`.
        attention: one of :data:`ENCODER_ATTENTION`, applied in every bottleneck.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        layers: Sequence[int] = (3, 8),
        width: int = 64,
        pretrained_path: str | PathLike | None = None,
        last_layer: str = "layer2",
        attention: str = "none",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.last_layer = look_up_option(last_layer, ENCODER_LAST_LAYERS)
        self.attention_kind = look_up_option(attention, ENCODER_ATTENTION)
        stages = 2 if self.last_layer == "layer2" else 1
        if len(layers) != stages or min(layers) < 1:
            names = ("layer1", "layer2")[:stages]
            raise ValueError(
                f"layers must give {stages} positive block count(s) {names} for last_layer='{self.last_layer}', "
                f"got {tuple(layers)}."
            )
        if width < 1:
            raise ValueError(f"width must be positive, got {width}.")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.layers = tuple(int(n) for n in layers)
        self.conv1 = conv(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        expansion = Bottleneck.expansion
        self.layer1 = self._make_layer(spatial_dims, width, width, self.layers[0], 1, self.attention_kind)
        self.layer2: nn.Sequential | None = None
        if stages == 2:
            self.layer2 = self._make_layer(
                spatial_dims, width * expansion, 2 * width, self.layers[1], 2, self.attention_kind
            )
        self.channels = (width, width * expansion, 2 * width * expansion)[: stages + 1]
        self.strides = (2, 4, 8)[: stages + 1]
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if pretrained_path is not None:
            load_imagenet_weights(self, pretrained_path)

    @staticmethod
    def _make_layer(
        spatial_dims: int, in_channels: int, planes: int, blocks: int, stride: int, attention: str
    ) -> nn.Sequential:
        first = Bottleneck(spatial_dims, in_channels, planes, stride, attention)
        rest = [
            Bottleneck(spatial_dims, planes * Bottleneck.expansion, planes, attention=attention)
            for _ in range(blocks - 1)
        ]
        return nn.Sequential(first, *rest)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C_in, H, W, D) → [f_1 (B, C_1, H/2, …), f_2 (B, C_2, H/4, …), f_3 (B, C_3, H/8, …)].

        Without layer2 the list ends with f_2.
        """
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        if self.layer2 is None:
            return [f1, f2]
        return [f1, f2, self.layer2(f2)]
