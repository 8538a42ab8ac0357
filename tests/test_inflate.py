"""ImageNet 2D → 3D inflation (Appendix A.1): a tiny torchvision-layout 2D ResNet is inflated and compared."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from scripts.networks import BackboneCNN, ResNetEncoder, UMProtoShare, inflate_resnet_state_dict, load_imagenet_weights
from scripts.networks.inflate import inflate_kernel

WIDTH = 8


class Bottleneck2d(nn.Module):
    """torchvision's 2D Bottleneck layout (names and stride placement), written here independently."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class BasicBlock2d(nn.Module):
    """torchvision's ResNet-18/34 basic block layout."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)


class ResNet2d(nn.Module):
    """A tiny torchvision-layout 2D ResNet (with layer3 and fc, which inflation must ignore)."""

    def __init__(self, layers=(1, 1), block=Bottleneck2d, expansion=4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = WIDTH
        for i, (planes, blocks) in enumerate(zip((WIDTH, 2 * WIDTH, 4 * WIDTH), (*layers, 1)), start=1):
            stride = 1 if i == 1 else 2
            modules = [block(inplanes, planes, stride)] + [block(planes * expansion, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*modules))
            inplanes = planes * expansion
        self.fc = nn.Linear(inplanes, 10)
        for module in self.modules():  # non-trivial batch-norm parameters and statistics
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.normal_(module.bias, 0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)

    def taps(self, x):
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        return [f1, f2, self.layer2(f2)]


def _save(net: nn.Module, path) -> str:
    torch.save(net.state_dict(), path)
    return str(path)


def test_inflate_kernel_repeats_along_depth_and_divides():
    kernel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    inflated = inflate_kernel(kernel)
    assert inflated.shape == (1, 1, 2, 2, 2)
    expected_slice = torch.tensor([[0.5, 1.0], [1.5, 2.0]])
    for z in range(2):
        torch.testing.assert_close(inflated[0, 0, :, :, z], expected_slice)


def _exact_interval(lo: int, hi: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Output depth indices whose receptive field lies inside the input interval [lo, hi] (no depth padding)."""
    return math.ceil((lo + padding) / stride), math.floor((hi + padding - kernel + 1) / stride)


def test_inflated_encoder_reproduces_2d_encoder_on_depth_constant_volume(tmp_path):
    torch.manual_seed(0)
    net2d = ResNet2d().eval()
    path = _save(net2d, tmp_path / "resnet_tiny.pth")
    encoder = ResNetEncoder(layers=(1, 1), width=WIDTH).eval()
    load_imagenet_weights(encoder, path)

    stem = encoder.conv1.weight.detach()
    assert stem.shape == (WIDTH, 4, 7, 7, 7)
    for z in range(7):
        torch.testing.assert_close(stem[:, :3, :, :, z], net2d.conv1.weight.detach() / 7)
    torch.testing.assert_close(stem[:, 3], stem[:, :3].mean(dim=1))
    torch.testing.assert_close(encoder.layer2[0].bn3.running_var, net2d.layer2[0].bn3.running_var)

    # Volume constant along depth: RGB image I in channels 0–2, an extra image J in channel 3. The
    # channel-3 kernel is the mean of the RGB kernels, so it acts as adding J/3 to every RGB channel.
    depth = 64
    image, extra = torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16)
    volume = torch.cat([image, extra], dim=1).unsqueeze(-1).expand(-1, -1, -1, -1, depth).contiguous()
    with torch.no_grad():
        taps2d = net2d.taps(image + extra / 3)
        taps3d = encoder(volume)

    # Slices whose receptive field never reaches the zero depth padding are exact: stem conv (7, s2, p3),
    # then max-pool (3, s2, p1) and one 3×3×3 conv in layer1's block, then layer2's strided 3×3×3 conv.
    s1 = _exact_interval(0, depth - 1, 7, 2, 3)
    s2 = _exact_interval(*_exact_interval(*s1, 3, 2, 1), 3, 1, 1)
    s3 = _exact_interval(*s2, 3, 2, 1)
    assert (s1, s2, s3) == ((2, 30), (3, 13), (2, 6))
    for (lo, hi), tap2d, tap3d in zip((s1, s2, s3), taps2d, taps3d):
        for z in range(lo, hi + 1):
            torch.testing.assert_close(tap3d[..., z], tap2d, rtol=1e-4, atol=1e-5)
    # the border slice sees depth padding and differs: the interior choice above is not vacuous
    assert not torch.allclose(taps3d[0][..., 0], taps2d[0], rtol=1e-4, atol=1e-5)


def test_files_without_num_batches_tracked_load(tmp_path):
    net2d = ResNet2d()
    state = {k: v for k, v in net2d.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    encoder = ResNetEncoder(layers=(1, 1), width=WIDTH)
    load_imagenet_weights(encoder, tmp_path / "old.pth")
    torch.testing.assert_close(encoder.bn1.running_mean, net2d.bn1.running_mean)


def test_basic_block_file_raises_clear_error(tmp_path):
    path = _save(ResNet2d(block=BasicBlock2d, expansion=1), tmp_path / "resnet18_like.pth")
    encoder = ResNetEncoder(layers=(1, 1), width=WIDTH)
    with pytest.raises(ValueError, match=re.escape(path) + r".*shape mismatch at 'layer1\.0\.conv1\.weight'"):
        load_imagenet_weights(encoder, path)


@pytest.mark.parametrize(
    "file_layers, encoder_layers, message",
    [
        ((1, 1), (2, 1), r"encoder key 'layer1\.1\.conv1\.weight' is missing"),
        ((2, 1), (1, 1), r"file key 'layer1\.1\."),
    ],
)
def test_depth_mismatch_raises_clear_error(tmp_path, file_layers, encoder_layers, message):
    path = _save(ResNet2d(layers=file_layers), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + message):
        load_imagenet_weights(ResNetEncoder(layers=encoder_layers, width=WIDTH), path)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_imagenet_weights(ResNetEncoder(layers=(1, 1), width=WIDTH), tmp_path / "nowhere.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        load_imagenet_weights(ResNetEncoder(layers=(1, 1), width=WIDTH), tmp_path / "list.pth")


def test_inflated_state_dict_ignores_fc_and_later_layers():
    inflated = inflate_resnet_state_dict(ResNet2d().state_dict(), in_channels=4)
    assert not any(k.startswith(("fc.", "layer3.")) for k in inflated)
    assert inflated["conv1.weight"].shape == (WIDTH, 4, 7, 7, 7)
    assert inflated["layer1.0.conv2.weight"].shape == (WIDTH, WIDTH, 3, 3, 3)


@pytest.mark.parametrize("network", [UMProtoShare, BackboneCNN])
def test_pretrained_path_option_initialises_the_encoder(tmp_path, network):
    net2d = ResNet2d()
    path = _save(net2d, tmp_path / "resnet.pth")
    model = network(encoder_layers=(1, 1), encoder_width=WIDTH, embed_dim=8, pretrained_path=path)
    expected = inflate_resnet_state_dict(net2d.state_dict())
    for key, value in model.backbone.encoder.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
