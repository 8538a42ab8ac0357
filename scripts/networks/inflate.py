"""ImageNet 2D ResNet weights inflated into the 3D encoder (Appendix A.1, SPEC §2)."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from .layers import check_spatial_dims

__all__ = [
    "ADDED_MODULES",
    "ENCODER_PREFIXES",
    "expand_input_channels",
    "inflate_kernel",
    "inflate_resnet_state_dict",
    "load_imagenet_weights",
]

ENCODER_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.")
"""torchvision key prefixes the truncated encoder uses; fc, layer3 and layer4 are ignored."""

ADDED_MODULES = ("attention",)
"""Names of modules the 3D encoder adds to torchvision's layout (MAProtoNet's quadruplet attention); their
keys have no ImageNet counterpart and keep their own initialisation."""


def _is_added(key: str) -> bool:
    return any(part in ADDED_MODULES for part in key.split("."))


def inflate_kernel(weight: Tensor) -> Tensor:
    """Repeat a 2D kernel k times along a new depth axis and divide by k.

    Args:
        weight: (O, I, k_H, k_W) 2D convolution kernel; k = k_W.

    Returns:
        (O, I, k_H, k_W, k) kernel whose response to a depth-constant input equals the 2D one.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D convolution kernel (O, I, k, k), got shape {tuple(weight.shape)}.")
    depth = weight.shape[-1]
    return weight.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth


def expand_input_channels(weight: Tensor, in_channels: int) -> Tensor:
    """First-conv kernel for ``in_channels`` inputs: the RGB kernels, then their mean for each further channel.

    Args:
        weight: (O, 3, *k) kernel of the RGB stem convolution.
        in_channels: input channels of the target network (≥ 3; 4 for [T1, T1-CE, T2, FLAIR]).

    Returns:
        (O, in_channels, *k) kernel.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"'conv1.weight' has {weight.shape[1]} input channels, expected the 3 RGB channels.")
    if in_channels < 3:
        raise ValueError(f"inflating RGB weights needs at least 3 input channels, got in_channels={in_channels}.")
    mean = weight.mean(dim=1, keepdim=True)
    return torch.cat([weight, mean.expand(-1, in_channels - 3, *mean.shape[2:])], dim=1)


def inflate_resnet_state_dict(
    state_dict: Mapping[str, Tensor], spatial_dims: int = 3, in_channels: int = 4
) -> dict[str, Tensor]:
    """Encoder state dict from a torchvision 2D ResNet state dict.

    Keeps the keys under :data:`ENCODER_PREFIXES`; inflates every convolution kernel with
    :func:`inflate_kernel` when ``spatial_dims`` is 3; gives ``conv1.weight`` ``in_channels``
    inputs with :func:`expand_input_channels`; copies batch-norm weights, biases and running
    statistics (and ``num_batches_tracked`` where present) unchanged.
    """
    check_spatial_dims(spatial_dims)
    inflated: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(ENCODER_PREFIXES):
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"'{key}' holds a {type(value).__name__}, not a tensor.")
        if value.ndim == 4:
            value = inflate_kernel(value) if spatial_dims == 3 else value
            if key == "conv1.weight":
                value = expand_input_channels(value, in_channels)
        inflated[key] = value.detach().clone()
    return inflated


def load_imagenet_weights(encoder: nn.Module, path: str | PathLike) -> None:
    """Initialise a :class:`~scripts.networks.encoder.ResNetEncoder` from a local torchvision ResNet file.

    The file (e.g. torchvision's ``resnet152`` weights) is read with ``torch.load(weights_only=True)``;
    nothing is downloaded. Raises a ValueError naming the file and the first offending key when the
    file does not match the encoder (missing key, shape mismatch, or extra blocks). Stages the encoder
    does not build (layer2 when it stops after layer1) are ignored, and so are the keys of
    :data:`ADDED_MODULES`, which stay as initialised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights file not found: {path} (weights are never downloaded at run time).")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: expected a torchvision ResNet state dict, got a {type(state_dict).__name__}.")
    stem = encoder.get_parameter("conv1.weight")
    try:
        inflated = inflate_resnet_state_dict(state_dict, spatial_dims=stem.ndim - 2, in_channels=stem.shape[1])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    hint = "the file is not a torchvision Bottleneck ResNet matching this encoder's block counts and width"
    target = {key: value for key, value in encoder.state_dict().items() if not _is_added(key)}
    built = tuple(prefix for prefix in ENCODER_PREFIXES if any(key.startswith(prefix) for key in target))
    inflated = {key: value for key, value in inflated.items() if key.startswith(built)}
    for key, expected in target.items():
        if key not in inflated:
            if key.endswith("num_batches_tracked"):
                continue
            raise ValueError(f"{path}: encoder key '{key}' is missing from the file; {hint}.")
        if inflated[key].shape != expected.shape:
            raise ValueError(
                f"{path}: shape mismatch at '{key}': the file gives {tuple(inflated[key].shape)} after inflation, "
                f"the encoder expects {tuple(expected.shape)}; {hint}."
            )
    extra = [key for key in inflated if key not in target]
    if extra:
        raise ValueError(
            f"{path}: file key '{extra[0]}' has no counterpart in the encoder ({len(extra)} such keys); {hint}."
        )
    encoder.load_state_dict(inflated, strict=False)
