"""Hand-computed checks of Eq. 11 (gated fusion), 12 (soft mask), 13 (ℓ1), 14 (descriptors) and the cosine."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.networks import gated_fusion, l1_normalise, prototype_descriptors, prototype_similarity, soft_mask


def test_eq11_gated_fusion_per_channel():
    # channel 0: 0.25·2 + 0.75·4 = 3.5; channel 1: α = 1 keeps the encoder value −1.
    f = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 1, 1)
    f_dec = torch.tensor([4.0, 3.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 1, 1)
    alpha = torch.tensor([0.25, 1.0]).view(1, 2, 1, 1, 1)
    fused = gated_fusion(f, f_dec, alpha)
    expected = torch.tensor([3.5, -1.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 1, 1)
    torch.testing.assert_close(fused, expected)


def test_eq12_soft_mask_values():
    raw = torch.tensor([0.5, 0.6, 0.3, 1.0]).view(1, 4, 1, 1, 1)
    # 1/(1+exp(-10(m-0.5))): m=0.5 → 1/2; 0.6 → 1/(1+e^-1); 0.3 → 1/(1+e^2); 1.0 → 1/(1+e^-5)
    expected = torch.tensor([0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2)), 1 / (1 + math.exp(-5))])
    torch.testing.assert_close(soft_mask(raw).flatten(), expected)
    # other w, σ: w=2, σ=0 at m=0.5 → 1/(1+e^-1)
    torch.testing.assert_close(
        soft_mask(torch.tensor([0.5]), weight=2.0, threshold=0.0), torch.tensor([1 / (1 + math.exp(-1))])
    )


def test_eq13_l1_normalise_values_and_sum():
    maps = torch.tensor([[1.0, 3.0], [0.0, 0.0]]).view(1, 2, 2, 1, 1)
    normalised = l1_normalise(maps)
    # [1, 3] / (4 + 1e-6); an all-zero map stays 0 thanks to ε.
    expected = torch.tensor([[1 / (4 + 1e-6), 3 / (4 + 1e-6)], [0.0, 0.0]]).view(1, 2, 2, 1, 1)
    torch.testing.assert_close(normalised, expected)
    random_maps = torch.rand(3, 5, 4, 3, 2)
    sums = l1_normalise(random_maps).sum(dim=(2, 3, 4))
    torch.testing.assert_close(sums, torch.ones(3, 5), atol=1e-5, rtol=0)


def test_eq14_descriptors_values():
    # G: E=2 channels over 2 voxels; maps: K=2 prototypes.
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 2, 1, 1)
    m = torch.tensor([[0.25, 0.75], [1.0, 0.0]]).view(1, 2, 2, 1, 1)
    h = prototype_descriptors(g, m)
    # k=0: ((1·.25+2·.75)/2, (3·.25+4·.75)/2) = (0.875, 1.875); k=1: (1/2, 3/2)
    expected = torch.tensor([[[0.875, 1.875], [0.5, 1.5]]])
    assert h.shape == (1, 2, 2)
    torch.testing.assert_close(h, expected)


def test_cosine_similarity_values_and_clamp():
    h = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [3.0, 4.0]]])
    p = torch.tensor([[1.0, 1.0], [1.0, 0.0], [4.0, 3.0]])
    # 1/√2; −1; (12+12)/25
    expected = torch.tensor([[1 / math.sqrt(2), -1.0, 24 / 25]])
    torch.testing.assert_close(prototype_similarity(h, p), expected)
    torch.testing.assert_close(prototype_similarity(h, p, clamp=True), expected.clamp_min(0))


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_cosine_similarity_is_scale_invariant(scale):
    h = torch.randn(2, 4, 8)
    p = torch.rand(4, 8)
    torch.testing.assert_close(prototype_similarity(h * scale, p), prototype_similarity(h, p))
