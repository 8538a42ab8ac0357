"""ProtoPNet's similarity without a mapping module: per-voxel cosine, top-1% mean, best voxel (SPEC §8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["best_voxel_features", "topk_mean_similarity", "voxel_similarity_maps"]


def voxel_similarity_maps(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """Per-voxel similarity 1 − d with d = ReLU(1 − cos(G(u), p_k)) (ProtoPNet, SPEC §8).

    Args:
        embeddings: G_s, (B, E, H_s, W_s, D_s).
        prototypes: p_s, (K_s, E).

    Returns:
        (B, K_s, H_s, W_s, D_s), values in [−1, 1].
    """
    unit_g = F.normalize(embeddings, dim=1).flatten(2)
    unit_p = F.normalize(prototypes, dim=1)
    cosine = torch.einsum("ke,ben->bkn", unit_p, unit_g)
    shape = [embeddings.shape[0], prototypes.shape[0]] + list(embeddings.shape[2:])
    return (1.0 - torch.relu(1.0 - cosine)).reshape(shape)


def topk_mean_similarity(maps: Tensor) -> Tensor:
    """S = 1 − mean of the k smallest voxel distances = mean of the k largest of ``maps``, k = max(⌊N/100⌋, 1).

    Args:
        maps: per-voxel similarities, (B, K_s, H_s, W_s, D_s), N voxels.

    Returns:
        (B, K_s).
    """
    flat = maps.flatten(2)
    k = max(flat.shape[2] // 100, 1)
    return flat.topk(k, dim=2).values.mean(dim=2)


def best_voxel_features(embeddings: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    """Each prototype's most similar voxel: its feature vector G(u*) and similarity (ProtoPNet's push).

    Args:
        embeddings: G_s, (B, E, H_s, W_s, D_s).
        maps: per-voxel similarities, (B, K_s, H_s, W_s, D_s).

    Returns:
        Features (B, K_s, E) and similarities (B, K_s) of the first voxel reaching the maximum.
    """
    best, index = maps.flatten(2).max(dim=2)
    flat = embeddings.flatten(2)
    features = torch.gather(flat, 2, index.unsqueeze(1).expand(-1, flat.shape[1], -1))
    return features.transpose(1, 2), best
