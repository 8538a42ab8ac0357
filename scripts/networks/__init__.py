"""Networks: 3D ResNet encoder, decoder, fusion, prototype heads, UM-ProtoShare and its backbone CNN."""

from .backbone import Backbone
from .cnn import BackboneCNN, CNNHead
from .decoder import Decoder, DecoderBlock
from .encoder import Bottleneck, ResNetEncoder
from .fusion import FUSION_KINDS, ConcatFusion, GatedFusion, gated_fusion
from .groups import PARAMETER_GROUPS, GroupedNetwork, group_of
from .head import (
    AddOn,
    HeadOutput,
    MappingModule,
    PrototypeHead,
    l1_normalise,
    prototype_descriptors,
    prototype_similarity,
    soft_mask,
)
from .inflate import inflate_resnet_state_dict, load_imagenet_weights
from .model import BACKBONE_GROUPS, PROTOTYPE_SHARING, Explanation, ScaleExplanation, UMProtoShare

__all__ = [
    "BACKBONE_GROUPS",
    "FUSION_KINDS",
    "PARAMETER_GROUPS",
    "PROTOTYPE_SHARING",
    "AddOn",
    "Backbone",
    "BackboneCNN",
    "Bottleneck",
    "CNNHead",
    "ConcatFusion",
    "Decoder",
    "DecoderBlock",
    "Explanation",
    "GatedFusion",
    "GroupedNetwork",
    "HeadOutput",
    "MappingModule",
    "PrototypeHead",
    "ResNetEncoder",
    "ScaleExplanation",
    "UMProtoShare",
    "gated_fusion",
    "group_of",
    "inflate_resnet_state_dict",
    "l1_normalise",
    "load_imagenet_weights",
    "prototype_descriptors",
    "prototype_similarity",
    "soft_mask",
]
