"""Localisation component and prototypes of one scale: add-on, mapping, Eq. 12–14, cosine similarity.

The same head serves UM-ProtoShare and the prototype baselines (SPEC §8) through two fields:

- ``map_activation``: how the mapping module's BN output z becomes the maps. ``soft_mask``
  (UM-ProtoShare): M⁰ = σ(z), M¹ = Eq. 12, M = Eq. 13. ``sigmoid`` (XProtoNet): M⁰ = M¹ = M = σ(z).
  ``minmax_soft_mask`` (MProtoNet "C", MAProtoNet): M⁰ = ReLU(z), M¹ = M = :func:`minmax_soft_mask`.
  The descriptor is always Eq. 14, the voxel mean of G ⊙ M; with the un-normalised occurrence maps of
  the baselines this is their occurrence-weighted mean of f (the references' formula; a per-prototype
  positive factor away from Σ M G / Σ M, which the cosine ignores).
- ``similarity_kind``: ``descriptor`` (cosine of H to p) or ``voxel_topk`` (ProtoPNet: no mapping
  module, :mod:`~scripts.networks.voxel_similarity`; ``maps`` are the per-voxel similarities).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.utils import look_up_option
from torch import Tensor, nn

from .layers import conv_bn
from .voxel_similarity import best_voxel_features, topk_mean_similarity, voxel_similarity_maps

__all__ = [
    "ADDON_ACTIVATIONS",
    "MAP_ACTIVATIONS",
    "SIMILARITY_KINDS",
    "AddOn",
    "HeadOutput",
    "MappingModule",
    "PrototypeHead",
    "l1_normalise",
    "minmax_soft_mask",
    "prototype_descriptors",
    "prototype_similarity",
    "soft_mask",
]

ADDON_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}
"""Final add-on activation: ReLU (UM-ProtoShare) or Sigmoid (the ProtoPNet/MProtoNet family)."""

MAP_ACTIVATIONS = ("soft_mask", "sigmoid", "minmax_soft_mask")
"""Mapping-module output → maps: Eq. 12–13 (UM-ProtoShare), sigmoid (XProtoNet), min-max soft mask (MProtoNet)."""

SIMILARITY_KINDS = ("descriptor", "voxel_topk")
"""``descriptor``: cos(H_s^k, p_s^k); ``voxel_topk``: ProtoPNet's top-1% mean of per-voxel similarities."""

MINMAX_EPS = 1e-4
"""Floor of the min-max range in :func:`minmax_soft_mask` (MProtoNet's value)."""


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


def minmax_soft_mask(
    activations: Tensor, weight: float = 10.0, threshold: float = 0.5, eps: float = MINMAX_EPS
) -> Tensor:
    """MProtoNet's soft mask: min-max normalise z per sample over prototypes and voxels, then σ(w (z − σ)).

    Args:
        activations: z = ReLU(BN output of the mapping module), (B, K_s, H_s, W_s, D_s).
        weight: w (10).
        threshold: σ (0.5).
        eps: floor of max − min (a constant sample gives z − min = 0, so σ(−w σ)).

    Returns:
        M¹, same shape, values in (0, 1).
    """
    dims = list(range(1, activations.ndim))
    shifted = activations - activations.amin(dim=dims, keepdim=True)
    scaled = shifted / shifted.amax(dim=dims, keepdim=True).clamp_min(eps)
    return torch.sigmoid(weight * (scaled - threshold))


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
    """Mapping module: ``hidden`` (Conv1³ C_s→D + BN + ReLU), ``out_conv`` (Conv1³ D→K_s), ``out_norm`` (BN), sigmoid → M⁰.

    ``init_coverage`` (None: PyTorch's BN init, β = 0) starts the output BN's shift at β = Φ⁻¹(coverage):
    the BN output is about N(β, 1) over a batch's voxels, so σ(z) > 0.5 (the soft mask's centre) on
    about that share of voxels: each map starts compact instead of covering half the volume.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_prototypes: int,
        hidden_dim: int = 128,
        init_coverage: float | None = None,
    ) -> None:
        super().__init__()
        self.hidden = nn.Sequential(*conv_bn(spatial_dims, in_channels, hidden_dim, 1), nn.ReLU(inplace=True))
        self.out_conv = Conv[Conv.CONV, spatial_dims](hidden_dim, num_prototypes, 1, bias=False)
        self.out_norm = Norm[Norm.BATCH, spatial_dims](num_prototypes)
        if init_coverage is not None:
            if not 0.0 < init_coverage < 1.0:
                raise ValueError(f"init_coverage must lie in (0, 1), got {init_coverage}.")
            with torch.no_grad():
                self.out_norm.bias.fill_(float(torch.special.ndtri(torch.tensor(float(init_coverage)))))

    @property
    def projection_weight(self) -> Tensor:
        """W2, the second convolution's weight as a (K_s, D) matrix (used by L_OC, bypassing BN and sigmoid)."""
        return self.out_conv.weight.flatten(1)

    def pre_activation(self, hidden: Tensor) -> Tensor:
        """z = BN(W2 h), (B, K_s, *S), from the hidden activations (B, D, *S)."""
        return self.out_norm(self.out_conv(hidden))

    def project(self, hidden: Tensor) -> Tensor:
        """M⁰ = σ(z) (B, K_s, *S) from the hidden activations (B, D, *S)."""
        return torch.sigmoid(self.pre_activation(hidden))

    def forward(self, features: Tensor) -> Tensor:
        """M⁰ (B, K_s, *S) from F_s (B, C_s, *S)."""
        return self.project(self.hidden(features))


class HeadOutput(NamedTuple):
    """Everything one scale's head computes from F_s (shapes for scale s).

    Optional fields are None for ``similarity_kind="voxel_topk"`` (no mapping module). ``Optional`` and
    not ``X | None``: TorchScript resolves only the former in a NamedTuple.
    """

    hidden: Optional[Tensor]
    """Mapping module hidden activations, (B, D, H_s, W_s, D_s)."""
    raw_maps: Optional[Tensor]
    """M⁰: σ(z), or ReLU(z) for ``minmax_soft_mask``, (B, K_s, H_s, W_s, D_s)."""
    soft_maps: Optional[Tensor]
    """M¹, the input of L_map: Eq. 12, M⁰ itself for ``sigmoid``, min-max soft mask; (B, K_s, H_s, W_s, D_s)."""
    maps: Tensor
    """Each prototype's attention map M: Eq. 13 for ``soft_mask``, M¹ for the other map activations,
    per-voxel similarities for ``voxel_topk``; (B, K_s, H_s, W_s, D_s)."""
    embeddings: Tensor
    """G, add-on output, (B, E, H_s, W_s, D_s)."""
    descriptors: Tensor
    """H (Eq. 14), or the most similar voxel's G for ``voxel_topk``; (B, K_s, E). Push copies these."""
    similarities: Tensor
    """S, (B, K_s)."""
    push_similarities: Tensor
    """What push maximises over cases, (B, K_s): S, or the most similar voxel's similarity for ``voxel_topk``."""


class PrototypeHead(nn.Module):
    """One scale's add-on, mapping module and K_s prototypes; ``forward`` gives S_s (B, K_s).

    Built by :class:`~scripts.networks.model.UMProtoShare`, whose signature holds the defaults of every
    field below (the head has none of its own, so that they are written once).

    Args:
        spatial_dims: 3 (or 2).
        in_channels: C_s of the fused features.
        num_prototypes: K_s > 0.
        embed_dim: E.
        mapping_dim: hidden channels D of the mapping module.
        addon_activation: "relu" or "sigmoid".
        similarity_clamp: clamp similarities at 0.
        soft_mask_weight: w of Eq. 12 (and of :func:`minmax_soft_mask`).
        soft_mask_threshold: σ of Eq. 12 (and of :func:`minmax_soft_mask`).
        map_activation: one of :data:`MAP_ACTIVATIONS` (no effect with ``voxel_topk``).
        similarity_kind: one of :data:`SIMILARITY_KINDS`; ``voxel_topk`` builds no mapping module.
        addon_channels: the add-on reads only the last ``addon_channels`` channels of F_s (MAProtoNet:
            the layer1 part of the stem-pool concatenation); None reads all ``in_channels``.
        map_init_coverage: initial share of voxels each map covers (:class:`MappingModule`); None
            keeps PyTorch's init (about half).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_prototypes: int,
        *,
        embed_dim: int,
        mapping_dim: int,
        addon_activation: str,
        similarity_clamp: bool,
        soft_mask_weight: float,
        soft_mask_threshold: float,
        map_activation: str,
        similarity_kind: str,
        addon_channels: int | None = None,
        map_init_coverage: float | None = None,
    ) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"a prototype head needs num_prototypes >= 1, got {num_prototypes}.")
        addon_channels = in_channels if addon_channels is None else int(addon_channels)
        if not 0 < addon_channels <= in_channels:
            raise ValueError(f"addon_channels must lie in 1..in_channels={in_channels}, got {addon_channels}.")
        self.map_activation = look_up_option(map_activation, MAP_ACTIVATIONS)
        self.similarity_kind = look_up_option(similarity_kind, SIMILARITY_KINDS)
        self.addon_start = in_channels - addon_channels
        self.addon = AddOn(spatial_dims, addon_channels, embed_dim, addon_activation)
        self.mapping: MappingModule | None = None
        if self.similarity_kind == "descriptor":
            self.mapping = MappingModule(spatial_dims, in_channels, num_prototypes, mapping_dim, map_init_coverage)
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, embed_dim))
        self.similarity_clamp = bool(similarity_clamp)
        self.map_shift = 0.0
        """Added to the mapping module's BN output z before the map activation; 0 but while training
        anneals the maps' coverage (:meth:`~scripts.engine.Schedule.map_shift`)."""
        self.soft_mask_weight = float(soft_mask_weight)
        self.soft_mask_threshold = float(soft_mask_threshold)
        self.map_gradient_mask: Optional[Tensor] = None
        """(B, K_s) bool while training with ``map_gradient="own_class"``: S_k of case b sends gradient into
        its map only where True (the forward values are unchanged); None: everywhere."""

    def _mapping(self) -> MappingModule:
        if self.mapping is None:
            raise ValueError("this head has no mapping module (similarity_kind='voxel_topk'): no maps to re-run.")
        return self.mapping

    def mapping_hidden(self, features: Tensor) -> Tensor:
        """Mapping module hidden activations h (B, D, *S) from F_s (B, C_s, *S) (input of L_OC)."""
        return self._mapping().hidden(features)

    def soft_maps(self, features: Tensor) -> Tensor:
        """Re-run the mapping module and map activation: M¹ (B, K_s, *S) from F_s (B, C_s, *S) (input of L_map)."""
        mapping = self._mapping()
        return self.activate(mapping.pre_activation(mapping.hidden(features)))[1]

    def activate(self, pre_activation: Tensor) -> tuple[Tensor, Tensor]:
        """(M⁰, M¹) from the mapping module's BN output z (B, K_s, *S) plus ``map_shift``, per ``map_activation``."""
        if self.map_shift != 0.0:
            pre_activation = pre_activation + self.map_shift
        if self.map_activation == "minmax_soft_mask":
            raw_maps = torch.relu(pre_activation)
            return raw_maps, minmax_soft_mask(raw_maps, self.soft_mask_weight, self.soft_mask_threshold)
        raw_maps = torch.sigmoid(pre_activation)
        if self.map_activation == "soft_mask":
            return raw_maps, soft_mask(raw_maps, self.soft_mask_weight, self.soft_mask_threshold)
        return raw_maps, raw_maps

    def run(self, features: Tensor, support: Optional[Tensor] = None, addon_input: Optional[Tensor] = None) -> HeadOutput:
        """All intermediate tensors from F_s (B, C_s, *S): maps → descriptors → S (or ProtoPNet's voxel path).

        ``support`` (B, 1, *S), 0/1 on this scale's grid, or None for the whole volume: each map is
        multiplied by it after the map activation (before Eq. 13's normalisation), so the maps, the
        descriptors (Eq. 14) and S draw nothing from outside it and are exactly zero there. M⁰ and M¹
        stay as the mapping module produced them (L_map's input).

        ``addon_input`` (B, addon_channels, *S) is what the add-on reads instead of F_s's last
        ``addon_channels`` channels (the model passes the encoder tap f_s for ``addon_input="encoder"``);
        the mapping module always reads F_s.
        """
        embeddings = self.addon(features[:, self.addon_start :] if addon_input is None else addon_input)
        if self.mapping is None:
            if support is not None:
                raise ValueError("map support needs a mapping module; similarity_kind='voxel_topk' has none.")
            maps = voxel_similarity_maps(embeddings, self.prototypes)
            similarities = topk_mean_similarity(maps)
            if self.similarity_clamp:
                similarities = similarities.clamp_min(0.0)
            descriptors, best = best_voxel_features(embeddings, maps)
            return HeadOutput(None, None, None, maps, embeddings, descriptors, similarities, best)
        else:
            hidden = self.mapping.hidden(features)
            raw_maps, soft_maps = self.activate(self.mapping.pre_activation(hidden))
            maps = soft_maps if support is None else soft_maps * support
            maps = l1_normalise(maps) if self.map_activation == "soft_mask" else maps
            mask = self.map_gradient_mask
            if mask is not None:
                maps = torch.where(mask.reshape(mask.shape + (1,) * (maps.ndim - 2)), maps, maps.detach())
            descriptors = prototype_descriptors(embeddings, maps)
            similarities = prototype_similarity(descriptors, self.prototypes, self.similarity_clamp)
            return HeadOutput(hidden, raw_maps, soft_maps, maps, embeddings, descriptors, similarities, similarities)

    def forward(self, features: Tensor, support: Optional[Tensor] = None, addon_input: Optional[Tensor] = None) -> Tensor:
        """S_s (B, K_s) from F_s (B, C_s, *S), the optional map support (B, 1, *S) and add-on input of :meth:`run`."""
        return self.run(features, support, addon_input).similarities
