"""3D ResNet encoder in torchvision's layout, truncated after layer2, with three feature taps (SPEC §1–2)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from monai.networks.layers.factories import Conv, Norm, Pool
from torch import Tensor, nn

from .inflate import load_imagenet_weights
from .layers import check_spatial_dims

__all__ = ["Bottleneck", "ResNetEncoder"]


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3×3 conv) with k×k kernels made k×k×k.

    Attribute names follow torchvision (conv1/bn1/conv2/bn2/conv3/bn3/relu/downsample) so that a
    torchvision state dict maps onto it key for key.
    """

    expansion = 4

    def __init__(self, spatial_dims: int, in_channels: int, planes: int, stride: int = 1) -> None:
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
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Bottleneck ResNet (default: ResNet-152's first two stages) returning the three scale taps.

    Taps: s1 after the stem's ReLU (before max-pool, ``width`` channels, stride 2); s2 after max-pool
    and layer1 (``4·width``, stride 4); s3 after layer2 (``8·width``, stride 8). Convolutions have no
    bias and use the same kernel size and stride on every axis.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels (4 MRI sequences).
        layers: number of bottlenecks in layer1 and layer2; ResNet-152 keeps (3, 8).
        width: stem channels and layer1 bottleneck width (torchvision: 64).
        pretrained_path: local torchvision-format 2D ResNet state dict to inflate into this encoder
            (see :func:`scripts.networks.inflate.load_imagenet_weights`); ``None`` keeps the random init.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        layers: Sequence[int] = (3, 8),
        width: int = 64,
        pretrained_path: str | PathLike | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if len(layers) != 2 or min(layers) < 1:
            raise ValueError(f"layers must give two positive block counts (layer1, layer2), got {tuple(layers)}.")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}.")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.layers = tuple(int(n) for n in layers)
        self.conv1 = conv(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        expansion = Bottleneck.expansion
        self.layer1 = self._make_layer(spatial_dims, width, width, self.layers[0], stride=1)
        self.layer2 = self._make_layer(spatial_dims, width * expansion, 2 * width, self.layers[1], stride=2)
        self.channels = (width, width * expansion, 2 * width * expansion)
        self.strides = (2, 4, 8)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if pretrained_path is not None:
            load_imagenet_weights(self, pretrained_path)

    @staticmethod
    def _make_layer(spatial_dims: int, in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        first = Bottleneck(spatial_dims, in_channels, planes, stride)
        rest = [Bottleneck(spatial_dims, planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
        return nn.Sequential(first, *rest)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C_in, H, W, D) → [f_1 (B, C_1, H/2, …), f_2 (B, C_2, H/4, …), f_3 (B, C_3, H/8, …)]."""
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        return [f1, f2, f3]
