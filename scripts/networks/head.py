"""Localisation component and prototypes of one scale: add-on, mapping, Eq. 12–14, cosine similarity."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.utils import look_up_option
from torch import Tensor, nn

from .layers import conv_bn

__all__ = [
    "ADDON_ACTIVATIONS",
    "AddOn",
    "HeadOutput",
    "MappingModule",
    "PrototypeHead",
    "l1_normalise",
    "prototype_descriptors",
    "prototype_similarity",
    "soft_mask",
]

ADDON_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}
"""Final add-on activation: ReLU (UM-ProtoShare) or Sigmoid (the ProtoPNet/MProtoNet family)."""


def soft_mask(raw_maps: Tensor, weight: float = 10.0, threshold: float = 0.5) -> Tensor:
    """Differentiable soft mask M¹ = 1 / (1 + exp(−w (M⁰ − σ))) (Eq. 12).

    Args:
        raw_maps: M⁰_s, (B, K_s, H_s, W_s, D_s), values in [0, 1].
        weight: w (10).
        threshold: σ (0.5).

    Returns:
        M¹_s, same shape, values in (0, 1).
    """
    return torch.sigmoid(weight * (raw_maps - threshold))


def l1_normalise(maps: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-prototype spatial ℓ1 normalisation M = M¹ / (Σ_voxels M¹ + ε) (Eq. 13).

    Args:
        maps: non-negative M¹_s, (B, K_s, H_s, W_s, D_s).
        eps: ε (1e-6).

    Returns:
        M_s, same shape; each (b, k) map sums to 1 up to ε.
    """
    spatial = list(range(2, maps.ndim))
    return maps / (maps.sum(dim=spatial, keepdim=True) + eps)


def prototype_descriptors(embeddings: Tensor, maps: Tensor) -> Tensor:
    """Descriptors H_s^k = mean over voxels of G_s ⊙ M_s^k (Eq. 14).

    Args:
        embeddings: G_s, (B, E, H_s, W_s, D_s).
        maps: M_s, (B, K_s, H_s, W_s, D_s).

    Returns:
        H_s, (B, K_s, E).
    """
    g = embeddings.flatten(2)
    m = maps.flatten(2)
    return torch.einsum("bkn,ben->bke", m, g) / g.shape[-1]


def prototype_similarity(descriptors: Tensor, prototypes: Tensor, clamp: bool = False) -> Tensor:
    """Cosine similarity S_s^k = cos(H_s^k, p_s^k) of each descriptor to its own prototype (Section 2.2).

    Args:
        descriptors: H_s, (B, K_s, E).
        prototypes: p_s, (K_s, E).
        clamp: clamp at 0 as the reference implementations do; the paper uses [−1, 1].

    Returns:
        S_s, (B, K_s), in [−1, 1] (or [0, 1] with ``clamp``).
    """
    similarity = F.cosine_similarity(descriptors, prototypes.unsqueeze(0), dim=-1)
    return similarity.clamp_min(0.0) if clamp else similarity


class AddOn(nn.Sequential):
    """Add-on G_s: Conv1³ C_s→E + BN + ReLU + Conv1³ E→E + BN + activation ("relu" or "sigmoid")."""

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int = 128, activation: str = "relu") -> None:
        final = look_up_option(activation, ADDON_ACTIVATIONS)
        super().__init__(
            *conv_bn(spatial_dims, in_channels, embed_dim, 1),
            nn.ReLU(inplace=True),
            *conv_bn(spatial_dims, embed_dim, embed_dim, 1),
            final(),
        )


class MappingModule(nn.Module):
    """Mapping module: ``hidden`` (Conv1³ C_s→D + BN + ReLU), ``out_conv`` (Conv1³ D→K_s), ``out_norm`` (BN), sigmoid → M⁰."""

    def __init__(self, spatial_dims: int, in_channels: int, num_prototypes: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Sequential(*conv_bn(spatial_dims, in_channels, hidden_dim, 1), nn.ReLU(inplace=True))
        self.out_conv = Conv[Conv.CONV, spatial_dims](hidden_dim, num_prototypes, 1, bias=False)
        self.out_norm = Norm[Norm.BATCH, spatial_dims](num_prototypes)

    @property
    def projection_weight(self) -> Tensor:
        """W2, the second convolution's weight as a (K_s, D) matrix (used by L_OC, bypassing BN and sigmoid)."""
        return self.out_conv.weight.flatten(1)

    def project(self, hidden: Tensor) -> Tensor:
        """M⁰ (B, K_s, *S) from the hidden activations (B, D, *S)."""
        return torch.sigmoid(self.out_norm(self.out_conv(hidden)))

    def forward(self, features: Tensor) -> Tensor:
        """M⁰ (B, K_s, *S) from F_s (B, C_s, *S)."""
        return self.project(self.hidden(features))


class HeadOutput(NamedTuple):
    """Everything one scale's head computes from F_s (shapes for scale s)."""

    hidden: Tensor
    """Mapping module hidden activations, (B, D, H_s, W_s, D_s)."""
    raw_maps: Tensor
    """M⁰, after the sigmoid, (B, K_s, H_s, W_s, D_s)."""
    soft_maps: Tensor
    """M¹, soft-masked (Eq. 12), (B, K_s, H_s, W_s, D_s)."""
    maps: Tensor
    """M, ℓ1-normalised (Eq. 13), (B, K_s, H_s, W_s, D_s)."""
    embeddings: Tensor
    """G, add-on output, (B, E, H_s, W_s, D_s)."""
    descriptors: Tensor
    """H (Eq. 14), (B, K_s, E)."""
    similarities: Tensor
    """S, (B, K_s)."""


class PrototypeHead(nn.Module):
    """One scale's add-on, mapping module and K_s prototypes; ``forward`` gives S_s (B, K_s).

    Args:
        spatial_dims: 3 (or 2).
        in_channels: C_s of the fused features.
        num_prototypes: K_s > 0.
        embed_dim: E.
        mapping_dim: hidden channels D of the mapping module.
        addon_activation: "relu" or "sigmoid".
        similarity_clamp: clamp cosine similarities at 0.
        soft_mask_weight: w of Eq. 12.
        soft_mask_threshold: σ of Eq. 12.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_prototypes: int,
        embed_dim: int = 128,
        mapping_dim: int = 128,
        addon_activation: str = "relu",
        similarity_clamp: bool = False,
        soft_mask_weight: float = 10.0,
        soft_mask_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"a prototype head needs num_prototypes >= 1, got {num_prototypes}.")
        self.addon = AddOn(spatial_dims, in_channels, embed_dim, addon_activation)
        self.mapping = MappingModule(spatial_dims, in_channels, num_prototypes, mapping_dim)
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, embed_dim))
        self.similarity_clamp = bool(similarity_clamp)
        self.soft_mask_weight = float(soft_mask_weight)
        self.soft_mask_threshold = float(soft_mask_threshold)

    def mapping_hidden(self, features: Tensor) -> Tensor:
        """Mapping module hidden activations h (B, D, *S) from F_s (B, C_s, *S) (input of L_OC)."""
        return self.mapping.hidden(features)

    def soft_maps(self, features: Tensor) -> Tensor:
        """Re-run the mapping module and soft mask: M¹ (B, K_s, *S) from F_s (B, C_s, *S) (input of L_map)."""
        return soft_mask(self.mapping(features), self.soft_mask_weight, self.soft_mask_threshold)

    def run(self, features: Tensor) -> HeadOutput:
        """All intermediate tensors from F_s (B, C_s, *S): sigmoid → soft mask → normalise → descriptors → S."""
        hidden = self.mapping.hidden(features)
        raw_maps = self.mapping.project(hidden)
        soft_maps = soft_mask(raw_maps, self.soft_mask_weight, self.soft_mask_threshold)
        maps = l1_normalise(soft_maps)
        embeddings = self.addon(features)
        descriptors = prototype_descriptors(embeddings, maps)
        similarities = prototype_similarity(descriptors, self.prototypes, self.similarity_clamp)
        return HeadOutput(hidden, raw_maps, soft_maps, maps, embeddings, descriptors, similarities)

    def forward(self, features: Tensor) -> Tensor:
        """S_s (B, K_s) from F_s (B, C_s, *S)."""
        return self.run(features).similarities
