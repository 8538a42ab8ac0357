"""Backbone warm-up CNN and CNN baseline: backbone → per-scale add-on → GAP → concat → Linear (SPEC §4, §8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .groups import GroupedNetwork
from .head import AddOn

__all__ = ["BackboneCNN", "CNNHead"]


class CNNHead(nn.Module):
    """One scale of the CNN: the add-on only, named as in :class:`~scripts.networks.head.PrototypeHead`."""

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int = 128, activation: str = "relu") -> None:
        super().__init__()
        self.addon = AddOn(spatial_dims, in_channels, embed_dim, activation)

    def forward(self, features: Tensor) -> Tensor:
        """G_s (B, E, *S) from F_s (B, C_s, *S)."""
        return self.addon(features)


class BackboneCNN(GroupedNetwork):
    """The UM-ProtoShare backbone with a CNN head; its state dict initialises :meth:`UMProtoShare.load_backbone`.

    Encoder, decoder, fusion and add-ons are built by the same code and carry the same names as in
    :class:`~scripts.networks.model.UMProtoShare`. Give ``scales`` = the scales that carry prototypes
    in the target model (``UMProtoShare(...).scales``; (3,) for A1/A2). MProtoNet's encoder-only CNN
    is ``fusion="none", scales=(3,)``; MAProtoNet's warm-up CNN adds ``encoder_last_layer="layer1",
    encoder_attention="quadruplet", scales=(2,)`` (its add-on reads f2, as MAProtoNet's does).

    Args:
        num_classes: C ≥ 2.
        scales: scales with an add-on, ascending subset of (1, 2, 3).
        embed_dim: E.
        addon_activation: "relu" or "sigmoid".
        spatial_dims: 3 (or 2).
        backbone: the other fields of :class:`~scripts.networks.backbone.Backbone`, named as there and
            in :class:`~scripts.networks.model.UMProtoShare` (``in_channels``, ``encoder_layers``,
            ``encoder_width``, ``fusion``, ``pretrained_path``, ``encoder_last_layer``,
            ``encoder_attention``, ``decoder_kind``), with Backbone's defaults (ResNet-152, gated fusion).
    """

    def __init__(
        self,
        num_classes: int = 2,
        scales: Sequence[int] = (1, 2, 3),
        embed_dim: int = 128,
        addon_activation: str = "relu",
        spatial_dims: int = 3,
        **backbone: Any,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.backbone = Backbone(spatial_dims, scales=scales, **backbone)
        self.scales = self.backbone.scales
        self.channels_per_scale = self.backbone.encoder.channels
        self.heads = nn.ModuleDict(
            {
                f"scale{s}": CNNHead(spatial_dims, self.channels_per_scale[s - 1], embed_dim, addon_activation)
                for s in self.scales
            }
        )
        self.classifier = nn.Linear(embed_dim * len(self.scales), num_classes)

    def embeddings(self, x: Tensor) -> list[Tensor]:
        """Add-on outputs G_s (B, E, H_s, W_s, D_s) per scale in ``scales`` (the Grad-CAM layers)."""
        features = self.backbone(x)
        embeddings: list[Tensor] = []
        for i, head in enumerate(self.heads.values()):
            embeddings.append(head(features[i]))
        return embeddings

    def classify(self, embeddings: list[Tensor]) -> Tensor:
        """Logits (B, C): global average pool of each G_s, concatenated over scales, then Linear."""
        pooled = [g.flatten(2).mean(dim=-1) for g in embeddings]
        return self.classifier(torch.cat(pooled, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C) from x (B, C_in, H, W, D); float32 at either ``precision``."""
        if self.uses_autocast():
            return self.logits_at_precision(x)
        return self.logits(x)

    def logits(self, x: Tensor) -> Tensor:
        """Logits (B, C) from x (B, C_in, H, W, D), in the ambient precision."""
        return self.classify(self.embeddings(x))
