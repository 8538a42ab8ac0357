"""Training objectives of UM-ProtoShare (Section 2.3, Appendix B; SPEC §3).

One pure function per term (``terms``, ``localisation``) and two thin composites
(``composite``): :class:`Stage1Loss` (Eq. 1/19) and :class:`LastLayerLoss` (Eq. 3/21).
The functions take plain tensors and callables, so they do not depend on the model class.
"""

from __future__ import annotations

from scripts.losses.composite import (
    MAP_RATIOS,
    MAPPING_LOSS_KINDS,
    PROTOTYPE_SHARING,
    ClassificationLoss,
    LastLayerLoss,
    ScaleTerms,
    Stage1Loss,
)
from scripts.losses.localisation import (
    LSE_SHARPNESS,
    lse_pool,
    mapping_loss,
    multiscale_mapping_loss,
    online_cam_logits,
    resize_spatial,
)
from scripts.losses.terms import (
    CLASSIFICATION_LOSSES,
    CLUSTERING_FORMS,
    classification_loss,
    clustering_loss_class_specific,
    clustering_loss_shared,
    clustering_loss_shared_max,
    clustering_loss_shared_mean,
    diversity_loss,
    forget_loss,
    inverse_frequency_weights,
    l1_regularisation,
    separation_loss_class_specific,
    separation_loss_shared,
    separation_loss_shared_max,
    separation_loss_shared_mean,
    soft_class_coefficients,
    soft_ownership,
)

__all__ = [
    "CLASSIFICATION_LOSSES",
    "CLUSTERING_FORMS",
    "LSE_SHARPNESS",
    "MAPPING_LOSS_KINDS",
    "MAP_RATIOS",
    "PROTOTYPE_SHARING",
    "ClassificationLoss",
    "LastLayerLoss",
    "ScaleTerms",
    "Stage1Loss",
    "classification_loss",
    "clustering_loss_class_specific",
    "clustering_loss_shared",
    "clustering_loss_shared_max",
    "clustering_loss_shared_mean",
    "diversity_loss",
    "forget_loss",
    "inverse_frequency_weights",
    "l1_regularisation",
    "lse_pool",
    "mapping_loss",
    "multiscale_mapping_loss",
    "online_cam_logits",
    "resize_spatial",
    "separation_loss_class_specific",
    "separation_loss_shared",
    "separation_loss_shared_max",
    "separation_loss_shared_mean",
    "soft_class_coefficients",
    "soft_ownership",
]
