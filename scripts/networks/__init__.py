"""Networks: 3D ResNet encoder, decoder, fusion, prototype heads, UM-ProtoShare, its backbone CNN, baselines."""

from .attention import QuadrupletAttention
from .backbone import FEATURE_FUSION_KINDS, Backbone, StemPoolConcat
from .baselines import BASELINES, Baseline, build_baseline
from .cnn import BackboneCNN, CNNHead
from .decoder import Decoder, DecoderBlock
from .encoder import ENCODER_ATTENTION, ENCODER_LAST_LAYERS, Bottleneck, ResNetEncoder
from .fusion import FUSION_KINDS, ConcatFusion, GatedFusion, gated_fusion
from .groups import PARAMETER_GROUPS, GroupedNetwork, group_of
from .head import (
    MAP_ACTIVATIONS,
    SIMILARITY_KINDS,
    AddOn,
    HeadOutput,
    MappingModule,
    PrototypeHead,
    l1_normalise,
    minmax_soft_mask,
    prototype_descriptors,
    prototype_similarity,
    soft_mask,
)
from .inflate import inflate_resnet_state_dict, load_imagenet_weights
from .precision import PRECISIONS, resolve_precision, set_precision
from .model import BACKBONE_GROUPS, CLASSIFIER_INITS, PROTOTYPE_SHARING, Explanation, ScaleExplanation, UMProtoShare
from .voxel_similarity import best_voxel_features, topk_mean_similarity, voxel_similarity_maps
from .wrappers import ExplainForward, unwrap

__all__ = [
    "PRECISIONS",
    "resolve_precision",
    "set_precision",
    "BACKBONE_GROUPS",
    "BASELINES",
    "ENCODER_ATTENTION",
    "ENCODER_LAST_LAYERS",
    "FEATURE_FUSION_KINDS",
    "FUSION_KINDS",
    "MAP_ACTIVATIONS",
    "PARAMETER_GROUPS",
    "CLASSIFIER_INITS",
    "PROTOTYPE_SHARING",
    "SIMILARITY_KINDS",
    "AddOn",
    "Backbone",
    "BackboneCNN",
    "Baseline",
    "Bottleneck",
    "CNNHead",
    "ConcatFusion",
    "Decoder",
    "DecoderBlock",
    "ExplainForward",
    "Explanation",
    "GatedFusion",
    "GroupedNetwork",
    "HeadOutput",
    "MappingModule",
    "PrototypeHead",
    "QuadrupletAttention",
    "ResNetEncoder",
    "ScaleExplanation",
    "StemPoolConcat",
    "UMProtoShare",
    "best_voxel_features",
    "build_baseline",
    "gated_fusion",
    "group_of",
    "inflate_resnet_state_dict",
    "l1_normalise",
    "load_imagenet_weights",
    "minmax_soft_mask",
    "prototype_descriptors",
    "prototype_similarity",
    "soft_mask",
    "topk_mean_similarity",
    "unwrap",
    "voxel_similarity_maps",
]
