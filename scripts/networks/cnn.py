"""Backbone warm-up CNN and CNN baseline: backbone → per-scale add-on → GAP → concat → Linear (SPEC §4, §8)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

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
        spatial_dims: 3 (or 2).
        in_channels: input channels.
        num_classes: C ≥ 2.
        encoder_layers: bottlenecks in layer1 and layer2 (ResNet-152: (3, 8)).
        encoder_width: encoder stem width.
        scales: scales with an add-on, ascending subset of (1, 2, 3).
        fusion: "gated", "concat" or "none".
        embed_dim: E.
        addon_activation: "relu" or "sigmoid".
        pretrained_path: local torchvision ResNet state dict inflated into the encoder, or None.
        encoder_last_layer: "layer2" or "layer1" (see :class:`~scripts.networks.encoder.ResNetEncoder`).
        encoder_attention: "none" or "quadruplet".
        decoder_kind: "paper" or "lite" (:data:`~scripts.networks.decoder.DECODER_KINDS`).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        num_classes: int = 2,
        encoder_layers: Sequence[int] = (3, 8),
        encoder_width: int = 64,
        scales: Sequence[int] = (1, 2, 3),
        fusion: str = "gated",
        embed_dim: int = 128,
        addon_activation: str = "relu",
        pretrained_path: str | PathLike | None = None,
        encoder_last_layer: str = "layer2",
        encoder_attention: str = "none",
        decoder_kind: str = "paper",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.backbone = Backbone(
            spatial_dims,
            in_channels,
            encoder_layers,
            encoder_width,
            scales,
            fusion,
            pretrained_path,
            encoder_last_layer=encoder_last_layer,
            encoder_attention=encoder_attention,
            decoder_kind=decoder_kind,
        )
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
