"""Inference copies of a network with every batch norm folded into the convolution before it.

In eval mode a batch norm is an affine map per channel, so ``BN(conv(x))`` equals one convolution with
rescaled weights and a bias: the same function with one pass over the activations fewer. Folding is
for inference, evaluation and serving only; training keeps the batch norms.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norms"]

PAIRED_NAMES = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "norm"), ("out_conv", "out_norm"))
"""Attribute pairs of a block whose forward applies the norm right after the convolution: ``convN``/``bnN``
of :class:`~scripts.networks.encoder.Bottleneck` and the encoder stem, ``conv``/``norm`` of
:class:`~scripts.networks.attention.AxisGate`, ``out_conv``/``out_norm`` of the mapping module
(:class:`~scripts.networks.head.MappingModule`; a folded copy's W2 then includes the BN scale, so
L_OC is not computed on it)."""


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return isinstance(conv, _ConvNd) and isinstance(norm, _BatchNorm) and norm.track_running_stats


def _fold_in_place(module: nn.Module) -> int:
    """Fold the pairs below ``module`` (already a copy); return how many were folded."""
    folded = 0
    for child in module.modules():
        if isinstance(child, nn.Sequential):
            names = list(child._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = child._modules[first], child._modules[second]
                if _foldable(conv, norm):
                    child._modules[first] = fuse_conv_bn_eval(conv, norm)
                    child._modules[second] = nn.Identity()
                    folded += 1
        for conv_name, norm_name in PAIRED_NAMES:
            conv, norm = getattr(child, conv_name, None), getattr(child, norm_name, None)
            if conv is not None and norm is not None and _foldable(conv, norm):
                setattr(child, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(child, norm_name, nn.Identity())
                folded += 1
    return folded


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``network`` with each batch norm folded into its convolution.

    Folds the batch norm that directly follows a convolution in an ``nn.Sequential``, and the
    ``convN``/``bnN`` attribute pairs of :data:`PAIRED_NAMES`; anything else is left as it is. The copy
    computes the same function as ``network.eval()`` (to float rounding) and is meant for inference
    only: its parameters no longer match the training checkpoint's keys.
    """
    folded = copy.deepcopy(network).eval()
    _fold_in_place(folded)
    return folded
