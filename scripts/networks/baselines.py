"""The comparison models of Table 1 (Appendix F, SPEC §8) as settings of the two model classes.

Every prototype baseline is a :class:`~scripts.networks.model.UMProtoShare` with explicit fields; the
CNN is a :class:`~scripts.networks.cnn.BackboneCNN`. Fields not listed keep their defaults (E = 128,
mapping 128, ResNet-152 layout, no similarity clamp, w = 10, σ = 0.5). All prototype baselines have
30 class-specific prototypes (15 per class, hard ownership, classifier without bias initialised
+1 / −0.5) on one scale, ``fusion="none"`` and a Sigmoid-ended add-on.

========== ============== ======================================================================
Baseline   Class          Constructor fields
========== ============== ======================================================================
CNN        BackboneCNN    ``scales=(1, 2, 3), fusion="gated"`` (the warm-up CNN: add-ons → GAP → concat → Linear)
ProtoPNet  UMProtoShare   ``prototypes_per_scale=(0, 0, 30), similarity_kind="voxel_topk"``
XProtoNet  UMProtoShare   ``prototypes_per_scale=(0, 0, 30), map_activation="sigmoid"``
MProtoNet  UMProtoShare   ``prototypes_per_scale=(0, 0, 30), map_activation="minmax_soft_mask"``
MAProtoNet UMProtoShare   ``prototypes_per_scale=(0, 30, 0), map_activation="minmax_soft_mask",
                          encoder_layers=(3,), encoder_last_layer="layer1",
                          encoder_attention="quadruplet", feature_fusion="stem_pool_concat"``
========== ============== ======================================================================

plus, for the four prototype baselines, ``fusion="none", prototype_sharing="class_specific",
addon_activation="sigmoid"``.

Stage-1 loss (:class:`~scripts.losses.Stage1Loss`, always ``prototype_sharing="class_specific"``):
ProtoPNet ``use_map=False, use_oc=False``; XProtoNet ``use_map=True, use_oc=False``; MProtoNet
``use_map=True, use_oc=True``; MAProtoNet ``use_map=True, use_oc=True,
mapping_loss_kind="multi_scale"``. Class maps (:func:`scripts.explain.attribution.class_map`): CNN
``"grad_cam"`` and ``"occlusion"``; the others ``"prototype_maps"`` (Eq. 26; ProtoPNet's per-voxel
similarity maps).

Where the maps come from: XProtoNet's occurrence maps are σ(z) with no soft mask, MProtoNet's and
MAProtoNet's are σ(10 (minmax(ReLU(z)) − 0.5)), min-max per sample over prototypes and voxels; the
descriptor is the voxel mean of G ⊙ M (Eq. 14's formula on these un-normalised maps), similarity
cos(H, p) = 1 − ReLU(1 − cos). ProtoPNet has no mapping module: per-voxel 1 − ReLU(1 − cos(G(u), p)),
S = mean of the top ⌊N/100⌋ voxels, push copies the best voxel's G. MAProtoNet: quadruplet attention
on bn3's output in every bottleneck, the mapping module sees [avg-pool(f1), max-pool(f1), f2]
(3³/s2/p1 pools, 2·64 + 256 = 384 channels), the add-on sees f2 (256 channels).

The warm-up CNN whose state dict initialises a baseline (:meth:`UMProtoShare.load_backbone`) is
``BackboneCNN(scales=model.scales, fusion="none", addon_activation="sigmoid", ...)`` with the same
encoder fields (:data:`BASELINES` ``warmup`` entries).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from monai.utils import look_up_option
from torch import nn

from .cnn import BackboneCNN
from .model import UMProtoShare

__all__ = ["BASELINES", "Baseline", "build_baseline"]


class Baseline(NamedTuple):
    """Settings of one comparison model."""

    network: type[nn.Module]
    """UMProtoShare or BackboneCNN."""
    fields: dict[str, Any]
    """Constructor fields that differ from the class defaults."""
    warmup: dict[str, Any] | None
    """BackboneCNN fields of the warm-up CNN that initialises the model; None for the CNN itself."""
    stage1_loss: dict[str, Any] | None
    """Stage1Loss fields that differ from its defaults; None for the CNN (L_cls only)."""
    class_map_methods: tuple[str, ...]
    """Methods of :func:`scripts.explain.attribution.class_map`, the first being the default."""


_PROTOTYPE_FAMILY = {"fusion": "none", "prototype_sharing": "class_specific", "addon_activation": "sigmoid"}
_SINGLE_SCALE_WARMUP = {"scales": (3,), "fusion": "none", "addon_activation": "sigmoid"}
_MAPROTONET_ENCODER = {
    "encoder_layers": (3,),
    "encoder_last_layer": "layer1",
    "encoder_attention": "quadruplet",
}

BASELINES: dict[str, Baseline] = {
    "cnn": Baseline(BackboneCNN, {"scales": (1, 2, 3), "fusion": "gated"}, None, None, ("grad_cam", "occlusion")),
    "protopnet": Baseline(
        UMProtoShare,
        {**_PROTOTYPE_FAMILY, "prototypes_per_scale": (0, 0, 30), "similarity_kind": "voxel_topk"},
        _SINGLE_SCALE_WARMUP,
        {"prototype_sharing": "class_specific", "use_map": False, "use_oc": False},
        ("prototype_maps",),
    ),
    "xprotonet": Baseline(
        UMProtoShare,
        {**_PROTOTYPE_FAMILY, "prototypes_per_scale": (0, 0, 30), "map_activation": "sigmoid"},
        _SINGLE_SCALE_WARMUP,
        {"prototype_sharing": "class_specific", "use_map": True, "use_oc": False},
        ("prototype_maps",),
    ),
    "mprotonet": Baseline(
        UMProtoShare,
        {**_PROTOTYPE_FAMILY, "prototypes_per_scale": (0, 0, 30), "map_activation": "minmax_soft_mask"},
        _SINGLE_SCALE_WARMUP,
        {"prototype_sharing": "class_specific", "use_map": True, "use_oc": True},
        ("prototype_maps",),
    ),
    "maprotonet": Baseline(
        UMProtoShare,
        {
            **_PROTOTYPE_FAMILY,
            **_MAPROTONET_ENCODER,
            "prototypes_per_scale": (0, 30, 0),
            "map_activation": "minmax_soft_mask",
            "feature_fusion": "stem_pool_concat",
        },
        {"scales": (2,), "fusion": "none", "addon_activation": "sigmoid", **_MAPROTONET_ENCODER},
        {"prototype_sharing": "class_specific", "use_map": True, "use_oc": True, "mapping_loss_kind": "multi_scale"},
        ("prototype_maps",),
    ),
}
"""Baseline name → settings (the table above as data)."""


def build_baseline(name: str, **overrides: Any) -> nn.Module:
    """The baseline ``name`` of :data:`BASELINES` with ``overrides`` (e.g. tiny widths for tests) on top."""
    baseline = look_up_option(name, BASELINES)
    return baseline.network(**{**baseline.fields, **overrides})
