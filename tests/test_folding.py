"""Batch norms folded into convolutions: the same logits and maps as the eval-mode network, fewer modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.networks import UMProtoShare
from scripts.networks.folding import fold_batch_norms
from tests.helpers import BASELINE_CONFIGS, tiny_baseline

TINY = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16}
SHAPE = (2, 4, 32, 32, 24)


def with_running_statistics(network: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters (a fresh one is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(shape, generator=generator) - 0.5)
    return network.eval()


def batch_norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


@pytest.mark.parametrize("name", ["umprotoshare", *BASELINE_CONFIGS])
def test_folded_network_gives_the_same_logits_with_fewer_batch_norms(name):
    torch.manual_seed(0)
    network = UMProtoShare(**TINY, mapping_dim=12) if name == "umprotoshare" else tiny_baseline(name)
    network = with_running_statistics(network)
    folded = fold_batch_norms(network)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = network(x), folded(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert batch_norms(network) > 0 and batch_norms(folded) == 0


def test_folded_explanation_keeps_every_map():
    torch.manual_seed(0)
    network = with_running_statistics(UMProtoShare(**TINY, mapping_dim=12, prototypes_per_scale=(2, 4, 2)))
    folded = fold_batch_norms(network)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = network.explain(x), folded.explain(x)
    for a, b in zip(expected.per_scale, got.per_scale):
        assert torch.allclose(b.maps, a.maps, atol=1e-4)
        assert torch.allclose(b.similarities, a.similarities, atol=1e-5)


def test_folding_leaves_the_original_network_untouched():
    network = with_running_statistics(UMProtoShare(**TINY, mapping_dim=12))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    fold_batch_norms(network)
    after = network.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
